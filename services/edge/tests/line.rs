//! The line protocol (docs/protocol.md §7) with a real TCP client, beside WebSocket clients of
//! the same edge, on a real nats-server.

mod common;

use std::{net::SocketAddr, time::Duration};

use chatlog_test_support::client::guest_secret;
use common::{PATIENCE, spawn_app, spawn_app_with};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpSocket, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

/// A `nc`: lines out, lines in.
struct Nc {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Nc {
    async fn connect(addr: SocketAddr) -> Self {
        Self::on(TcpStream::connect(addr).await.expect("connecting")).await
    }

    async fn on(tcp: TcpStream) -> Self {
        let (read, write) = tcp.into_split();
        let mut nc = Self {
            lines: BufReader::new(read).lines(),
            write,
        };
        let greeting = nc.next().await;
        assert!(greeting.starts_with("OK chatlog"), "{greeting}");
        nc
    }

    /// Connected and logged in as guest `user` (with the secret the test clients use, so the
    /// WebSocket clients of the tests are the same user).
    async fn login(addr: SocketAddr, user: &str) -> Self {
        let mut nc = Self::connect(addr).await;
        nc.send(&format!("LOGIN {user} {}", guest_secret(user)))
            .await;
        assert_eq!(nc.next().await, format!("OK login {user}"));
        nc
    }

    async fn send(&mut self, line: &str) {
        self.send_bytes(format!("{line}\n").as_bytes()).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.expect("writing a line");
    }

    async fn next(&mut self) -> String {
        match tokio::time::timeout(PATIENCE, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("no line: {other:?}"),
        }
    }

    /// The next line that starts with `prefix`, skipping others (presence comes and goes).
    async fn next_starting(&mut self, prefix: &str) -> String {
        loop {
            let line = self.next().await;
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// `JOIN room [since]`, answered `JOINED room head`: the head.
    async fn join(&mut self, room: &str, since: Option<u64>) -> u64 {
        match since {
            Some(since) => self.send(&format!("JOIN {room} {since}")).await,
            None => self.send(&format!("JOIN {room}")).await,
        }
        let joined = self.next_starting("JOINED").await;
        let head = joined.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(joined, format!("JOINED {room} {head}"));
        head
    }
}

/// `MSG room seq user text` as (seq, user, text).
fn msg(line: &str) -> (u64, String, String) {
    let mut parts = line.splitn(5, ' ');
    assert_eq!(parts.next(), Some("MSG"), "{line}");
    let _room = parts.next().unwrap();
    let seq = parts.next().unwrap().parse().unwrap();
    let user = parts.next().unwrap().to_string();
    (seq, user, parts.next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_line_client_and_a_websocket_client_chat_in_one_room() {
    let app = spawn_app().await;
    let mut nc = Nc::login(app.line, "ada").await;
    nc.join("lobby", None).await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;

    nc.send("MSG lobby hello from nc").await;
    let sent = nc.next_starting("OK sent").await;
    let (seq, event) = bob.next_message().await;
    assert_eq!(sent, format!("OK sent {seq}"));
    assert_eq!(event["data"]["user"], "ada");
    assert_eq!(event["data"]["text"], "hello from nc");
    // Its own message comes back to it, as to every member of the room.
    let echo = nc.next_starting("MSG").await;
    assert_eq!(echo, format!("MSG lobby {seq} ada hello from nc"));

    let (id, seq) = bob.say("lobby", "hi nc\nhow are you").await;
    let line = nc.next_starting("MSG").await;
    assert_eq!(line, format!("MSG lobby {seq} bob hi nc\\nhow are you"));
    // Edits and deletes name the message by its seq.
    bob.send(json!({"type": "edit", "room": "lobby", "message_id": id, "text": "fine"}))
        .await;
    assert_eq!(
        nc.next_starting("EDIT").await,
        format!("EDIT lobby {seq} bob fine")
    );
    bob.send(json!({"type": "delete", "room": "lobby", "message_id": id}))
        .await;
    assert_eq!(nc.next_starting("DEL").await, format!("DEL lobby {seq}"));

    // A bare line goes to the room joined last.
    nc.send("just typing here").await;
    let sent = nc.next_starting("OK sent").await;
    let (seq, event) = loop {
        let (seq, event) = bob.next_message().await;
        if event["data"]["user"] == "ada" {
            break (seq, event);
        }
    };
    assert_eq!(sent, format!("OK sent {seq}"));
    assert_eq!(event["data"]["text"], "just typing here");

    nc.send("WHO lobby").await;
    let who = nc.next_starting("OK who").await;
    assert!(who.starts_with("OK who lobby "), "{who}");
    assert!(who.contains("ada") && who.contains("bob"), "{who}");
    nc.send("ROOMS").await;
    assert_eq!(nc.next_starting("OK rooms").await, "OK rooms lobby");
    nc.send("LEAVE lobby").await;
    assert_eq!(nc.next_starting("OK left").await, "OK left lobby");
    nc.send("after leaving").await;
    let refused = nc.next_starting("ERR").await;
    assert!(
        refused.starts_with("ERR bad_request join a room first"),
        "{refused}"
    );
}

/// Posts `n` messages to `room` as `user` over HTTP: their seqs.
async fn post_many(app: &common::TestApp, user: &str, room: &str, n: usize) -> Vec<u64> {
    let token = app.token(user).await;
    let mut seqs = Vec::new();
    for i in 0..n {
        let path = format!("/api/rooms/{room}/messages");
        let answer = app
            .post(&path, &token, json!({"text": format!("m{i}")}))
            .await;
        assert_eq!(answer.status, 201, "{answer:?}");
        seqs.push(answer.body["seq"].as_u64().unwrap());
    }
    seqs
}

/// The `MSG` lines before the one whose text is `marker` (posted after the join: it comes
/// after everything the join caught up with).
async fn messages_until(nc: &mut Nc, marker: &str) -> Vec<(u64, String, String)> {
    let mut got = Vec::new();
    loop {
        let message = msg(&nc.next_starting("MSG").await);
        if message.2 == marker {
            return got;
        }
        got.push(message);
    }
}

#[tokio::test]
async fn a_join_shows_the_last_20_messages_and_a_rejoin_with_since_misses_nothing() {
    let app = spawn_app_with(|c| {
        c.limits.sends_per_second = 10_000.0;
        c.limits.send_burst = 10_000.0;
    })
    .await;
    let posted = post_many(&app, "bob", "lobby", 25).await;
    let mut nc = Nc::login(app.line, "ada").await;
    nc.join("lobby", None).await;
    let token = app.token("bob").await;
    let marker = app
        .post(
            "/api/rooms/lobby/messages",
            &token,
            json!({"text": "marker"}),
        )
        .await;
    let shown = messages_until(&mut nc, "marker").await;
    let seqs: Vec<u64> = shown.iter().map(|m| m.0).collect();
    assert_eq!(seqs, posted[5..], "the last 20 messages, in order, once");
    assert_eq!(shown[0].2, "m5");
    assert!(shown.iter().all(|m| m.1 == "bob"));

    // Away: the last seq seen, then three messages, then back with `since`.
    let since = marker.body["seq"].as_u64().unwrap();
    nc.send("QUIT").await;
    let missed = post_many(&app, "bob", "lobby", 3).await;
    let mut nc = Nc::login(app.line, "ada").await;
    nc.join("lobby", Some(since)).await;
    app.post(
        "/api/rooms/lobby/messages",
        &token,
        json!({"text": "marker 2"}),
    )
    .await;
    let caught_up: Vec<u64> = messages_until(&mut nc, "marker 2")
        .await
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(caught_up, missed, "exactly what it missed");
}

#[tokio::test]
async fn bad_lines_get_clear_errors_keep_the_connection_and_append_nothing() {
    let app = spawn_app().await;
    let mut nc = Nc::connect(app.line).await;
    for before_login in ["JOIN lobby", "MSG lobby hi", "hello there"] {
        nc.send(before_login).await;
        let answer = nc.next().await;
        assert!(
            answer.starts_with("ERR unauthorized log in first"),
            "{answer}"
        );
    }
    nc.send("LOGIN").await;
    assert!(nc.next().await.starts_with("ERR bad_request usage: LOGIN"));
    nc.send("LOGIN Not-An-Id").await;
    assert!(nc.next().await.starts_with("ERR bad_request"));
    nc.send(&format!("LOGIN ada {}", guest_secret("ada"))).await;
    assert_eq!(nc.next().await, "OK login ada");

    let head = app
        .state
        .log
        .room_head(&"lobby".parse().unwrap())
        .await
        .unwrap();
    nc.send(&"x".repeat(5000)).await;
    assert_eq!(
        nc.next().await,
        "ERR bad_request line longer than 4096 bytes: skipped"
    );
    nc.send_bytes(b"MSG lobby caf\xe9\n").await;
    assert_eq!(
        nc.next().await,
        "ERR bad_request line is not UTF-8: skipped"
    );
    nc.send("/frobnicate now").await;
    assert!(
        nc.next()
            .await
            .starts_with("ERR bad_request unknown command FROBNICATE")
    );
    nc.send("JOIN lobby soon").await;
    assert!(nc.next().await.starts_with("ERR bad_request usage: JOIN"));
    nc.send("no room joined yet").await;
    assert!(
        nc.next()
            .await
            .starts_with("ERR bad_request join a room first")
    );
    nc.send("MSG lobby    ").await;
    assert!(nc.next().await.starts_with("ERR bad_request"));
    nc.send(&format!("MSG lobby {}", "y".repeat(4001))).await;
    assert!(nc.next().await.starts_with("ERR too_large"));
    nc.send("MSG lobby bidi \u{202e}override").await;
    assert!(nc.next().await.starts_with("ERR bad_request"));
    nc.send("JOIN Not-A-Room").await;
    assert!(nc.next().await.starts_with("ERR bad_request"));
    nc.send("LOGIN bob").await;
    assert_eq!(nc.next().await, "ERR bad_request logged in already");
    assert_eq!(
        app.state
            .log
            .room_head(&"lobby".parse().unwrap())
            .await
            .unwrap(),
        head,
        "nothing appended"
    );
    // The connection is still there and works.
    nc.join("lobby", None).await;
    nc.send("MSG lobby still here").await;
    assert!(nc.next_starting("OK sent").await.starts_with("OK sent "));
}

#[tokio::test]
async fn a_first_guest_login_gets_its_secret_and_needs_it_after() {
    let app = spawn_app().await;
    let mut nc = Nc::connect(app.line).await;
    nc.send("LOGIN cy").await;
    let claimed = nc.next().await;
    let secret = claimed
        .strip_prefix("OK guest cy ")
        .expect(&claimed)
        .to_string();
    assert!(secret.len() >= 32, "{claimed}");
    let mut again = Nc::connect(app.line).await;
    again.send("LOGIN cy").await;
    assert!(again.next().await.starts_with("ERR conflict"));
    again.send("LOGIN cy wrong-secret-wrong-secret").await;
    assert!(again.next().await.starts_with("ERR unauthorized"));
    again.send(&format!("LOGIN cy {secret}")).await;
    assert_eq!(again.next().await, "OK login cy");
}

#[tokio::test]
async fn a_line_client_counts_against_its_users_limits_beside_its_websockets() {
    let app = spawn_app_with(|c| {
        c.limits.sends_per_second = 0.01;
        c.limits.send_burst = 3.0;
    })
    .await;
    let mut ws = app.ws("ada").await;
    for n in 0..3 {
        ws.say("lobby", &format!("{n}")).await;
    }
    let mut nc = Nc::login(app.line, "ada").await;
    nc.send("MSG lobby one too many").await;
    let refused = nc.next().await;
    assert!(refused.starts_with("ERR rate_limited"), "{refused}");
    // Still connected.
    nc.send("ROOMS").await;
    assert_eq!(nc.next().await, "OK rooms lobby");
}

#[tokio::test]
async fn a_line_client_that_does_not_read_is_closed_like_a_slow_websocket() {
    let app = spawn_app_with(|c| {
        c.limits.outbound_queue = 64;
        c.limits.sends_per_second = 100_000.0;
        c.limits.send_burst = 100_000.0;
    })
    .await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(app.line).await.unwrap();
    let mut nc = Nc::on(tcp).await;
    nc.send(&format!("LOGIN sloth {}", guest_secret("sloth")))
        .await;
    assert_eq!(nc.next().await, "OK login sloth");
    nc.join("lobby", None).await;

    // ~6 MB of messages, which the sloth never reads, from a WebSocket sender.
    let mut ada = app.ws("ada").await;
    let text = "x".repeat(3900);
    let total = 1500;
    for n in 0..total {
        let id = uuid::Uuid::now_v7().to_string();
        ada.send(json!({"type": "send", "room": "lobby", "text": text, "id": id}))
            .await;
        if n % 50 == 49 {
            // Keep the sender's own socket drained.
            loop {
                let frame = ada.next().await;
                assert_ne!(frame["type"], "error", "{frame}");
                if frame["type"] == "ack" && frame["id"] == id.as_str() {
                    break;
                }
            }
        }
    }
    // Now read: what was buffered, then the edge's last word and the end.
    let mut lines = 0;
    let last = loop {
        match tokio::time::timeout(Duration::from_secs(30), nc.lines.next_line()).await {
            Ok(Ok(Some(line))) if line.starts_with("ERR") => break Some(line),
            Ok(Ok(Some(_))) => lines += 1,
            Ok(_) => break None,
            Err(_) => panic!("the sloth was never cut off ({lines} lines read)"),
        }
    };
    assert!(lines < total, "cut off before the end ({lines} lines)");
    if let Some(last) = last {
        assert!(last.starts_with("ERR unavailable slow consumer"), "{last}");
    }
}

#[tokio::test]
async fn questions_to_the_views_count_against_the_users_signals() {
    let app = spawn_app_with(|c| {
        c.limits.signals_per_second = 0.01;
        c.limits.signal_burst = 3.0;
    })
    .await;
    let mut nc = Nc::login(app.line, "ada").await;
    nc.join("lobby", None).await;
    nc.send("ROOMS").await;
    assert_eq!(nc.next_starting("OK rooms").await, "OK rooms lobby");
    nc.send("WHO lobby").await;
    nc.next_starting("OK who").await;
    // A loop of questions, as from a script: refused, and the connection stays.
    for question in ["WHO lobby", "ROOMS"] {
        nc.send(question).await;
        let refused = nc.next_starting("ERR").await;
        assert!(refused.starts_with("ERR rate_limited"), "{refused}");
    }
    nc.send("MSG lobby still here").await;
    assert!(nc.next_starting("OK sent").await.starts_with("OK sent "));
}
