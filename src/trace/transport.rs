//! How the exporters reach the collector: endpoint, protocol and TLS, configured as the OTLP
//! exporter specification says (`OTEL_EXPORTER_OTLP_*`).
//!
//! `https://` endpoints use the system's trusted roots, plus the CA in
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` if set; `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
//! `OTEL_EXPORTER_OTLP_CLIENT_KEY` (PEM files) present a client certificate (mutual TLS).
//! Both HTTP/protobuf (reqwest with rustls) and gRPC (tonic with rustls) are covered.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::Temporality;

use crate::config::OtlpProtocol;

/// PEM files for TLS, from the environment.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Trusted CA certificate(s), besides the system's.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads the files `OTEL_EXPORTER_OTLP_CERTIFICATE`, `..._CLIENT_CERTIFICATE` and
    /// `..._CLIENT_KEY` name.
    ///
    /// # Errors
    ///
    /// A file that cannot be read, or a client certificate without its key (or the reverse).
    pub fn from_env() -> Result<Self> {
        let read = |var: &str| -> Result<Option<Vec<u8>>> {
            let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) else {
                return Ok(None);
            };
            let path = PathBuf::from(path);
            std::fs::read(&path)
                .map(Some)
                .with_context(|| format!("reading {var}={}", path.display()))
        };
        let ca = read("OTEL_EXPORTER_OTLP_CERTIFICATE")?;
        let client = match (
            read("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?,
            read("OTEL_EXPORTER_OTLP_CLIENT_KEY")?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together"
            ),
        };
        Ok(TlsFiles { ca, client })
    }
}

/// Where and how to send the three signals.
pub struct Transport {
    endpoint: String,
    protocol: OtlpProtocol,
    tls: TlsFiles,
    http: Option<reqwest::Client>,
}

impl Transport {
    /// A transport to `endpoint` over `protocol`, with `tls` for `https://` endpoints.
    ///
    /// # Errors
    ///
    /// If the TLS files do not parse.
    pub fn new(endpoint: &str, protocol: OtlpProtocol, tls: TlsFiles) -> Result<Self> {
        // One process-wide TLS provider: ring. Another part of the program may have chosen
        // first; either serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = match protocol {
            OtlpProtocol::HttpProtobuf => Some(http_client(&tls)?),
            OtlpProtocol::Grpc => None,
        };
        Ok(Transport {
            endpoint: endpoint.to_string(),
            protocol,
            tls,
            http,
        })
    }

    fn is_https(&self) -> bool {
        self.endpoint.starts_with("https://")
    }

    fn tonic_tls(&self) -> Option<ClientTlsConfig> {
        if !self.is_https() {
            return None;
        }
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.tls.ca {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.tls.client {
            config = config.identity(Identity::from_pem(cert, key));
        }
        Some(config)
    }

    /// The span exporter.
    ///
    /// # Errors
    ///
    /// If the exporter cannot be built (a malformed endpoint, say).
    pub fn spans(&self) -> Result<opentelemetry_otlp::SpanExporter> {
        let builder = opentelemetry_otlp::SpanExporter::builder();
        Ok(match (&self.protocol, &self.http) {
            (OtlpProtocol::HttpProtobuf, Some(client)) => builder
                .with_http()
                .with_http_client(client.clone())
                .with_endpoint(signal_endpoint(&self.endpoint, "traces"))
                .build()?,
            _ => {
                let mut builder = builder.with_tonic().with_endpoint(&self.endpoint);
                if let Some(tls) = self.tonic_tls() {
                    builder = builder.with_tls_config(tls);
                }
                builder.build()?
            }
        })
    }

    /// The metric exporter, with `temporality`.
    ///
    /// # Errors
    ///
    /// If the exporter cannot be built.
    pub fn metrics(&self, temporality: Temporality) -> Result<opentelemetry_otlp::MetricExporter> {
        let builder = opentelemetry_otlp::MetricExporter::builder();
        Ok(match (&self.protocol, &self.http) {
            (OtlpProtocol::HttpProtobuf, Some(client)) => builder
                .with_http()
                .with_http_client(client.clone())
                .with_endpoint(signal_endpoint(&self.endpoint, "metrics"))
                .with_temporality(temporality)
                .build()?,
            _ => {
                let mut builder = builder
                    .with_tonic()
                    .with_endpoint(&self.endpoint)
                    .with_temporality(temporality);
                if let Some(tls) = self.tonic_tls() {
                    builder = builder.with_tls_config(tls);
                }
                builder.build()?
            }
        })
    }

    /// The log exporter.
    ///
    /// # Errors
    ///
    /// If the exporter cannot be built.
    pub fn logs(&self) -> Result<opentelemetry_otlp::LogExporter> {
        let builder = opentelemetry_otlp::LogExporter::builder();
        Ok(match (&self.protocol, &self.http) {
            (OtlpProtocol::HttpProtobuf, Some(client)) => builder
                .with_http()
                .with_http_client(client.clone())
                .with_endpoint(signal_endpoint(&self.endpoint, "logs"))
                .build()?,
            _ => {
                let mut builder = builder.with_tonic().with_endpoint(&self.endpoint);
                if let Some(tls) = self.tonic_tls() {
                    builder = builder.with_tls_config(tls);
                }
                builder.build()?
            }
        })
    }
}

/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else the specification's 10 s.
fn export_timeout() -> Duration {
    std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The HTTP client of the HTTP/protobuf exporters: rustls with the system's roots, the extra CA
/// and the client certificate, if any; each export gives up after the export timeout.
fn http_client(tls: &TlsFiles) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(export_timeout());
    if let Some(ca) = &tls.ca {
        for cert in reqwest::Certificate::from_pem_bundle(ca)
            .context("OTEL_EXPORTER_OTLP_CERTIFICATE holds no PEM certificate")?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &tls.client {
        let mut pem = cert.clone();
        pem.push(b'\n');
        pem.extend_from_slice(key);
        builder = builder.identity(
            reqwest::Identity::from_pem(&pem)
                .context("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _KEY do not parse as PEM")?,
        );
    }
    builder.build().context("building the HTTP client")
}

/// The OTLP/HTTP base endpoint gets the signal path (`traces`, `metrics`, `logs`), as the
/// specification asks; an endpoint that already names a signal path is kept.
pub fn signal_endpoint(endpoint: &str, signal: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    let base = ["/v1/traces", "/v1/metrics", "/v1/logs"]
        .iter()
        .find_map(|path| base.strip_suffix(path))
        .unwrap_or(base);
    format!("{base}/v1/{signal}")
}

#[cfg(test)]
mod tests {
    use super::signal_endpoint;

    #[test]
    fn signal_paths_are_added_once() {
        assert_eq!(
            signal_endpoint("http://c:4318", "logs"),
            "http://c:4318/v1/logs"
        );
        assert_eq!(
            signal_endpoint("http://c:4318/v1/traces/", "metrics"),
            "http://c:4318/v1/metrics"
        );
    }
}
