//! Tallying and printing what a bench measured: latency histograms and their percentiles,
//! failures by kind, and durations written the way a person reads them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::BenchError;
use crate::client::ClientError;

/// The largest latency the histograms tell apart, in microseconds (an hour).
const LATENCY_CEILING_US: u64 = 3_600_000_000;

/// `bytes` in MiB.
pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Byte counts, one per node, as whole MiB: `289/247/250`.
pub(super) fn mib_per_node(bytes: &[u64]) -> String {
    bytes.iter().map(|&b| format!("{:.0}", mib(b))).collect::<Vec<_>>().join("/")
}

/// A latency histogram in microseconds over a fixed range, so a rare huge value is clamped
/// instead of growing every histogram.
pub(super) struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Result<Latencies, BenchError> {
        Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3)
            .map(Latencies)
            .map_err(|e| BenchError::Histogram(e.to_string()))
    }

    pub fn record(&mut self, latency: Duration) {
        self.0.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    pub fn add(&mut self, other: &Latencies) -> Result<(), BenchError> {
        self.0.add(&other.0).map_err(|e| BenchError::Histogram(format!("{e:?}")))
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// p50, p99 and max; `None` when nothing was recorded.
    pub fn percentiles(&self) -> Option<[Duration; 3]> {
        let h = &self.0;
        (!h.is_empty())
            .then(|| [h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()].map(Duration::from_micros))
    }
}

/// Successes with their latencies, and failures by kind.
pub(super) struct Tally {
    pub ok: u64,
    pub latency: Latencies,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn new() -> Result<Tally, BenchError> {
        Ok(Tally { ok: 0, latency: Latencies::new()?, errors: BTreeMap::new() })
    }

    pub fn success(&mut self, latency: Duration) {
        self.ok += 1;
        self.latency.record(latency);
    }

    pub fn failure(&mut self, kind: Failure) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Tally) -> Result<(), BenchError> {
        self.ok += other.ok;
        self.latency.add(&other.latency)?;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        Ok(())
    }
}

/// What one load phase achieved.
#[derive(Debug, PartialEq)]
pub(super) struct Figures {
    pub clients: u64,
    pub elapsed: Duration,
    pub ok: u64,
    /// p50, p99 and max latency of the successes; `None` without any.
    pub latency: Option<[Duration; 3]>,
    pub errors: BTreeMap<String, u64>,
}

impl Figures {
    pub fn new(tally: &Tally, clients: u64, elapsed: Duration) -> Figures {
        Figures { clients, elapsed, ok: tally.ok, latency: tally.latency.percentiles(), errors: tally.errors.clone() }
    }

    pub fn ops_per_s(&self) -> f64 {
        per_second(self.ok, self.elapsed)
    }

    /// `joins: 64 clients, 10.0 s: 8123 ops/s, p50 5.1 ms, p99 19.8 ms, max 45 ms, errors 0`
    pub fn line(&self, name: &str) -> String {
        let latency = match self.latency {
            Some(l) => percentiles_text(l),
            None => "no successes".to_owned(),
        };
        format!(
            "{name}: {} clients, {:.1} s: {:.0} ops/s, {latency}, {}",
            self.clients,
            self.elapsed.as_secs_f64(),
            self.ops_per_s(),
            errors_text(&self.errors)
        )
    }

    pub fn json(&self) -> Value {
        let ms = |i: usize| self.latency.map(|l| millis(l[i]));
        json!({
            "clients": self.clients,
            "seconds": self.elapsed.as_secs_f64(),
            "ok": self.ok,
            "ops_per_s": self.ops_per_s(),
            "p50_ms": ms(0),
            "p99_ms": ms(1),
            "max_ms": ms(2),
            "errors": self.errors,
        })
    }
}

/// `count` over `elapsed`; 0 for no time at all.
pub(super) fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// `p50 5.1 ms, p99 19.8 ms, max 45.0 ms`
pub(super) fn percentiles_text([p50, p99, max]: [Duration; 3]) -> String {
    format!("p50 {}, p99 {}, max {}", latency(p50), latency(p99), latency(max))
}

/// `errors 0`, or `errors 12 (503: 10, timeout: 2)`.
pub(super) fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    let total: u64 = errors.values().sum();
    if total == 0 {
        return "errors 0".to_owned();
    }
    let kinds: Vec<String> = errors.iter().map(|(kind, n)| format!("{kind}: {n}")).collect();
    format!("errors {total} ({})", kinds.join(", "))
}

/// Milliseconds to the microsecond, for the JSON figures.
pub(super) fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// A latency as a person reads it: `0.4 ms`, `19.8 ms`, `450 ms`, `12.3 s`.
pub(super) fn latency(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1e3)
    }
}

/// The median of sorted values; the mean of the middle two for an even count.
pub(super) fn median(sorted: &[Duration]) -> Option<Duration> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// A failed request: its status code, or what went wrong on the way (`timeout`, `connect`, ...).
pub(super) type Failure = String;

/// How a tally counts a failed request.
pub(super) fn failure(error: &ClientError) -> Failure {
    let kind = match error {
        ClientError::Api { status, .. } => return status.to_string(),
        ClientError::NoEndpointAnswered { last, .. } => return failure(last),
        e if e.is_timeout() => "timeout",
        e if e.is_connect() => "connect",
        ClientError::Transport { source, .. } if source.is_body() || source.is_decode() => "body",
        ClientError::Decode { .. } => "body",
        _ => "request",
    };
    kind.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(latencies_ms: &[u64], errors: &[(&str, u64)]) -> Tally {
        let mut t = Tally::new().expect("histogram");
        for &ms in latencies_ms {
            t.success(Duration::from_millis(ms));
        }
        for &(kind, n) in errors {
            for _ in 0..n {
                t.failure(kind.to_owned());
            }
        }
        t
    }

    #[test]
    fn latency_reads_well_at_every_scale() {
        assert_eq!(latency(Duration::from_micros(420)), "0.4 ms");
        assert_eq!(latency(Duration::from_micros(19_800)), "19.8 ms");
        assert_eq!(latency(Duration::from_millis(450)), "450 ms");
        assert_eq!(latency(Duration::from_millis(12_345)), "12.3 s");
    }

    #[test]
    fn errors_are_totalled_and_listed_by_kind() {
        assert_eq!(errors_text(&BTreeMap::new()), "errors 0");
        let errors = BTreeMap::from([("503".to_owned(), 10), ("timeout".to_owned(), 2)]);
        assert_eq!(errors_text(&errors), "errors 12 (503: 10, timeout: 2)");
    }

    #[test]
    fn percentiles_come_from_the_successes() {
        let latencies: Vec<u64> = (1..=100).collect();
        let figures = Figures::new(&tally(&latencies, &[("503", 3)]), 8, Duration::from_secs(2));
        let [p50, p99, max] = figures.latency.expect("latencies");
        // The histogram keeps 3 significant digits.
        let near = |d: Duration, ms: u64| (d.as_secs_f64() * 1e3 - ms as f64).abs() < 0.1;
        assert!(near(p50, 50), "{p50:?}");
        assert!(near(p99, 99), "{p99:?}");
        assert!(near(max, 100), "{max:?}");
        assert_eq!(figures.ok, 100);
        assert_eq!(figures.ops_per_s(), 50.0);
    }

    #[test]
    fn a_phase_line_has_every_figure() {
        let figures = Figures {
            clients: 64,
            elapsed: Duration::from_secs(10),
            ok: 81_230,
            latency: Some([Duration::from_micros(5_100), Duration::from_micros(19_800), Duration::from_millis(45)]),
            errors: BTreeMap::new(),
        };
        assert_eq!(
            figures.line("joins"),
            "joins: 64 clients, 10.0 s: 8123 ops/s, p50 5.1 ms, p99 19.8 ms, max 45.0 ms, errors 0"
        );
        let json = figures.json();
        assert_eq!(json["ok"], 81_230);
        assert_eq!(json["p99_ms"], 19.8);
    }

    #[test]
    fn a_phase_without_successes_says_so() {
        let figures = Figures::new(&tally(&[], &[("connect", 5)]), 2, Duration::from_secs(1));
        assert_eq!(figures.line("reads"), "reads: 2 clients, 1.0 s: 0 ops/s, no successes, errors 5 (connect: 5)");
        assert_eq!(figures.json()["p50_ms"], Value::Null);
    }

    #[test]
    fn tallies_merge() {
        let mut a = tally(&[1, 2], &[("503", 1)]);
        a.merge(&tally(&[3], &[("503", 2), ("timeout", 1)])).expect("merge");
        assert_eq!(a.ok, 3);
        assert_eq!(a.latency.len(), 3);
        assert_eq!(a.errors, BTreeMap::from([("503".to_owned(), 3), ("timeout".to_owned(), 1)]));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[ms(1), ms(5), ms(9)]), Some(ms(5)));
        assert_eq!(median(&[ms(1), ms(3), ms(5), ms(9)]), Some(ms(4)));
    }
}
