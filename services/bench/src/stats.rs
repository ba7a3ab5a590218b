//! Latency recording: HdrHistograms in microseconds (1 µs to 60 s, 3 significant digits),
//! sharded so thousands of connection tasks record without contending, each task buffering a
//! few values before it takes its shard's lock.

use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::Serialize;

const SHARDS: usize = 16;
const LOCAL_BATCH: usize = 128;
/// The largest value recorded (60 s in µs); larger ones are clamped.
const HIGHEST_US: u64 = 60_000_000;

/// A new, empty histogram of microseconds.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// Histograms shared by many tasks.
pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        })
    }

    /// A buffer for one task; `key` spreads tasks over the shards.
    pub fn local(self: &Arc<Self>, key: usize) -> Local {
        Local {
            recorder: self.clone(),
            shard: key % SHARDS,
            buffer: Vec::with_capacity(LOCAL_BATCH),
        }
    }

    fn record_all(&self, shard: usize, values: &[u64]) {
        let mut h = lock(&self.shards[shard]);
        for &v in values {
            h.saturating_record(v.clamp(1, HIGHEST_US));
        }
    }

    /// Everything recorded so far (flushed locals only), and starts afresh.
    pub fn take(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            let mut h = lock(shard);
            // Same bounds everywhere: adding cannot fail.
            let _ = all.add(&*h);
            h.reset();
        }
        all
    }
}

/// One task's buffer into a [`Recorder`].
pub struct Local {
    recorder: Arc<Recorder>,
    shard: usize,
    buffer: Vec<u64>,
}

impl Local {
    #[inline]
    pub fn record(&mut self, micros: u64) {
        self.buffer.push(micros);
        if self.buffer.len() >= LOCAL_BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if !self.buffer.is_empty() {
            self.recorder.record_all(self.shard, &self.buffer);
            self.buffer.clear();
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The percentiles a report shows, in milliseconds, and the curve its chart draws.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// `[percentile, ms]` from 0 to 100, for charts.
    pub curve: Vec<[f64; 2]>,
}

const CURVE: [f64; 22] = [
    0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 97.5, 99.0, 99.5,
    99.75, 99.9, 99.95, 99.99, 99.999, 100.0,
];

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |q: f64| ms(h.value_at_quantile(q));
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: ms(h.max()),
            curve: CURVE
                .iter()
                .map(|&p| {
                    let v = if p >= 100.0 {
                        h.max()
                    } else if p <= 0.0 {
                        h.min()
                    } else {
                        h.value_at_quantile(p / 100.0)
                    };
                    [p, ms(v)]
                })
                .collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The edge's own append latency (`chatlog_edge_append_seconds` of `GET /metrics`): cumulative
/// counts by bucket upper bound (seconds, `+Inf` as infinity).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeHistogram(pub Vec<(f64, u64)>);

impl EdgeHistogram {
    const BUCKET: &'static str = "chatlog_edge_append_seconds_bucket{le=\"";

    /// The buckets in a metrics text (empty when it has none).
    pub fn parse(metrics: &str) -> Self {
        Self(
            metrics
                .lines()
                .filter_map(|line| {
                    let (le, count) = line.strip_prefix(Self::BUCKET)?.split_once("\"} ")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((le, count.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// What was counted between `earlier` and `self` (same buckets).
    pub fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0, |&(_, n)| n);
                    (le, n.saturating_sub(before))
                })
                .collect(),
        )
    }

    /// The `q` quantile in ms, interpolated within its bucket as Prometheus's
    /// `histogram_quantile` does; `None` when nothing was counted or it falls in `+Inf`.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let (mut lower, mut below) = (0.0, 0);
        for &(le, n) in &self.0 {
            if n as f64 >= rank {
                if le.is_infinite() {
                    return None;
                }
                let within = (n - below).max(1) as f64;
                return Some((lower + (le - lower) * (rank - below as f64) / within) * 1e3);
            }
            (lower, below) = (le, n);
        }
        None
    }
}

/// Width of a [`Slices`] slice.
pub const SLICE: std::time::Duration = std::time::Duration::from_millis(100);
/// An ack slower than this counts as slow in [`Slices`]: the ack p99 goal.
pub const SLOW_US: u64 = 5_000;

/// Measured acks by 100 ms slice of a phase, and how many of them were slow (over [`SLOW_US`]):
/// whether a phase's tail is spread over every slice (queueing on a busy machine) or packed into
/// a few (stalls: a garbage collection in nats-server, a burst of other work). Shared by the
/// phase's tasks; a counter per slice.
pub struct Slices {
    from: tokio::time::Instant,
    counts: Vec<[std::sync::atomic::AtomicU64; 2]>,
}

impl Slices {
    /// Slices covering `seconds` from `from`; an ack outside them is not counted.
    pub fn new(from: tokio::time::Instant, seconds: f64) -> Arc<Self> {
        let n = (seconds.max(0.0) / SLICE.as_secs_f64()).ceil() as usize;
        Arc::new(Self {
            from,
            counts: (0..n).map(|_| Default::default()).collect(),
        })
    }

    /// An ack received `at` that took `micros`.
    pub fn record(&self, at: tokio::time::Instant, micros: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(since) = at.checked_duration_since(self.from) else {
            return;
        };
        let i = (since.as_micros() / SLICE.as_micros()) as usize;
        if let Some([acks, slow]) = self.counts.get(i) {
            acks.fetch_add(1, Relaxed);
            if micros > SLOW_US {
                slow.fetch_add(1, Relaxed);
            }
        }
    }

    pub fn summary(&self) -> SliceSummary {
        use std::sync::atomic::Ordering::Relaxed;
        let acks: Vec<u64> = self.counts.iter().map(|[a, _]| a.load(Relaxed)).collect();
        let slow: Vec<u64> = self.counts.iter().map(|[_, s]| s.load(Relaxed)).collect();
        let slow_total: u64 = slow.iter().sum();
        // The slices with the most slow acks first, taken until they hold half of them.
        let mut most = slow.clone();
        most.sort_unstable_by(|a, b| b.cmp(a));
        let (mut held, mut slices_for_half_of_slow) = (0, 0);
        for n in most {
            if 2 * held >= slow_total {
                break;
            }
            held += n;
            slices_for_half_of_slow += 1;
        }
        SliceSummary {
            slice_ms: SLICE.as_millis() as u64,
            slow_ms: SLOW_US as f64 / 1000.0,
            slow_total,
            slices_for_half_of_slow,
            acks,
            slow,
        }
    }
}

/// What [`Slices`] counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SliceSummary {
    pub slice_ms: u64,
    /// The threshold of a slow ack.
    pub slow_ms: f64,
    /// Measured acks over the threshold.
    pub slow_total: u64,
    /// The fewest slices that hold at least half of the slow acks (0 when there are none).
    pub slices_for_half_of_slow: usize,
    /// Acks per slice, in order.
    pub acks: Vec<u64>,
    /// Slow acks per slice.
    pub slow: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locals_land_in_the_recorder() {
        let rec = Recorder::new();
        let mut a = rec.local(0);
        let mut b = rec.local(1);
        for v in 1..=1000 {
            a.record(v);
            b.record(v * 1000);
        }
        drop(a);
        drop(b);
        let h = rec.take();
        assert_eq!(h.len(), 2000);
        let l = Latency::of(&h);
        assert!((l.max_ms - 1000.0).abs() < 1.0);
        assert_eq!(l.curve.len(), CURVE.len());
        assert!(rec.take().is_empty());
    }

    #[test]
    fn edge_histogram_quantiles_interpolate_within_the_bucket() {
        let text = "chatlog_edge_append_seconds_bucket{le=\"0.001\"} 10\n\
                    chatlog_edge_append_seconds_bucket{le=\"0.002\"} 50\n\
                    chatlog_edge_append_seconds_bucket{le=\"0.003\"} 100\n\
                    chatlog_edge_append_seconds_bucket{le=\"+Inf\"} 100\n\
                    chatlog_edge_append_seconds_count 100\n";
        let earlier = EdgeHistogram::parse(
            "chatlog_edge_append_seconds_bucket{le=\"0.001\"} 10\n\
             chatlog_edge_append_seconds_bucket{le=\"0.002\"} 10\n\
             chatlog_edge_append_seconds_bucket{le=\"0.003\"} 10\n\
             chatlog_edge_append_seconds_bucket{le=\"+Inf\"} 10\n",
        );
        let h = EdgeHistogram::parse(text);
        assert_eq!(h.0.len(), 4);
        let d = h.since(&earlier);
        assert_eq!(d.0[0], (0.001, 0));
        assert_eq!(d.0[3].1, 90);
        // 90 since: 40 in (1, 2] ms, 50 in (2, 3]; p50 is the 45th: 2 + 5/50 ms.
        let p50 = d.quantile_ms(0.5).unwrap_or_default();
        assert!((p50 - 2.1).abs() < 1e-9, "{p50}");
        assert_eq!(EdgeHistogram::default().quantile_ms(0.99), None);
    }

    #[test]
    fn slices_count_acks_and_slow_acks_by_100_ms_and_find_where_the_slow_ones_are() {
        let from = tokio::time::Instant::now();
        let slices = Slices::new(from, 1.0);
        let at = |ms: u64| from + std::time::Duration::from_millis(ms);
        for ms in (0..1000).step_by(10) {
            slices.record(at(ms), 300);
        }
        // Slow acks: 6 in the slice at 300 ms, 2 at 700, 1 at 900; one after the end, not counted.
        for _ in 0..6 {
            slices.record(at(350), 9_000);
        }
        slices.record(at(720), 5_001);
        slices.record(at(790), 40_000);
        slices.record(at(900), 6_000);
        slices.record(at(1000), 9_000);
        slices.record(at(500), SLOW_US);
        let s = slices.summary();
        assert_eq!(s.acks.len(), 10);
        assert_eq!(s.acks[3], 10 + 6);
        assert_eq!(s.acks[5], 10 + 1);
        assert_eq!(s.slow, [0, 0, 0, 6, 0, 0, 0, 2, 0, 1]);
        assert_eq!(s.slow_total, 9);
        // 6 of 9 are in one slice: half of them are there.
        assert_eq!(s.slices_for_half_of_slow, 1);
        slices.record(at(100), 9_000);
        slices.record(at(150), 9_000);
        slices.record(at(250), 9_000);
        slices.record(at(260), 9_000);
        // 13 slow now, [0, 2, 2, 6, 0, 0, 0, 2, 0, 1]: 6 + 2 = 8 is more than half.
        assert_eq!(slices.summary().slices_for_half_of_slow, 2);
        assert_eq!(Slices::new(from, 1.0).summary().slices_for_half_of_slow, 0);
    }
}
