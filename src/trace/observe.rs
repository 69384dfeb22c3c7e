//! The Observe SDK's guest API, as data: span tags, log severities, statsd metric lines.
//!
//! Guests call `dylibso:observe/api` (`span-enter`, `span-exit`, `span-tags`, `log`, `metric`)
//! or the legacy `dylibso_observe` names; the host side is in [`crate::runtime::observe`]. What
//! they send is parsed here, after the run, off the guest's time.

/// `key:value,key:value` (what `span-tags` takes) as pairs; an entry without `:` is a key with
/// an empty value, and empty entries are skipped.
pub fn parse_tags(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
        .map(|tag| match tag.split_once(':') {
            Some((key, value)) => (key.trim().to_string(), value.trim().to_string()),
            None => (tag.to_string(), String::new()),
        })
        .collect()
}

/// A log record's severity, as OpenTelemetry numbers and names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Severity {
    /// `SeverityNumber` (1-24).
    pub number: i32,
    /// `SeverityText`.
    pub text: &'static str,
}

/// The severity of an Observe API log level. The Observe hosts and the Rust guest library
/// (which passes `log::Level`) number them 1 = error, 2 = warn, 3 = info, 4 = debug, 5 =
/// trace; the C header starts at 0 = error, read here as error too. Other values are
/// unspecified.
pub fn severity(level: u32) -> Severity {
    let (number, text) = match level {
        0 | 1 => (17, "ERROR"),
        2 => (13, "WARN"),
        3 => (9, "INFO"),
        4 => (5, "DEBUG"),
        5 => (1, "TRACE"),
        _ => (0, "UNSPECIFIED"),
    };
    Severity { number, text }
}

/// What a statsd metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// `c`: added to a counter.
    Counter,
    /// `g`: the gauge's new value.
    Gauge,
    /// `ms`, `h`, `d`: one observation of a distribution.
    Histogram,
}

/// One statsd line: `name:value|type[|@rate][|#tag:value,...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsdMetric {
    /// Metric name.
    pub name: String,
    /// The value (a counter's is divided by the sample rate).
    pub value: f64,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// Tags, as attributes.
    pub tags: Vec<(String, String)>,
}

/// Parses a statsd line.
///
/// # Errors
///
/// Says what is wrong with it (sets, `s`, are not supported).
pub fn parse_statsd(line: &str) -> Result<StatsdMetric, String> {
    let line = line.trim();
    let mut fields = line.split('|');
    let (name, value) = fields
        .next()
        .and_then(|head| head.rsplit_once(':'))
        .ok_or_else(|| format!("statsd line without `name:value`: {line:?}"))?;
    let kind = match fields.next().map(str::trim) {
        Some("c") => MetricKind::Counter,
        Some("g") => MetricKind::Gauge,
        Some("ms" | "h" | "d") => MetricKind::Histogram,
        Some(other) => return Err(format!("unsupported statsd type `{other}` in {line:?}")),
        None => return Err(format!("statsd line without a type: {line:?}")),
    };
    let mut value: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("statsd value is not a number in {line:?}"))?;
    let mut tags = Vec::new();
    for field in fields {
        if let Some(rate) = field.strip_prefix('@') {
            let rate: f64 = rate
                .parse()
                .ok()
                .filter(|r: &f64| *r > 0.0 && *r <= 1.0)
                .ok_or_else(|| format!("statsd sample rate out of (0, 1] in {line:?}"))?;
            if kind == MetricKind::Counter {
                value /= rate;
            }
        } else if let Some(list) = field.strip_prefix('#') {
            tags = parse_tags(list);
        }
    }
    let name = name.trim();
    if name.is_empty() || !value.is_finite() {
        return Err(format!(
            "statsd line without a name or a finite value: {line:?}"
        ));
    }
    Ok(StatsdMetric {
        name: name.to_string(),
        value,
        kind,
        tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_key_value_pairs() {
        assert_eq!(
            parse_tags("user_id:123, world:hello,,flag,url:http://x"),
            [
                ("user_id".to_string(), "123".to_string()),
                ("world".to_string(), "hello".to_string()),
                ("flag".to_string(), String::new()),
                ("url".to_string(), "http://x".to_string()),
            ]
        );
    }

    #[test]
    fn statsd_lines_parse_or_say_why_not() {
        let counter = parse_statsd("worlds.helloed:1|c").unwrap();
        assert_eq!(
            (counter.name.as_str(), counter.value, counter.kind),
            ("worlds.helloed", 1.0, MetricKind::Counter)
        );
        let sampled = parse_statsd("hits:3|c|@0.5|#route:/a,code:200").unwrap();
        assert_eq!(sampled.value, 6.0);
        assert_eq!(sampled.tags.len(), 2);
        assert_eq!(parse_statsd("temp:-3.5|g").unwrap().kind, MetricKind::Gauge);
        assert_eq!(
            parse_statsd("latency:12|ms").unwrap().kind,
            MetricKind::Histogram
        );
        assert!(
            parse_statsd("users:7|s")
                .unwrap_err()
                .contains("unsupported")
        );
        assert!(parse_statsd("novalue|c").is_err());
        assert!(parse_statsd("x:abc|c").is_err());
        assert!(parse_statsd("x:1").is_err());
    }

    #[test]
    fn severities_follow_the_observe_hosts() {
        assert_eq!(severity(1).text, "ERROR");
        assert_eq!(severity(0).text, "ERROR");
        assert_eq!(severity(2).number, 13);
        assert_eq!(severity(5).text, "TRACE");
        assert_eq!(severity(9).number, 0);
    }
}
