//! Prometheus metrics of the edge (`GET /metrics`), as plain atomic counters rendered in the
//! text exposition format.

use std::sync::{
    Arc,
    atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
};

/// Other components' metrics rendered with the edge's: each source returns exposition text.
#[derive(Clone, Default)]
pub struct Sources(pub Vec<Arc<dyn Fn() -> String + Send + Sync>>);

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sources({})", self.0.len())
    }
}

#[derive(Default)]
pub struct Metrics {
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    appends_total: AtomicU64,
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    pub fn appended(&self) {
        self.appends_total.fetch_add(1, Relaxed);
    }

    /// The text exposition format; `rooms_live` is read from the hub at render time.
    pub fn render(&self, rooms_live: usize, nats_connected: bool) -> String {
        format!(
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
        )
    }
}
