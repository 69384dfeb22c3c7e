//! Export to a collector behind TLS, with mutual TLS: a CA made in the test signs the
//! receiver's certificate and the server's client certificate; a TLS front (rustls) that
//! requires that client certificate forwards to the real rotel collector. The server trusts the
//! CA through `OTEL_EXPORTER_OTLP_CERTIFICATE` and presents its certificate through
//! `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `_CLIENT_KEY`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::harness::{Server, data_dir, fixture, trace_id_of};
use crate::otlp::Receiver;

/// A CA, a certificate for `localhost` signed by it, and a client certificate signed by it.
struct TestPki {
    ca: CertificateDer<'static>,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    /// `ca.pem`, `client.pem`, `client.key`.
    dir: PathBuf,
}

impl TestPki {
    fn new(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client_cert = CertificateParams::new(vec!["iota-client".to_string()])
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
        TestPki {
            ca: ca.der().clone(),
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
            dir: dir.to_path_buf(),
        }
    }

    fn env(&self, with_client_certificate: bool) -> Vec<(&'static str, String)> {
        let path = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
        let mut env = vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", path("ca.pem"))];
        if with_client_certificate {
            env.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", path("client.pem")));
            env.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY", path("client.key")));
        }
        env
    }
}

/// Terminates TLS (HTTP/2 or HTTP/1.1 by ALPN, a client certificate from the test CA required)
/// and forwards the plain bytes to `upstream`.
struct TlsFront {
    port: u16,
    /// Handshakes completed with a verified client certificate.
    verified: Arc<AtomicUsize>,
}

impl TlsFront {
    fn start(pki: &TestPki, upstream: String) -> TlsFront {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![pki.server_cert.clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let verified = Arc::new(AtomicUsize::new(0));
        let counter = verified.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, upstream, counter) =
                        (acceptor.clone(), upstream.clone(), counter.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        if tls.get_ref().1.peer_certificates().is_some() {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    });
                }
            });
        });
        TlsFront { port, verified }
    }
}

fn exports_over_tls(protocol: &str) {
    let test = format!("tls-{}", protocol.replace('/', "-"));
    let pki = TestPki::new(&data_dir(&format!("{test}-pki")));
    let receiver = Receiver::start();
    let upstream = match protocol {
        "grpc" => receiver.grpc.clone(),
        _ => receiver.http.clone(),
    };
    let front = TlsFront::start(&pki, upstream);
    let endpoint = format!("https://localhost:{}", front.port);
    let env = pki.env(true);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(
        &data_dir(&test),
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol],
        &env,
    );
    server.upload_ok("fib", &fixture("fib.wasm"));
    let response = server.run("name=fib", "5");
    assert_eq!(response.status(), 200);
    let trace_id = trace_id_of(&response);
    let expected = server.trace(&trace_id)["spans"].as_array().unwrap().len();
    let spans = receiver.wait_for_spans(&trace_id, expected, "every span, through TLS");
    assert_eq!(spans.len(), expected);
    assert!(
        front.verified.load(Ordering::SeqCst) >= 1,
        "the client certificate was presented and verified"
    );

    // Without the client certificate, the front refuses the connection: nothing arrives and
    // the failures are counted.
    let env = pki.env(false);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(
        &data_dir(&format!("{test}-refused")),
        &["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol],
        &env,
    );
    server.upload_ok("fib", &fixture("fib.wasm"));
    let refused = trace_id_of(&server.run("name=fib", "5"));
    crate::harness::wait_until("the failed export to be counted", || {
        server.metric("iota_otlp_failed_spans_total") > 0
    });
    assert!(!receiver.output.lock().unwrap().contains(&refused));
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn spans_reach_a_collector_behind_mutual_tls_over_http() {
    exports_over_tls("http/protobuf");
}

#[test]
#[ignore = "needs ROTEL_AGENT (scripts/install-rotel.sh); run by scripts/test"]
fn spans_reach_a_collector_behind_mutual_tls_over_grpc() {
    exports_over_tls("grpc");
}
