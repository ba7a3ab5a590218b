//! What each function did in this process: counters and a call-latency histogram, answered as
//! JSON on `functions.stats` (every runtime replica answers; `chatlog functions stats` adds them).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use chatlog_events::functions::FunctionName;
use serde::{Deserialize, Serialize};

/// Where the runtime answers stats requests.
pub const SUBJECT: &str = "functions.stats";

/// One function's counters in this process (across its generations).
#[derive(Default)]
pub struct FunctionStats {
    /// Events a 2xx acknowledged.
    pub delivered: AtomicU64,
    /// Calls that failed (an error, a timeout or a status other than 2xx).
    pub failed: AtomicU64,
    /// Events written to `CHAT_DEAD`.
    pub dead: AtomicU64,
    /// Events not delivered: of a type not wanted, or the function's own.
    pub skipped: AtomicU64,
    /// Events appended from answers.
    pub answers: AtomicU64,
    /// Answers rejected (nothing of them stored).
    pub rejected: AtomicU64,
    /// Events stored after the last one this process received, not yet sent to it (the
    /// consumer's count as of then).
    pub lag: AtomicU64,
    pub latency: Histogram,
    detail: Mutex<Detail>,
}

#[derive(Default)]
struct Detail {
    rejections: BTreeMap<&'static str, u64>,
    last_rejection: Option<String>,
    last_failure: Option<String>,
}

impl FunctionStats {
    pub fn reject(&self, kind: &'static str, why: String) {
        self.rejected.fetch_add(1, Relaxed);
        let mut d = self.detail.lock().unwrap_or_else(|e| e.into_inner());
        *d.rejections.entry(kind).or_default() += 1;
        d.last_rejection = Some(why);
    }

    pub fn fail(&self, why: String) {
        self.failed.fetch_add(1, Relaxed);
        self.detail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_failure = Some(why);
    }

    pub fn snapshot(&self) -> Snapshot {
        let d = self.detail.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            delivered: self.delivered.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dead: self.dead.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            answers: self.answers.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            rejections: d
                .rejections
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            last_rejection: d.last_rejection.clone(),
            last_failure: d.last_failure.clone(),
            calls: self.latency.count(),
            p50_ms: self.latency.quantile(0.5),
            p99_ms: self.latency.quantile(0.99),
        }
    }
}

/// A function's counters as answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub delivered: u64,
    pub failed: u64,
    pub dead: u64,
    pub skipped: u64,
    pub answers: u64,
    pub rejected: u64,
    #[serde(default)]
    pub rejections: BTreeMap<String, u64>,
    pub last_rejection: Option<String>,
    pub last_failure: Option<String>,
    pub calls: u64,
    /// Call latency (an upper bound, within 19%), when there were calls.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A replica's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicaStats {
    pub replica: String,
    pub functions: BTreeMap<String, Snapshot>,
}

/// Every function's stats in this process.
#[derive(Clone, Default)]
pub struct Stats {
    functions: Arc<Mutex<BTreeMap<FunctionName, Arc<FunctionStats>>>>,
    /// Set once the registry was read and its functions started (`/readyz`).
    ready: Arc<AtomicBool>,
}

impl Stats {
    pub fn set_ready(&self) {
        self.ready.store(true, Relaxed);
    }

    /// Whether the runtime read the registry and started its functions.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    pub fn of(&self, name: &FunctionName) -> Arc<FunctionStats> {
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.clone())
            .or_default()
            .clone()
    }

    /// Prometheus text: a line per function and counter, rejections by kind, and the call
    /// latency as a summary (the bucket bounds of its quantiles).
    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write as _;
        type Value = fn(&FunctionStats) -> u64;
        let all = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let counters: [(&str, &str, &str, Value); 7] = [
            ("delivered_total", "counter", "Events a 2xx took.", |s| {
                s.delivered.load(Relaxed)
            }),
            (
                "failed_calls_total",
                "counter",
                "Calls that failed (an error, a timeout or a status other than 2xx).",
                |s| s.failed.load(Relaxed),
            ),
            (
                "dead_total",
                "counter",
                "Events written to CHAT_DEAD.",
                |s| s.dead.load(Relaxed),
            ),
            (
                "skipped_total",
                "counter",
                "Events not delivered: of a type not wanted, or the function's own.",
                |s| s.skipped.load(Relaxed),
            ),
            (
                "answers_total",
                "counter",
                "Events stored from answers.",
                |s| s.answers.load(Relaxed),
            ),
            (
                "rejected_total",
                "counter",
                "Answers rejected, nothing of them stored.",
                |s| s.rejected.load(Relaxed),
            ),
            (
                "lag",
                "gauge",
                "Events stored after the last one received, not sent to this process yet.",
                |s| s.lag.load(Relaxed),
            ),
        ];
        let mut out = String::new();
        for (metric, kind, help, value) in counters {
            let _ = writeln!(out, "# HELP chatlog_function_{metric} {help}");
            let _ = writeln!(out, "# TYPE chatlog_function_{metric} {kind}");
            for (name, stats) in &all {
                let _ = writeln!(
                    out,
                    "chatlog_function_{metric}{{function=\"{name}\"}} {}",
                    value(stats)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP chatlog_function_rejections_total Answers rejected, by kind."
        );
        let _ = writeln!(out, "# TYPE chatlog_function_rejections_total counter");
        for (name, stats) in &all {
            let d = stats.detail.lock().unwrap_or_else(|e| e.into_inner());
            for (kind, n) in &d.rejections {
                let _ = writeln!(
                    out,
                    "chatlog_function_rejections_total{{function=\"{name}\",kind=\"{kind}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP chatlog_function_call_seconds Call latency, the answer read included."
        );
        let _ = writeln!(out, "# TYPE chatlog_function_call_seconds summary");
        for (name, stats) in &all {
            for q in [0.5, 0.99] {
                if let Some(ms) = stats.latency.quantile(q) {
                    let _ = writeln!(
                        out,
                        "chatlog_function_call_seconds{{function=\"{name}\",quantile=\"{q}\"}} {}",
                        ms / 1000.0
                    );
                }
            }
            let _ = writeln!(
                out,
                "chatlog_function_call_seconds_count{{function=\"{name}\"}} {}",
                stats.latency.count()
            );
        }
        out
    }

    pub fn snapshot(&self, replica: &str) -> ReplicaStats {
        let all = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        ReplicaStats {
            replica: replica.to_string(),
            functions: all
                .iter()
                .map(|(n, s)| (n.to_string(), s.snapshot()))
                .collect(),
        }
    }
}

const BUCKETS: usize = 128;
/// Buckets per doubling: each bucket's upper bound is 2^(1/4) (19%) above its lower one.
const PER_DOUBLING: f64 = 4.0;

/// Durations in log-spaced buckets from 1 µs to about an hour, without locks.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let micros = d.as_micros().max(1) as f64;
        let i = ((micros.log2() * PER_DOUBLING) as usize).min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The upper bound of the bucket holding quantile `q`, in milliseconds.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(2f64.powf((i + 1) as f64 / PER_DOUBLING) / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_upper_bounds_within_a_bucket() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.99), None);
        for _ in 0..99 {
            h.record(Duration::from_millis(1));
        }
        h.record(Duration::from_secs(1));
        let p50 = h.quantile(0.5).unwrap();
        assert!((1.0..1.2).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((1.0..1.2).contains(&p99), "{p99}");
        let max = h.quantile(1.0).unwrap();
        assert!((1000.0..1200.0).contains(&max), "{max}");
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn a_snapshot_counts_rejections_by_kind() {
        let stats = Stats::default();
        let echo = FunctionName::parse("echo").unwrap();
        stats.of(&echo).reject("loop", "too many hops".into());
        stats.of(&echo).reject("loop", "again".into());
        stats.of(&echo).delivered.fetch_add(3, Relaxed);
        let s = &stats.snapshot("r1").functions["echo"];
        assert_eq!((s.delivered, s.rejected), (3, 2));
        assert_eq!(s.rejections["loop"], 2);
        assert_eq!(s.last_rejection.as_deref(), Some("again"));
    }

    #[test]
    fn prometheus_has_a_line_per_function_and_counter() {
        let stats = Stats::default();
        let echo = FunctionName::parse("echo").unwrap();
        stats.of(&echo).delivered.fetch_add(3, Relaxed);
        stats.of(&echo).reject("not_moderator", "no".into());
        stats.of(&echo).latency.record(Duration::from_millis(2));
        let text = stats.render_prometheus();
        for line in [
            "chatlog_function_delivered_total{function=\"echo\"} 3",
            "chatlog_function_rejected_total{function=\"echo\"} 1",
            "chatlog_function_rejections_total{function=\"echo\",kind=\"not_moderator\"} 1",
            "chatlog_function_call_seconds_count{function=\"echo\"} 1",
            "# TYPE chatlog_function_lag gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
