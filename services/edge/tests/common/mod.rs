//! `spawn_app()`: an edge and the handlers, as `chatlog up` runs them, on their own real
//! nats-server, data directory and port 0. The HTTP and WebSocket clients are
//! `chatlog_test_support::client`'s (`TestApp` derefs to one). Tracing output only when
//! `TEST_LOG` is set.

#![allow(dead_code)]

pub mod files;

use std::{net::SocketAddr, time::Duration};

use chatlog_edge::{AppState, Config};
use chatlog_events::RoomId;
use chatlog_test_support::NatsServer;
use serde_json::Value;
use tokio::sync::oneshot;

#[allow(unused_imports)]
pub use chatlog_test_support::client::{Client, Ended, PATIENCE, Ws};

/// Presence timeouts, shortened (docs/protocol.md §3: 35 s and 6 s); the edge heartbeats every
/// 300 ms.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(2);
pub const TYPING_FOR: Duration = Duration::from_secs(1);

pub struct TestApp {
    pub nats: NatsServer,
    pub addr: SocketAddr,
    /// Where the line protocol is served.
    pub line: SocketAddr,
    pub client: Client,
    pub state: AppState,
    /// What the edge was started with, for another edge on the same log.
    pub config: Config,
    _data: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    stop_handlers: tokio::sync::watch::Sender<bool>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    init_tracing();
    let nats = NatsServer::start().await;
    let data = tempfile::tempdir().expect("temp data dir");
    let mut config = Config {
        nats_url: nats.url(),
        data_dir: data.path().to_path_buf(),
        jwt_secret: Some("test-secret-test-secret-test-secret!".into()),
        default_rooms: vec![RoomId::parse("lobby").unwrap()],
        ..Config::default()
    };
    config.limits.heartbeat = Duration::from_millis(300);
    // Every test client is on the loopback: the per-address limits would count them as one
    // (the tests of those limits configure them again).
    config.limits_exempt = vec!["127.0.0.0/8".parse().unwrap()];
    config.limits.typing_throttle = Duration::ZERO;
    configure(&mut config);
    let (client, reconnects) = chatlog_edge::connect(&config.nats_url, "test-edge")
        .await
        .expect("connecting to nats");
    chatlog_edge::ensure_streams(&client, &config.streams, PATIENCE)
        .await
        .expect("ensuring streams");
    let state = chatlog_edge::state(config.clone(), client, reconnects)
        .await
        .expect("building state");
    chatlog_edge::ensure_default_rooms(&state)
        .await
        .expect("creating the default room");
    // The handlers, as `chatlog up` runs them beside the edge (presence with short timeouts).
    let (stop_handlers, handlers_stopped) = tokio::sync::watch::channel(false);
    let client = state.log.client().clone();
    let views = data.path().join("views");
    let host = |name: &str| {
        let mut config = chatlog_runtime::HostConfig::new(views.join(name));
        config.tick = Duration::from_millis(50);
        config
    };
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let presence = chatlog_presence::Presence {
        offline_after: OFFLINE_AFTER,
        typing_for: TYPING_FOR,
    };
    let mut hosted = Vec::new();
    for view in chatlog_views::View::ALL {
        let stats = std::sync::Arc::new(chatlog_runtime::HostStats::default());
        hosted.push(stats.clone());
        tokio::spawn(view.run(
            presence,
            client.clone(),
            host(view.name()),
            stats,
            until(handlers_stopped.clone()),
        ));
    }
    // As `chatlog up`'s /readyz: every view answers queries.
    chatlog_test_support::eventually("every view ready", PATIENCE, async || {
        hosted.iter().all(|s| s.is_ready()).then_some(())
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = futures::FutureExt::shared(async move {
        let _ = stopped.await;
    });
    let line_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let line = line_listener.local_addr().unwrap();
    tokio::spawn(chatlog_edge::line::serve(
        state.clone(),
        line_listener,
        stopped.clone(),
    ));
    tokio::spawn(chatlog_edge::serve(state.clone(), listener, stopped));
    TestApp {
        nats,
        addr,
        line,
        client: Client { addr },
        state,
        config,
        _data: data,
        stop: Some(stop),
        stop_handlers,
    }
}

fn init_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,async_nats=info"))
            .with_test_writer()
            .try_init();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.stop_handlers.send_replace(true);
    }
}

impl std::ops::Deref for TestApp {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl TestApp {
    /// The events stored on `subject` of `stream`, raw from the log.
    pub async fn stored(&self, stream: chatlog_events::Stream, subject: &str) -> Vec<Value> {
        let head = self.state.log.last_seq(stream, subject).await.unwrap();
        if head == 0 {
            return Vec::new();
        }
        self.state
            .log
            .read(stream, subject, 1, head, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|m| serde_json::from_slice(&m.body).unwrap())
            .collect()
    }

    /// Another edge on the same log (the same token secret), served until the test ends.
    pub async fn another_edge(&self) -> Client {
        let (client, reconnects) = chatlog_edge::connect(&self.config.nats_url, "test-edge-2")
            .await
            .expect("connecting to nats");
        // Returns once connected (the streams exist already).
        chatlog_edge::ensure_streams(&client, &self.config.streams, PATIENCE)
            .await
            .expect("ensuring streams");
        let state = chatlog_edge::state(self.config.clone(), client, reconnects)
            .await
            .expect("building state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(chatlog_edge::serve(state, listener, std::future::pending()));
        Client { addr }
    }

    /// Starts the edge's graceful shutdown (as SIGTERM does): every socket closes with 1001.
    pub fn shut_down_edge(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the history view has applied the room log up to `seq`.
    pub async fn history_caught_up(&self, seq: u64) {
        let client = self.state.log.client();
        let what = format!("the history view at seq {seq}");
        chatlog_test_support::eventually(what, PATIENCE, async || {
            let answer = client
                .request("views.history.checksum", "{}".into())
                .await
                .ok()
                .and_then(|m| serde_json::from_slice::<Value>(&m.payload).ok());
            answer
                .is_some_and(|a| a["checkpoint"].as_u64().unwrap_or(0) >= seq)
                .then_some(())
        })
        .await;
    }
}
