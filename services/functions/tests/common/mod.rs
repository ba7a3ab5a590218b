//! The functions' test bench: a real nats-server with the streams, the runtime in a task, and
//! HTTP functions served by axum on port 0 that record what they get and answer as told.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, Response, StatusCode},
};
use chatlog_events::{
    ChatEvent, Payload, RoomId, UserId,
    event::{MessagePosted, RoomCreated},
    functions::{FunctionName, FunctionSpec, Source},
    streams::{self, StreamSettings},
};
use chatlog_functions::{Config, Stats};
use chatlog_test_support::NatsServer;
use futures::StreamExt;
use tokio::sync::watch;

pub const SECRET: &str = "a secret of the tests";

pub struct Bench {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

impl Bench {
    pub async fn start() -> Self {
        Self::on(NatsServer::start().await, None).await
    }

    /// A bench on `nats`, as `admin` (user, password) when it requires a login.
    pub async fn on(nats: NatsServer, admin: Option<(&str, &str)>) -> Self {
        let url = match admin {
            Some((u, p)) => nats.url_as(u, p),
            None => nats.url(),
        };
        let client = chatlog_test_support::connect(&url).await.unwrap();
        let js = jetstream::new(client.clone());
        streams::ensure(&js, &StreamSettings::default())
            .await
            .unwrap();
        for room in ["lobby", "dev", "ops"] {
            create_room(&js, room, false).await;
        }
        create_room(&js, "secret", true).await;
        Self { nats, client, js }
    }

    /// Starts the runtime with the tests' quick timings.
    pub async fn runtime(&self) -> Runtime {
        self.runtime_with(quick()).await
    }

    pub async fn runtime_with(&self, config: Config) -> Runtime {
        Runtime::start(self.client.clone(), config).await
    }

    /// Registers `name` for `lobby`'s messages (or `subject`'s).
    pub async fn register(&self, name: &str, hook: &Hook, subject: &str, types: &[&str]) {
        let spec = FunctionSpec {
            url: hook.url(),
            secret: SECRET.into(),
            stream: Source::Rooms,
            subject: subject.into(),
            types: types.iter().map(|t| t.to_string()).collect(),
            moderates: vec![],
        };
        chatlog_functions::registry::register(
            &self.js,
            FunctionName::parse(name).unwrap(),
            spec,
            false,
        )
        .await
        .unwrap();
    }

    /// A user's message, as the edge appends it: its stream sequence and the event.
    pub async fn post(&self, room: &str, user: &str, text: &str) -> (u64, ChatEvent) {
        let event = ChatEvent::in_room(
            &RoomId::parse(room).unwrap(),
            UserId::parse(user).unwrap(),
            "edge",
            Payload::MessagePosted(MessagePosted {
                text: text.into(),
                mentions: vec![],
                reply_to: None,
                attachments: Vec::new(),
            }),
        );
        let seq = append(&self.js, &event).await;
        (seq, event)
    }

    /// Every event stored on `subject`, in order.
    pub async fn stored(&self, subject: &str) -> Vec<(u64, async_nats::HeaderMap, Bytes)> {
        stored(&self.js, subject).await
    }

    /// The events of `room` that functions appended.
    pub async fn answers(&self, room: &str) -> Vec<ChatEvent> {
        self.stored(&format!("chat.room.{room}"))
            .await
            .into_iter()
            .filter_map(|(_, _, body)| ChatEvent::decode(&body).ok())
            .filter(|e| e.component.starts_with("function/"))
            .collect()
    }

    /// Every replica's stats of `name`, added up as the CLI does (one replica in these tests).
    pub async fn stats(&self, name: &str) -> serde_json::Value {
        let answer = self
            .client
            .request(chatlog_functions::stats::SUBJECT, Bytes::new())
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
        v["functions"][name].clone()
    }
}

pub async fn create_room(js: &jetstream::Context, room: &str, private: bool) {
    let event = ChatEvent::in_room(
        &RoomId::parse(room).unwrap(),
        UserId::parse("ada").unwrap(),
        "edge",
        Payload::RoomCreated(RoomCreated {
            name: room.into(),
            topic: String::new(),
            private,
            members: if private {
                vec![UserId::parse("ada").unwrap()]
            } else {
                vec![]
            },
        }),
    );
    append(js, &event).await;
}

pub async fn append(js: &jetstream::Context, event: &ChatEvent) -> u64 {
    let encoded = event.encode().unwrap();
    js.publish_with_headers(encoded.subject, encoded.headers, encoded.body)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

pub async fn stored(
    js: &jetstream::Context,
    subject: &str,
) -> Vec<(u64, async_nats::HeaderMap, Bytes)> {
    let stream_name = chatlog_events::Stream::of_subject(subject).unwrap().name();
    let mut stream = js.get_stream(stream_name).await.unwrap();
    if stream.info().await.unwrap().state.messages == 0 {
        return vec![];
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: subject.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(300), messages.next()).await;
        let Ok(Some(Ok(m))) = next else { break };
        let info = m.info().unwrap();
        let (seq, pending) = (info.stream_sequence, info.pending);
        out.push((
            seq,
            m.headers.clone().unwrap_or_default(),
            m.payload.clone(),
        ));
        if pending == 0 {
            break;
        }
    }
    out
}

/// Timings for tests: quick retries, a short ack wait and pin.
pub fn quick() -> Config {
    Config {
        tries: 3,
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        ack_wait: Duration::from_secs(2),
        pin_timeout: Duration::from_secs(3),
        replica: "test".into(),
        ..Config::default()
    }
}

/// The runtime in a task of its own.
pub struct Runtime {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), chatlog_functions::Error>>,
}

impl Runtime {
    pub async fn start(client: async_nats::Client, config: Config) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(chatlog_functions::run(
            client,
            config,
            Stats::default(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        Self { stop, task }
    }

    /// Asks it to stop and waits: what it held goes back.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the runtime stops within 10 s")
            .unwrap()
            .unwrap();
    }

    /// Ends it as a crash would: nothing given back.
    pub fn crash(self) {
        self.task.abort();
    }
}

/// One call a hook got.
#[derive(Debug, Clone)]
pub struct Call {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn id(&self) -> &str {
        self.header("ce-id")
    }

    pub fn data(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    pub fn text(&self) -> String {
        self.data()["text"].as_str().unwrap_or("").to_string()
    }
}

type Answerer = dyn Fn(&Call) -> Response<Body> + Send + Sync;

/// An HTTP function: records every call and answers with `answer`.
pub struct Hook {
    pub calls: Arc<Mutex<Vec<Call>>>,
    answer: Arc<Answerer>,
    addr: SocketAddr,
    shutdown: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    /// A pause before answering (a slow function).
    pub delay: Arc<Mutex<Duration>>,
}

impl Hook {
    pub async fn start(answer: impl Fn(&Call) -> Response<Body> + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut hook = Hook {
            calls: Default::default(),
            answer: Arc::new(answer),
            addr: listener.local_addr().unwrap(),
            shutdown: None,
            delay: Default::default(),
        };
        hook.serve(listener);
        hook
    }

    /// A function that answers 200 with no body.
    pub async fn ok() -> Self {
        Self::start(|_| empty(StatusCode::OK)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Texts of the calls, in order.
    pub fn texts(&self) -> Vec<String> {
        self.calls().iter().map(Call::text).collect()
    }

    pub async fn wait_calls(&self, n: usize, within: Duration) -> Vec<Call> {
        chatlog_test_support::eventually(
            format!("{n} calls at {}", self.url()),
            within,
            // Counted under the lock: a clone of every call each turn would cost the runtime.
            async || (self.calls.lock().unwrap().len() >= n).then_some(()),
        )
        .await;
        self.calls()
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let calls = self.calls.clone();
        let answer = self.answer.clone();
        let delay = self.delay.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let calls = calls.clone();
                let answer = answer.clone();
                let delay = *delay.lock().unwrap();
                async move {
                    let call = Call { headers, body };
                    calls.lock().unwrap().push(call.clone());
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    answer(&call)
                }
            }),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        self.shutdown = Some((tx, task));
    }

    /// Stops listening and closes its connections: calls fail until [`Hook::resume`].
    pub async fn stop(&mut self) {
        if let Some((tx, task)) = self.shutdown.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

pub fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::empty())
        .unwrap()
}

/// A binary-mode answer: a message `text` (into `room` when given).
pub fn say(text: &str, room: Option<&str>) -> Response<Body> {
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header("ce-specversion", "1.0")
        .header("ce-id", "answer")
        .header("ce-source", "/test")
        .header("ce-type", "chat.message.posted")
        .header("content-type", "application/json");
    if let Some(room) = room {
        r = r.header("ce-subject", room);
    }
    r.body(Body::from(serde_json::json!({ "text": text }).to_string()))
        .unwrap()
}
