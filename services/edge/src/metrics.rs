//! Prometheus metrics of the edge (`GET /metrics`), as plain atomic counters rendered in the
//! text exposition format.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

/// Other components' metrics rendered with the edge's: each source returns exposition text.
#[derive(Clone, Default)]
pub struct Sources(pub Vec<Arc<dyn Fn() -> String + Send + Sync>>);

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sources({})", self.0.len())
    }
}

/// More conditions of `/readyz` (the handlers running in the same process answer queries).
#[derive(Clone, Default)]
pub struct ReadyChecks(pub Vec<Arc<dyn Fn() -> bool + Send + Sync>>);

impl std::fmt::Debug for ReadyChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadyChecks({})", self.0.len())
    }
}

/// Counters kept where the work happens (the hub, the log, the limits), process-wide: an edge
/// is a process, and passing its `Metrics` down to every feed and read would cost more than an
/// atomic add.
pub mod counters {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

    /// Room frames handed to connections' queues (events and presence).
    pub static DELIVERIES: AtomicU64 = AtomicU64::new(0);
    /// Connections closed for not reading (their queue full, a write that did not finish, their
    /// catch-up buffer full): once per connection.
    pub static SLOW_CONSUMER_KICKS: AtomicU64 = AtomicU64::new(0);
    /// Requests and frames refused with `rate_limited`.
    pub static RATE_LIMITED: AtomicU64 = AtomicU64::new(0);
    /// Catch-ups (a join with `since`) running now, and started.
    pub static CATCH_UPS_IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
    pub static CATCH_UPS: AtomicU64 = AtomicU64::new(0);
    /// Direct get requests sent to JetStream (a batch counts once).
    pub static DIRECT_GETS: AtomicU64 = AtomicU64::new(0);

    /// File bytes received by uploads (stored or not) and sent by downloads.
    pub static FILE_BYTES_IN: AtomicU64 = AtomicU64::new(0);
    pub static FILE_BYTES_OUT: AtomicU64 = AtomicU64::new(0);
    /// Uploads stored (a duplicate of a stored file too), and downloads answered (200 or 206).
    pub static FILE_UPLOADS: AtomicU64 = AtomicU64::new(0);
    pub static FILE_DOWNLOADS: AtomicU64 = AtomicU64::new(0);
    /// Sweeps of the files bucket this edge finished, and files deleted because no live message
    /// names them (by a sweep or after a delete).
    pub static FILE_SWEEPS: AtomicU64 = AtomicU64::new(0);
    pub static FILES_REMOVED: AtomicU64 = AtomicU64::new(0);
    /// Uploads refused or lost, by [`FileRejection`].
    pub static FILE_REJECTIONS: [AtomicU64; FileRejection::ALL.len()] =
        [const { AtomicU64::new(0) }; FileRejection::ALL.len()];

    /// Why an upload stored nothing.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FileRejection {
        /// Over the size limit (413).
        TooLarge,
        /// Over the user's daily quota (429).
        Quota,
        /// The declared type contradicts the bytes (415).
        Type,
        /// Any other bad request: a name, a type, an empty file, a room (4xx).
        BadRequest,
        /// The body ended short or the client went away.
        Aborted,
        /// NATS failed it (503).
        Unavailable,
    }

    impl FileRejection {
        pub const ALL: [FileRejection; 6] = [
            FileRejection::TooLarge,
            FileRejection::Quota,
            FileRejection::Type,
            FileRejection::BadRequest,
            FileRejection::Aborted,
            FileRejection::Unavailable,
        ];

        pub fn label(self) -> &'static str {
            match self {
                FileRejection::TooLarge => "too_large",
                FileRejection::Quota => "quota",
                FileRejection::Type => "type",
                FileRejection::BadRequest => "bad_request",
                FileRejection::Aborted => "aborted",
                FileRejection::Unavailable => "unavailable",
            }
        }

        pub fn count(self) {
            FILE_REJECTIONS[self as usize].fetch_add(1, Relaxed);
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Counts a catch-up in flight for as long as it lives (an aborted one too).
    pub struct CatchUp(());

    impl CatchUp {
        pub fn start() -> CatchUp {
            CATCH_UPS.fetch_add(1, Relaxed);
            CATCH_UPS_IN_FLIGHT.fetch_add(1, Relaxed);
            CatchUp(())
        }
    }

    impl Drop for CatchUp {
        fn drop(&mut self) {
            CATCH_UPS_IN_FLIGHT.fetch_sub(1, Relaxed);
        }
    }
}

/// Upper bounds (µs) of the append latency histogram's buckets; `+Inf` follows.
const APPEND_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

#[derive(Default)]
pub struct Metrics {
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    appends_total: AtomicU64,
    /// Appends per latency bucket (not cumulative; the last is `+Inf`).
    append_buckets: [AtomicU64; APPEND_BUCKETS_US.len() + 1],
    append_micros_sum: AtomicU64,
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// An append acknowledged `took` after it was handed to JetStream.
    pub fn appended(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = APPEND_BUCKETS_US.partition_point(|&le| le < micros);
        self.append_buckets[bucket].fetch_add(1, Relaxed);
        self.append_micros_sum.fetch_add(micros, Relaxed);
        self.appends_total.fetch_add(1, Relaxed);
    }

    /// The text exposition format; `rooms_live` is read from the hub at render time.
    pub fn render(&self, rooms_live: usize, nats_connected: bool) -> String {
        let mut text = format!(
            "# HELP chatlog_edge_connections WebSocket connections open now.\n\
             # TYPE chatlog_edge_connections gauge\n\
             chatlog_edge_connections {}\n\
             # HELP chatlog_edge_connections_total WebSocket connections accepted.\n\
             # TYPE chatlog_edge_connections_total counter\n\
             chatlog_edge_connections_total {}\n\
             # HELP chatlog_edge_appends_total Events appended and acknowledged.\n\
             # TYPE chatlog_edge_appends_total counter\n\
             chatlog_edge_appends_total {}\n\
             # HELP chatlog_edge_rooms_live Rooms with a live subscription on this edge.\n\
             # TYPE chatlog_edge_rooms_live gauge\n\
             chatlog_edge_rooms_live {}\n\
             # HELP chatlog_edge_nats_connected 1 when the NATS connection is up.\n\
             # TYPE chatlog_edge_nats_connected gauge\n\
             chatlog_edge_nats_connected {}\n",
            self.connections_open.load(Relaxed),
            self.connections_total.load(Relaxed),
            self.appends_total.load(Relaxed),
            rooms_live,
            u8::from(nats_connected),
        );
        use counters::*;
        for (name, kind, help, value) in [
            (
                "deliveries_total",
                "counter",
                "Room frames (events, presence) handed to connections.",
                DELIVERIES.load(Relaxed) as i64,
            ),
            (
                "slow_consumer_kicks_total",
                "counter",
                "Connections closed for not reading their frames.",
                SLOW_CONSUMER_KICKS.load(Relaxed) as i64,
            ),
            (
                "rate_limited_total",
                "counter",
                "Requests and frames refused with rate_limited.",
                RATE_LIMITED.load(Relaxed) as i64,
            ),
            (
                "catch_ups_in_flight",
                "gauge",
                "Joins with since whose catch-up is running.",
                CATCH_UPS_IN_FLIGHT.load(Relaxed),
            ),
            (
                "catch_ups_total",
                "counter",
                "Joins with since whose catch-up started.",
                CATCH_UPS.load(Relaxed) as i64,
            ),
            (
                "direct_gets_total",
                "counter",
                "Direct get requests sent to JetStream (a batch counts once).",
                DIRECT_GETS.load(Relaxed) as i64,
            ),
        ] {
            let _ = write!(
                text,
                "# HELP chatlog_edge_{name} {help}\n# TYPE chatlog_edge_{name} {kind}\nchatlog_edge_{name} {value}\n"
            );
        }
        for (name, help, value) in [
            (
                "file_bytes_in_total",
                "File bytes received by uploads (stored or not).",
                &FILE_BYTES_IN,
            ),
            (
                "file_bytes_out_total",
                "File bytes sent by downloads.",
                &FILE_BYTES_OUT,
            ),
            (
                "file_uploads_total",
                "Uploads stored (a duplicate of a stored file too).",
                &FILE_UPLOADS,
            ),
            (
                "file_downloads_total",
                "Downloads answered with bytes (200 or 206).",
                &FILE_DOWNLOADS,
            ),
            (
                "file_sweeps_total",
                "Sweeps of the files bucket finished.",
                &FILE_SWEEPS,
            ),
            (
                "files_removed_total",
                "Files deleted because no live message names them.",
                &FILES_REMOVED,
            ),
        ] {
            let _ = write!(
                text,
                "# HELP chatlog_edge_{name} {help}\n# TYPE chatlog_edge_{name} counter\nchatlog_edge_{name} {}\n",
                value.load(Relaxed)
            );
        }
        text.push_str(
            "# HELP chatlog_edge_file_rejections_total Uploads that stored nothing, by reason.\n\
             # TYPE chatlog_edge_file_rejections_total counter\n",
        );
        for reason in FileRejection::ALL {
            let _ = writeln!(
                text,
                "chatlog_edge_file_rejections_total{{reason=\"{}\"}} {}",
                reason.label(),
                FILE_REJECTIONS[reason as usize].load(Relaxed)
            );
        }
        self.render_append_latency(&mut text);
        text
    }

    /// `chatlog_edge_append_seconds`: from handing an event to JetStream to its ack.
    fn render_append_latency(&self, text: &mut String) {
        text.push_str(
            "# HELP chatlog_edge_append_seconds Time from handing an event to JetStream to its ack.\n\
             # TYPE chatlog_edge_append_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (i, count) in self.append_buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = APPEND_BUCKETS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| (*us as f64 / 1e6).to_string());
            let _ = writeln!(
                text,
                "chatlog_edge_append_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            text,
            "chatlog_edge_append_seconds_sum {}\nchatlog_edge_append_seconds_count {cumulative}",
            self.append_micros_sum.load(Relaxed) as f64 / 1e6
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_latency_lands_in_its_bucket_and_renders_cumulative() {
        let metrics = Metrics::default();
        metrics.appended(Duration::from_micros(80));
        metrics.appended(Duration::from_micros(1_000));
        metrics.appended(Duration::from_micros(1_001));
        metrics.appended(Duration::from_secs(60));
        let text = metrics.render(0, true);
        let line = |le: &str| {
            let prefix = format!("chatlog_edge_append_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(str::to_owned)
        };
        assert_eq!(line("0.0001").as_deref(), Some("1"));
        assert_eq!(line("0.0005").as_deref(), Some("1"));
        assert_eq!(line("0.001").as_deref(), Some("2"), "1 ms is in le=0.001");
        assert_eq!(line("0.002").as_deref(), Some("3"));
        assert_eq!(line("5").as_deref(), Some("3"));
        assert_eq!(line("+Inf").as_deref(), Some("4"));
        assert!(text.contains("chatlog_edge_append_seconds_count 4\n"));
        assert!(text.contains("chatlog_edge_appends_total 4\n"));
    }

    #[test]
    fn a_catch_up_is_in_flight_while_it_lives() {
        let in_flight = || {
            Metrics::default()
                .render(0, true)
                .lines()
                .find_map(|l| l.strip_prefix("chatlog_edge_catch_ups_in_flight "))
                .and_then(|v| v.parse::<i64>().ok())
                .expect("the gauge is rendered")
        };
        // Other tests of this process may run catch-ups: compare with what it was.
        let before = counters::CATCH_UPS_IN_FLIGHT.load(Relaxed);
        let catch_up = counters::CatchUp::start();
        assert!(in_flight() >= 1 && counters::CATCH_UPS_IN_FLIGHT.load(Relaxed) == before + 1);
        drop(catch_up);
        assert_eq!(counters::CATCH_UPS_IN_FLIGHT.load(Relaxed), before);
        let text = Metrics::default().render(0, true);
        for name in [
            "deliveries_total",
            "slow_consumer_kicks_total",
            "rate_limited_total",
            "catch_ups_total",
            "direct_gets_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE chatlog_edge_{name} counter\n")),
                "{name}"
            );
        }
    }
}
