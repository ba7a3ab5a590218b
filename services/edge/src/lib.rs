//! `chatlog-edge`: the only component that talks to clients.
//!
//! It serves the HTTP API and the WebSocket protocol (`docs/protocol.md`), validates everything a
//! client sends before it can touch a subject, appends events to JetStream ([`log`]) and fans the
//! room log back out to its sockets ([`hub`], [`ws`]). It keeps nothing that matters: any edge
//! can serve any client, and a restarted edge has lost nothing.
//!
//! [`run`] is the whole component; [`app`] is its router, for tests that drive it directly.

pub mod accounts;
pub mod address;
pub mod auth;
pub mod cors;
pub mod decide;
pub mod error;
pub mod files;
pub mod frames;
pub mod http;
pub mod hub;
pub mod inbox;
pub mod limits;
pub mod line;
pub mod log;
pub mod messages;
pub mod metrics;
pub mod openapi;
pub mod rooms;
pub mod served;
pub mod sse;
pub mod users;
pub mod views;
pub mod web;
pub mod ws;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use chatlog_events::{RoomId, UserId, streams};
use tokio::{net::TcpListener, sync::watch};

pub use limits::Limits;

/// Everything the edge is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    /// Where the generated token secret is kept when none is configured.
    pub data_dir: PathBuf,
    /// HS256 secret for tokens; when `None`, one is generated once under `data_dir`.
    pub jwt_secret: Option<String>,
    pub token_ttl: Duration,
    pub allow_guests: bool,
    /// Ids nobody may take, beside the system's own ([`accounts::RESERVED`]).
    pub reserved_ids: Vec<String>,
    /// Public rooms created at start when missing (`lobby` for `make up`).
    pub default_rooms: Vec<RoomId>,
    pub limits: Limits,
    pub streams: streams::StreamSettings,
    /// More Prometheus text for `/metrics` (the handlers running in the same process).
    pub extra_metrics: metrics::Sources,
    /// More conditions of `/readyz` (the handlers running in the same process).
    pub extra_ready: metrics::ReadyChecks,
    /// Origins (`scheme://host[:port]`) of browser pages hosted elsewhere: answered with CORS
    /// headers ([`cors`]), and let open WebSockets (beside the edge's own origin and localhost,
    /// which need no CORS).
    pub cors_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (the client's address for per-address limits).
    pub trusted_proxies: Vec<limits::Cidr>,
    /// Client addresses exempt from the per-address limits (load generators on a trusted
    /// network); per-user limits still apply to them.
    pub limits_exempt: Vec<limits::Cidr>,
    /// Where to serve the line protocol ([`line`]), if anywhere.
    pub line: Option<String>,
    /// How often this edge sweeps the files bucket ([`files::sweep`]; zero: never).
    pub files_sweep: Duration,
    /// How long a file no live message names is kept after its last upload.
    pub files_unattached: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            data_dir: PathBuf::from("data"),
            jwt_secret: None,
            token_ttl: Duration::from_secs(24 * 3600),
            allow_guests: true,
            reserved_ids: Vec::new(),
            default_rooms: Vec::new(),
            limits: Limits::default(),
            streams: streams::StreamSettings::default(),
            extra_metrics: metrics::Sources::default(),
            extra_ready: metrics::ReadyChecks::default(),
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            limits_exempt: Vec::new(),
            line: None,
            files_sweep: Duration::from_secs(3600),
            files_unattached: Duration::from_secs(86_400),
        }
    }
}

/// Shared state of the edge; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub log: log::Log,
    pub hub: hub::Hub,
    pub rooms: rooms::Directory,
    /// The views' query services (history, ...).
    pub views: views::Views,
    /// The files bucket (`CHAT_FILES`).
    pub files: files::Files,
    /// This edge's connections by user, fed by one subscription to users' live events.
    pub users: Arc<users::UserFeeds>,
    pub auth: auth::Auth,
    /// Who holds each name seen by this edge (an account or a guest).
    pub accounts: accounts::Registry,
    pub metrics: metrics::Metrics,
    /// Per-user (and per-account) budgets: appends, typing/join/leave, room creation, failed
    /// logins; shared by every connection and route of the user on this edge.
    pub budgets: limits::Budgets,
    /// Password hashes computed at once: a login flood queues here instead of holding the CPU
    /// and a hash's memory per login.
    pub hashing: tokio::sync::Semaphore,
    /// Flips to true when the edge shuts down: every connection closes with 1001.
    pub shutdown: watch::Sender<bool>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The router: every route of the protocol the edge serves. Each route's handler carries its
/// `#[utoipa::path]` and is listed in [`openapi::ApiDoc`] (tests/openapi.rs checks both ways);
/// the web client's files ([`web`]) are not API.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.limits.max_frame_bytes;
    Router::new()
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/ws", get(ws::upgrade))
        .route("/api/auth/guest", post(http::guest))
        .route("/api/auth/register", post(http::register))
        .route("/api/auth/login", post(http::login))
        .route("/api/rooms", get(http::list_rooms).post(http::create_room))
        .route(
            "/api/rooms/{room}/messages",
            get(http::room_messages).post(http::post_message),
        )
        .route("/api/rooms/{room}/events", get(http::room_events))
        .route("/api/rooms/{room}/stream", get(sse::stream))
        .route("/api/rooms/{room}/presence", get(http::room_presence))
        .route(
            "/api/rooms/{room}/files",
            post(files::upload).layer(files::unlimited_body()),
        )
        .route("/api/files/{id}", get(files::download))
        .route("/api/files/{id}/meta", get(files::meta))
        .route("/api/rooms/{room}/members", post(http::add_member))
        .route(
            "/api/rooms/{room}/members/{user}",
            axum::routing::delete(http::remove_member),
        )
        .route("/api/notifications", get(http::list_notifications))
        .route("/api/notifications/read", post(http::read_notifications))
        .route("/api/unread", get(http::unread))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/docs", get(openapi::page))
        .merge(web::router())
        .fallback(http::fallback)
        // After every route: a wrong method gets a JSON 405 on all of them (with `Allow`).
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::middleware,
        ))
        .with_state(state)
}

/// Connects to NATS. The client reconnects by itself, for ever; `reconnects` is bumped on every
/// (re)connection so the room feeds can catch up on what they missed.
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<(async_nats::Client, watch::Receiver<u64>), async_nats::ConnectError> {
    let (tx, rx) = watch::channel(0u64);
    let (options, addrs) = connect_options(url).map_err(|e| {
        async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e)
    })?;
    let client = options
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64).saturating_mul(100).min(2000))
        })
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("nats connected");
                        tx.send_modify(|n| *n += 1);
                    }
                    async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                    other => tracing::debug!(event = %other, "nats event"),
                }
            }
        })
        .connect(addrs)
        .await?;
    Ok((client, rx))
}

pub use chatlog_events::nats::connect_options;

/// How long the edge waits at start for NATS and the streams before it gives up.
pub const STREAMS_PATIENCE: Duration = Duration::from_secs(60);

/// Stream replicas for `client`'s deployment: 3 on a cluster, else 1. A server in a cluster
/// names it in its INFO even when it advertises no peers (`no_advertise`, as the official Helm
/// chart runs it), so the cluster's size is not what decides: JetStream clusters have three
/// servers or more. `chatlog setup --replicas N` says so explicitly.
pub fn auto_replicas(client: &async_nats::Client) -> usize {
    let info = client.server_info();
    if info.cluster.as_deref().is_some_and(|c| !c.is_empty()) || info.connect_urls.len() >= 3 {
        3
    } else {
        1
    }
}

/// Creates or updates the streams, retrying while NATS is not reachable yet: `chatlog setup`,
/// with credentials that may (admin). Replicas 0 means [`auto_replicas`].
pub async fn ensure_streams(
    client: &async_nats::Client,
    settings: &streams::StreamSettings,
    patience: Duration,
) -> Result<Vec<(&'static str, streams::Ensured)>, streams::EnsureError> {
    let js = async_nats::jetstream::new(client.clone());
    let until = tokio::time::Instant::now() + patience;
    loop {
        let settings = resolved(&js, client, settings).await;
        match streams::ensure(&js, &settings).await {
            Ok(done) => {
                for (stream, what) in &done {
                    tracing::debug!(stream = *stream, outcome = ?what, "stream ensured");
                }
                return Ok(done);
            }
            Err(e) if tokio::time::Instant::now() < until => {
                tracing::warn!(error = %e, "streams not ready, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The streams missing after `patience`.
#[derive(Debug, thiserror::Error)]
#[error(
    "stream {0} does not exist: run `chatlog setup` with credentials that may create streams (make up does)"
)]
pub struct StreamsMissing(pub &'static str);

/// Waits until every stream exists, without creating or changing any: the edge's and the
/// handlers' NATS users may not (least privilege; `chatlog setup` does it). A stream configured
/// otherwise than this version would is logged, not fatal.
pub async fn await_streams(
    client: &async_nats::Client,
    settings: &streams::StreamSettings,
    patience: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    await_streams_and(client, settings, patience, true).await
}

/// [`await_streams`] for a component that reads the log but serves no file (the functions
/// runtime): the files bucket is not its to wait for, nor its NATS user's to read.
pub async fn await_log_streams(
    client: &async_nats::Client,
    settings: &streams::StreamSettings,
    patience: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    await_streams_and(client, settings, patience, false).await
}

async fn await_streams_and(
    client: &async_nats::Client,
    settings: &streams::StreamSettings,
    patience: Duration,
    files_too: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let js = async_nats::jetstream::new(client.clone());
    let until = tokio::time::Instant::now() + patience;
    let mut said = false;
    loop {
        let settings = resolved(&js, client, settings).await;
        let checked = match streams::check(&js, &settings).await {
            Ok(found) if files_too => streams::files_exist(&js).await.map(|files| (found, files)),
            Ok(found) => Ok((found, true)),
            Err(e) => Err(e),
        };
        let missing = match checked {
            Ok((found, files)) => {
                let missing = found
                    .iter()
                    .find(|(_, c)| *c == streams::Checked::Missing)
                    .map(|(s, _)| s.name())
                    // The edge serves files too: it needs their bucket (the handlers do not).
                    .or((!files).then_some(streams::FILES_BUCKET));
                if missing.is_none() {
                    for (stream, _) in found
                        .iter()
                        .filter(|(_, c)| *c == streams::Checked::Differs)
                    {
                        tracing::warn!(
                            stream = stream.name(),
                            "stream configured otherwise than this version expects: run `chatlog setup`"
                        );
                    }
                    return Ok(());
                }
                missing
            }
            Err(e) if tokio::time::Instant::now() < until => {
                tracing::warn!(error = %e, "streams not readable yet, retrying");
                None
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(stream) = missing {
            if tokio::time::Instant::now() >= until {
                return Err(StreamsMissing(stream).into());
            }
            if !said {
                tracing::warn!(stream, "waiting for the streams: run `chatlog setup`");
                said = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `settings` with replicas 0 replaced by [`auto_replicas`].
async fn resolved(
    js: &async_nats::jetstream::Context,
    client: &async_nats::Client,
    settings: &streams::StreamSettings,
) -> streams::StreamSettings {
    let mut settings = settings.clone();
    if settings.replicas == 0 {
        // The server's INFO (and so the cluster's size) is known once connected.
        let _ = js.query_account().await;
        settings.replicas = auto_replicas(client);
    }
    settings
}

/// Builds the edge's state on a NATS connection.
pub async fn state(
    config: Config,
    client: async_nats::Client,
    reconnects: watch::Receiver<u64>,
) -> std::io::Result<AppState> {
    let secret = match &config.jwt_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => auth::load_or_create_secret(&config.data_dir)?,
    };
    let log = log::Log::new(client, config.limits.nats_deadline);
    let views = views::Views::new(log.client().clone(), config.limits.nats_deadline);
    let hub = hub::Hub::new(
        log.clone(),
        views.clone(),
        reconnects,
        config.limits.nats_deadline,
    );
    Ok(AppState(Arc::new(Inner {
        auth: auth::Auth::new(&secret, config.token_ttl),
        accounts: accounts::Registry::default(),
        rooms: rooms::Directory::new(log.clone()),
        users: users::UserFeeds::start(log.clone()),
        views,
        files: files::Files::new(log.clone(), config.limits.nats_deadline),
        metrics: metrics::Metrics::default(),
        budgets: limits::Budgets::new(&config.limits),
        hashing: tokio::sync::Semaphore::new(config.limits.concurrent_hashes.max(1)),
        shutdown: watch::Sender::new(false),
        hub,
        log,
        config,
    })))
}

/// Creates the configured default rooms that do not exist yet.
pub async fn ensure_default_rooms(state: &AppState) -> Result<(), error::ApiError> {
    let system = UserId::parse("chatlog").map_err(error::ApiError::internal)?;
    for room in &state.config.default_rooms {
        if state.rooms.get(room).await?.is_some() {
            continue;
        }
        let new = rooms::NewRoom {
            id: room.clone(),
            name: room.to_string(),
            topic: String::new(),
            private: false,
            members: Vec::new(),
        };
        match state.rooms.create(&system, new).await {
            Ok(_) => tracing::info!(room = %room, "created default room"),
            Err(e) if e.code == error::Code::Conflict => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves `state` on `listener` until `shutdown` resolves, then closes every socket with 1001.
///
/// Its own accept loop rather than `axum::serve`, for the timeouts: a request head must arrive
/// within [`Limits::request_head`] (a client trickling bytes, or idling on a kept-alive
/// connection, holds nothing for longer).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto::Builder, graceful::GracefulShutdown},
        service::TowerToHyperService,
    };
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(addr = %local, "edge listening");
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.limits.request_head);
    let router = app(state.clone());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        // Chat frames are small: do not let Nagle hold them back.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "setting TCP_NODELAY failed");
        }
        let service = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    // The flag first: a connection registering after the kicks below sees it.
    state.shutdown.send_replace(true);
    state.users.kick_all(hub::KickReason::Shutdown);
    drop(listener);
    // Connections end once kicked; one still waiting on NATS (an append's retries, a catch-up's
    // reads) is not waited for past the bound: its client retries, or resumes with `since`.
    if tokio::time::timeout(DRAIN_PATIENCE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            patience = ?DRAIN_PATIENCE,
            "connections still open after the drain: closed without waiting (their clients resume with since)"
        );
    }
    Ok(())
}

/// The next connection on `listener`. A failure to accept (out of descriptors and the like)
/// is logged and waited out rather than spun on.
pub(crate) async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How long a stopping edge waits for its connections to end.
pub const DRAIN_PATIENCE: Duration = Duration::from_secs(5);

/// The whole edge: connect, wait for the streams, ensure the default rooms, serve until
/// `shutdown`. Asked to stop while starting (NATS not there yet, say), it stops at once.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use futures::FutureExt as _;
    let shutdown = shutdown.boxed().shared();
    let line = match &config.line {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("binding the line protocol's address {addr}: {e}"))?,
        ),
        None => None,
    };
    let started = async {
        let (client, reconnects) = connect(&config.nats_url, "chatlog-edge").await?;
        await_streams(&client, &config.streams, STREAMS_PATIENCE).await?;
        let state = state(config, client, reconnects).await?;
        ensure_default_rooms(&state)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(state)
    };
    let state = tokio::select! {
        () = shutdown.clone() => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
        state = started => state?,
    };
    if let Some(line) = line {
        tokio::spawn(line::serve(state.clone(), line, shutdown.clone()));
    }
    tokio::spawn(files::sweep::every(state.clone(), shutdown.clone()));
    serve(state, listener, shutdown).await?;
    Ok(())
}
