//! Clients for end-to-end tests: HTTP through reqwest (a connection per request) and WebSocket
//! frames through tokio-tungstenite, with the waits the tests need (each bounded by
//! [`PATIENCE`]).

use std::{net::SocketAddr, time::Duration};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// How long a test waits for something that should happen "at once".
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A client of one edge.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
}

/// An HTTP answer: status and JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
    /// The `Retry-After` header's value, if any.
    pub retry_after: Option<String>,
}

/// The secret the test clients claim guest `user` with.
pub fn guest_secret(user: &str) -> String {
    format!("test-secret-for-{user}")
}

impl Client {
    /// One HTTP/1.1 request (`Connection: close`), answered in full. Every request says its body
    /// is JSON, an empty one included, as the tests of bodies the edge refuses expect.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        // A client per request: each test runs its own runtime, and a pooled connection would
        // outlive the runtime that drives it.
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PATIENCE)
            .build()
            .expect("an HTTP client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = http
            .request(method, format!("http://{}{path}", self.addr))
            .header("connection", "close")
            .header("content-type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("an http answer in time");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let raw = response.bytes().await.expect("reading the answer");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            text,
            retry_after,
        }
    }

    /// `GET path` as an `EventSource` asks it (`Accept: text/event-stream`, and the extra
    /// headers, such as `Last-Event-ID`): the status, and the stream of events when it is 200.
    pub async fn event_stream(&self, path: &str, headers: &[(&str, &str)]) -> (u16, EventStream) {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
        let mut request = http
            .get(format!("http://{}{path}", self.addr))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(PATIENCE, request.send())
            .await
            .expect("an answer in time")
            .expect("an http answer");
        let status = response.status().as_u16();
        let stream = EventStream {
            response,
            buffer: String::new(),
        };
        (status, stream)
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.request("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.request("POST", path, Some(token), Some(body)).await
    }

    /// A guest token for `user`, with a secret of its own derived from the name, so that every
    /// test's first request claims the name and later ones (on any edge) log in again.
    pub async fn token(&self, user: &str) -> String {
        let answer = self
            .request(
                "POST",
                "/api/auth/guest",
                None,
                Some(json!({ "user": user, "secret": guest_secret(user) })),
            )
            .await;
        assert_eq!(answer.status, 200, "guest login: {answer:?}");
        answer.body["token"].as_str().unwrap().to_string()
    }

    /// Waits until the history view counts `user` a member of `room` (a join records it): the
    /// room is among those `GET /api/unread` counts for the user (its members' rooms).
    pub async fn wait_member(&self, room: &str, user: &str) {
        let token = self.token(user).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let unread = self.get("/api/unread", &token).await;
            let found = unread.body["rooms"].get(room).map(|_| true);
            if found == Some(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} never became a member of {room}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks `path` until `ok` holds for the answer.
    pub async fn get_until(&self, path: &str, token: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let answer = self.get(path, token).await;
            if answer.status == 200 && ok(&answer.body) {
                return answer.body;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path}: {answer:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The stored events of `room` after `since`.
    pub async fn events(&self, room: &str, since: u64, token: &str) -> Vec<Value> {
        let answer = self
            .get(
                &format!("/api/rooms/{room}/events?since={since}&limit=1000"),
                token,
            )
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body.as_array().unwrap().clone()
    }

    /// The stored message events (posted, edited, deleted, reactions) of `room` after `since`:
    /// what a client's writes append, without the joins and presence the edge records itself.
    pub async fn writes_after(&self, room: &str, since: u64, token: &str) -> Vec<Value> {
        self.events(room, since, token)
            .await
            .into_iter()
            .filter(|e| {
                let ty = e["event"]["type"].as_str().unwrap_or_default();
                ty.starts_with("chat.message.") || ty.starts_with("chat.reaction.")
            })
            .collect()
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// A WebSocket client logged in as guest `user`.
    pub async fn ws(&self, user: &str) -> Ws {
        let token = self.token(user).await;
        self.ws_with_token(&token).await
    }

    /// A WebSocket client with `token`.
    pub async fn ws_with_token(&self, token: &str) -> Ws {
        let (socket, _) = tokio_tungstenite::connect_async(self.ws_url(token))
            .await
            .expect("websocket upgrade");
        Ws { socket }
    }

    /// A client whose socket buffers are tiny, so that not reading soon backs up to the edge.
    pub async fn ws_small_buffer(&self, user: &str) -> Ws {
        let token = self.token(user).await;
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(self.addr).await.unwrap();
        let (socket, _) =
            tokio_tungstenite::client_async(self.ws_url(&token), MaybeTlsStream::Plain(tcp))
                .await
                .expect("websocket upgrade");
        Ws { socket }
    }
}

pub struct Ws {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(Option<u16>),
    Eof,
}

impl Ws {
    pub async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("sending a frame");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_string()))
            .await
            .expect("sending a frame");
    }

    /// The next JSON frame, within [`PATIENCE`].
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("a good frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// The next frame of `ty`, skipping others (e.g. events while waiting for an ack).
    pub async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == ty {
                return frame;
            }
        }
    }

    /// Joins `room` (optionally since a seq) and returns the `joined` frame's head; frames of
    /// other rooms before it are skipped.
    pub async fn join(&mut self, room: &str, since: Option<u64>) -> u64 {
        let mut frame = json!({"type": "join", "room": room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        self.send(frame).await;
        // Frames of rooms joined before (a join's own `chat.member.joined` among them) may come
        // first; an error may not.
        loop {
            let frame = self.next().await;
            assert_ne!(frame["type"], "error", "{frame}");
            if frame["type"] == "joined" {
                assert_eq!(frame["room"], room, "{frame}");
                return frame["head"].as_u64().unwrap();
            }
            assert_ne!(
                frame["room"], room,
                "a frame of {room} before joined: {frame}"
            );
        }
    }

    /// Sends `text` with a new id and returns (id, acked seq); other frames are skipped.
    pub async fn say(&mut self, room: &str, text: &str) -> (String, u64) {
        let id = uuid::Uuid::now_v7().to_string();
        self.send(json!({"type": "send", "room": room, "text": text, "id": id}))
            .await;
        loop {
            let frame = self.next().await;
            if frame["type"] == "ack" && frame["id"] == id.as_str() {
                return (id, frame["seq"].as_u64().unwrap());
            }
            assert_ne!(frame["type"], "error", "{frame}");
        }
    }

    /// The next `presence` frame of `room`, as (online, typing).
    pub async fn next_presence(&mut self, room: &str) -> (Vec<String>, Vec<String>) {
        loop {
            let frame = self.next_of("presence").await;
            if frame["room"] == room {
                let names = |v: &Value| -> Vec<String> {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|u| u.as_str().unwrap().to_string())
                        .collect()
                };
                return (names(&frame["online"]), names(&frame["typing"]));
            }
        }
    }

    /// Presence frames until one satisfies `want`.
    pub async fn presence_until(
        &mut self,
        room: &str,
        want: impl Fn(&[String], &[String]) -> bool,
    ) -> (Vec<String>, Vec<String>) {
        loop {
            let (online, typing) = self.next_presence(room).await;
            if want(&online, &typing) {
                return (online, typing);
            }
        }
    }

    /// The next `event` frame's (seq, event).
    pub async fn next_event(&mut self) -> (u64, Value) {
        let frame = self.next_of("event").await;
        (frame["seq"].as_u64().unwrap(), frame["event"].clone())
    }

    /// The next `chat.message.posted` event frame's (seq, event), skipping other room events
    /// (joins recorded as `chat.member.joined`, edits, ...).
    pub async fn next_message(&mut self) -> (u64, Value) {
        loop {
            let (seq, event) = self.next_event().await;
            if event["type"] == "chat.message.posted" {
                return (seq, event);
            }
        }
    }

    /// A ping answered by a pong: the connection is alive and usable.
    pub async fn assert_alive(&mut self) {
        self.send(json!({"type": "ping"})).await;
        let pong = self.next_of("pong").await;
        assert_eq!(pong["type"], "pong");
    }

    /// Reads until the connection ends; frames before the end are counted.
    pub async fn until_end(&mut self, within: Duration) -> (usize, Ended) {
        let mut frames = 0;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("the connection should end in time");
            match msg {
                None | Some(Err(_)) => return (frames, Ended::Eof),
                Some(Ok(Message::Close(frame))) => {
                    return (frames, Ended::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => frames += 1,
            }
        }
    }
}

/// A server-sent event: its `id`, `event` and `data` fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SentEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An open `text/event-stream` answer, read event by event.
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// The next event (comments skipped), or `None` when the stream ended; panics after
    /// [`PATIENCE`] without one.
    pub async fn next(&mut self) -> Option<SentEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SentEvent::default();
                let mut fields = 0;
                for line in block.lines() {
                    let Some((name, value)) = line.split_once(':') else {
                        continue;
                    };
                    let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                    fields += 1;
                    match name {
                        "id" => event.id = Some(value),
                        "event" => event.event = Some(value),
                        "data" => event.data.push_str(&value),
                        _ => fields -= 1, // a comment (empty name) or an unknown field
                    }
                }
                if fields > 0 {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("an event in time");
            match chunk {
                Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}
