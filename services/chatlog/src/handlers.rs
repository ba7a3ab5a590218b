//! Running handlers: `chatlog handler <name>`, and the handlers `chatlog up` runs beside the edge.

use std::{path::PathBuf, sync::Arc, time::Duration};

use chatlog_runtime::{HostConfig, HostStats, SharedReaders};
use chatlog_views::View;
use clap::{Args, ValueEnum};

/// The handlers chatlog has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HandlerName {
    /// Messages and rooms (`CHAT_ROOMS`).
    History,
    /// Who is online and typing (`CHAT_PRESENCE`).
    Presence,
    /// Mentions become notifications (`CHAT_ROOMS`); notifications and read markers (`CHAT_USERS`).
    Notifications,
}

impl HandlerName {
    pub const ALL: [HandlerName; 3] = [
        HandlerName::History,
        HandlerName::Presence,
        HandlerName::Notifications,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandlerName::History => "history",
            HandlerName::Presence => "presence",
            HandlerName::Notifications => "notifications",
        }
    }

    /// The views the handler keeps (each a projection with its own directory and service).
    pub fn views(self) -> &'static [View] {
        match self {
            HandlerName::History => &[View::History],
            HandlerName::Presence => &[View::Presence],
            HandlerName::Notifications => &[View::Mentions, View::Notifications],
        }
    }
}

#[derive(Args, Clone)]
pub struct HandlerArgs {
    /// Where the handlers keep their views (one sled directory each).
    #[arg(long, env = "CHATLOG_VIEWS_DIR", default_value = "data/views")]
    pub views_dir: PathBuf,
    /// A replica name: the view lives in `<views-dir>/<handler>-<replica>`, so several replicas
    /// of one handler can run side by side, each with its own view.
    #[arg(long, env = "CHATLOG_REPLICA")]
    pub replica: Option<String>,
    /// `chatlog up`: the NATS URL (with the handlers' credentials) the handlers use; the edge's
    /// `--nats-url` when unset.
    #[arg(long, env = "CHATLOG_HANDLERS_NATS_URL", hide_env_values = true)]
    pub handlers_nats_url: Option<String>,
    /// Presence: seconds without a heartbeat before a connection is offline.
    #[arg(long, env = "CHATLOG_OFFLINE_AFTER", default_value_t = 35.0)]
    pub offline_after: f64,
    /// Presence: seconds after which typing ends without a refresh.
    #[arg(long, env = "CHATLOG_TYPING_FOR", default_value_t = 6.0)]
    pub typing_for: f64,
    /// How often, in milliseconds, handlers check what time has made due (presence timeouts).
    #[arg(long, env = "CHATLOG_TICK_MS", default_value_t = 1000)]
    pub tick_ms: u64,
}

impl HandlerArgs {
    /// The directory of one view.
    pub fn view_dir(&self, view: &str) -> PathBuf {
        match &self.replica {
            Some(r) => self.views_dir.join(format!("{view}-{r}")),
            None => self.views_dir.join(view),
        }
    }

    pub fn host_config(&self, view: &str) -> HostConfig {
        let mut config = HostConfig::new(self.view_dir(view));
        config.tick = Duration::from_millis(self.tick_ms.max(10));
        config
    }

    /// A running view's config: it reads its stream through `shared` with the process's other
    /// views of that stream.
    fn running_config(&self, view: &str, shared: &SharedReaders) -> HostConfig {
        let mut config = self.host_config(view);
        config.shared = Some(shared.clone());
        config
    }

    pub fn presence(&self) -> chatlog_presence::Presence {
        chatlog_presence::Presence {
            offline_after: Duration::from_secs_f64(self.offline_after.max(0.1)),
            typing_for: Duration::from_secs_f64(self.typing_for.max(0.1)),
        }
    }
}

/// What each view of a handler reports (metrics, readiness), by view name.
#[derive(Clone)]
pub struct ViewStats(pub Vec<(&'static str, Arc<HostStats>)>);

impl ViewStats {
    /// Fresh stats for the views of `handlers`.
    pub fn of(handlers: &[HandlerName]) -> ViewStats {
        ViewStats(
            handlers
                .iter()
                .flat_map(|h| h.views())
                .map(|view| (view.name(), Arc::new(HostStats::default())))
                .collect(),
        )
    }

    /// The stats of one view.
    fn get(&self, view: &str) -> Arc<HostStats> {
        self.0
            .iter()
            .find(|(v, _)| *v == view)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// The views not answering queries yet (still catching up to the head they saw at start).
    pub fn not_ready(&self) -> Vec<&'static str> {
        self.0
            .iter()
            .filter(|(_, s)| !s.is_ready())
            .map(|(v, _)| *v)
            .collect()
    }

    /// Prometheus text, a line per view.
    pub fn render_prometheus(&self) -> String {
        let stats: Vec<_> = self.0.iter().map(|(v, s)| (*v, &**s)).collect();
        HostStats::render_prometheus(&stats)
    }
}

/// Runs one handler until `shutdown`, reporting into `stats`; its views read their streams
/// through `shared` (one reader per stream for the handlers of a process). Its views stop
/// together: on `shutdown`, or when one of them fails.
pub async fn run(
    name: HandlerName,
    client: async_nats::Client,
    args: &HandlerArgs,
    shared: &SharedReaders,
    stats: &ViewStats,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = &stop;
    let views = name.views().iter().map(|&view| {
        let mut stopped = stopped.clone();
        let running = view.run(
            args.presence(),
            client.clone(),
            args.running_config(view.name(), shared),
            stats.get(view.name()),
            async move {
                let _ = stopped.wait_for(|v| *v).await;
            },
        );
        async move {
            let result = running.await;
            if result.is_err() {
                stop.send_replace(true);
            }
            result.map_err(|e| anyhow::anyhow!(e).context(format!("the {} view", view.name())))
        }
    });
    let all = futures::future::join_all(views);
    tokio::pin!(all, shutdown);
    let results = tokio::select! {
        results = &mut all => results,
        () = &mut shutdown => {
            stop.send_replace(true);
            all.await
        }
    };
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}

/// A handler's own HTTP listener (`chatlog handler --http`): `/livez` while the process runs,
/// `/readyz` once every view answers queries (caught up to the head it saw at start), `/metrics`.
pub fn health_routes(stats: ViewStats) -> axum::Router {
    use axum::{http::StatusCode, routing::get};
    let ready = stats.clone();
    axum::Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let not_ready = ready.not_ready();
                async move {
                    if not_ready.is_empty() {
                        (StatusCode::OK, "ready".to_string())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("catching up: {}", not_ready.join(", ")),
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = stats.render_prometheus();
                async move { prometheus(body) }
            }),
        )
}

/// Prometheus text as an answer.
pub fn prometheus(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}
