//! The handler runtime as processes: `chatlog handler history` killed with SIGKILL mid-stream
//! resumes to the checksum of a rebuild; replicas answer alike; undecodable events are skipped
//! and counted; `chatlog views rebuild` and `chatlog events replay` work on a real log; views of
//! one stream in one process read it through one consumer.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use async_nats::jetstream;
use chatlog_events::{
    ChatEvent, EventId, Payload, RoomId, UserId,
    event::{MessageEdited, MessagePosted, Reaction, RoomCreated},
    streams::{self, StreamSettings},
};
use chatlog_test_support::NatsServer;
use futures::StreamExt;
use serde_json::Value;

use chatlog_test_support::{client::Client, eventually, eventually_ok};
use common::Proc;

const PATIENCE: Duration = Duration::from_secs(30);

fn chatlog(nats: &NatsServer, args: &[&str]) -> Command {
    let mut cmd = common::command(&nats.url(), &std::env::temp_dir(), args);
    cmd.stdout(Stdio::piped());
    cmd
}

fn handler(nats: &NatsServer, views: &Path, replica: Option<&str>) -> Proc {
    let mut cmd = chatlog(nats, &["handler", "history", "--views-dir"]);
    cmd.arg(views);
    if let Some(r) = replica {
        cmd.args(["--replica", r]);
    }
    Proc(
        cmd.stdout(Stdio::null())
            .spawn()
            .expect("starting chatlog handler"),
    )
}

/// `chat.room.created` of a public room named "Lobby".
fn created(room: &RoomId, by: &UserId) -> ChatEvent {
    ChatEvent::in_room(
        room,
        by.clone(),
        "test",
        Payload::RoomCreated(RoomCreated {
            name: "Lobby".into(),
            topic: String::new(),
            private: false,
            members: vec![],
        }),
    )
}

/// A room with `n` messages, every tenth edited and every seventh reacted to, appended with a
/// pipeline of acks. Returns the last seq.
async fn fill(js: &jetstream::Context, n: usize) -> u64 {
    let lobby = RoomId::parse("lobby").unwrap();
    let ada = UserId::parse("ada").unwrap();
    let mut events = vec![created(&lobby, &ada)];
    let mut last_message = EventId::new();
    for i in 0..n {
        let payload = match i % 10 {
            3 => Payload::MessageEdited(MessageEdited {
                message_id: last_message,
                text: format!("edited {i}"),
            }),
            7 => Payload::ReactionAdded(Reaction {
                message_id: last_message,
                emoji: "👍".into(),
            }),
            _ => Payload::MessagePosted(MessagePosted {
                text: format!("message {i}"),
                mentions: vec![],
                reply_to: None,
                attachments: Vec::new(),
            }),
        };
        let event = ChatEvent::in_room(&lobby, ada.clone(), "test", payload);
        if matches!(event.payload, Payload::MessagePosted(_)) {
            last_message = event.id;
        }
        events.push(event);
    }
    let mut last = 0;
    for chunk in events.chunks(500) {
        let mut acks = Vec::new();
        for event in chunk {
            acks.push(publish(js, event).await);
        }
        for ack in acks {
            last = ack.await.unwrap().sequence;
        }
    }
    last
}

async fn setup() -> (NatsServer, async_nats::Client, jetstream::Context) {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    streams::ensure(&js, &StreamSettings::default())
        .await
        .unwrap();
    (nats, client, js)
}

/// `views.<view>.checksum` once its checkpoint is at least `at_least`.
async fn view_at(client: &async_nats::Client, view: &str, at_least: u64) -> Value {
    let what = format!("the {view} view at {at_least}");
    eventually(what, PATIENCE, async || {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(format!("views.{view}.checksum"), "{}".into()),
        )
        .await;
        let Ok(Ok(m)) = answer else { return None };
        serde_json::from_slice::<Value>(&m.payload)
            .ok()
            .filter(|a| a["checkpoint"].as_u64().unwrap_or(0) >= at_least)
    })
    .await
}

/// The checksums `chatlog views rebuild <handler>` prints, one per view, in order.
fn rebuilt(nats: &NatsServer, handler: &str, views: &Path) -> Vec<String> {
    let mut cmd = chatlog(nats, &["views", "rebuild", handler, "--views-dir"]);
    cmd.arg(views);
    common::stdout_of(cmd)
        .lines()
        .filter_map(|l| l.strip_prefix("checksum "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_handler_killed_mid_stream_resumes_to_the_checksum_of_a_rebuild() {
    let (nats, client, js) = setup().await;
    let last = fill(&js, 30_000).await;
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");

    // A view catching up answers no query: its progress is in its metrics.
    let (mut first, http) = handler_with_http(&nats, "history", &live).await;
    let killed_at = eventually("the view's first commit", PATIENCE, async || {
        let metrics = http.request("GET", "/metrics", None, None).await.text;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("chatlog_handler_checkpoint{handler=\"history\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&checkpoint| checkpoint > 0)
    })
    .await;
    first.kill9();
    assert!(
        killed_at < last,
        "killed mid-stream ({killed_at} of {last})"
    );

    let _second = handler(&nats, &live, None);
    let caught_up = view_at(&client, "history", last).await;
    let once = rebuilt(&nats, "history", &dir.path().join("rebuilt")).remove(0);
    assert_eq!(caught_up["checksum"].as_str().unwrap(), once);
    assert_eq!(
        rebuilt(&nats, "history", &dir.path().join("again")).remove(0),
        once,
        "rebuilds agree"
    );
}

#[tokio::test]
async fn two_replicas_answer_alike_and_share_the_queries() {
    let (nats, client, js) = setup().await;
    let last = fill(&js, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let _a = handler(&nats, dir.path(), Some("a"));
    let _b = handler(&nats, dir.path(), Some("b"));
    // Both caught up (each replica's own stats say so: an answer at the head only says that
    // the replica which gave it is there), then every answer, whichever gives it, is the same.
    eventually_ok(format!("both replicas at {last}"), PATIENCE, async || {
        let stats = gather_stats(&client).await;
        let at_head = stats
            .iter()
            .filter(|s| s["endpoints"][0]["data"]["checkpoint"].as_u64() == Some(last))
            .count();
        if at_head == 2 { Ok(()) } else { Err(stats) }
    })
    .await;
    let mut answers = Vec::new();
    for _ in 0..40 {
        answers.push(view_at(&client, "history", last).await["checksum"].clone());
    }
    let request = serde_json::json!({"room": "lobby", "limit": 50}).to_string();
    let mut pages = Vec::new();
    for _ in 0..40 {
        let m = client
            .request("views.history.messages", request.clone().into())
            .await
            .unwrap();
        pages.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert!(
        pages.windows(2).all(|w| w[0] == w[1]),
        "{:?}",
        pages.iter().collect::<std::collections::BTreeSet<_>>()
    );
    let stats = gather_stats(&client).await;
    assert_eq!(stats.len(), 2, "two instances of the history service");
    for s in &stats {
        let served: u64 = s["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["num_requests"].as_u64().unwrap_or(0))
            .sum();
        assert!(served > 0, "both replicas answered some queries: {s}");
        assert_eq!(s["endpoints"][0]["data"]["checkpoint"], last);
    }
}

async fn gather_stats(client: &async_nats::Client) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.STATS.history", inbox, "".into())
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        // Before any replica is up, the server answers "no responders" (no payload).
        if let Ok(stats) = serde_json::from_slice(&m.payload) {
            out.push(stats);
        }
    }
    out
}

#[tokio::test]
async fn an_undecodable_event_is_skipped_and_counted() {
    let (nats, client, js) = setup().await;
    let before = fill(&js, 3).await;
    for garbage in [
        &b"not json"[..],
        br#"{"specversion":"1.0","type":"chat.future.event"}"#,
    ] {
        js.publish("chat.room.lobby", garbage.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let last = fill(&js, 3).await;
    assert!(last > before + 2);
    let dir = tempfile::tempdir().unwrap();
    let _h = handler(&nats, dir.path(), None);
    view_at(&client, "history", last).await;
    let stats = gather_stats(&client).await;
    assert_eq!(stats[0]["endpoints"][0]["data"]["skipped"], 2);
    let page = client
        .request(
            "views.history.messages",
            serde_json::json!({"room": "lobby", "limit": 200})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    let page: Value = serde_json::from_slice(&page.payload).unwrap();
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts.len(),
        6,
        "the messages on both sides of the garbage: {texts:?}"
    );
}

#[tokio::test]
async fn events_replay_prints_the_stored_events_as_json_lines() {
    let (nats, _client, js) = setup().await;
    let last = fill(&js, 20).await;
    let out = chatlog(
        &nats,
        &["events", "replay", "--room", "lobby", "--since", "5"],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (6..=last).collect::<Vec<_>>());
    assert_eq!(lines[0]["stream"], "CHAT_ROOMS");
    assert_eq!(lines[0]["subject"], "chat.room.lobby");
    assert_eq!(lines[0]["event"]["specversion"], "1.0");

    let out = chatlog(
        &nats,
        &["events", "replay", "--room", "lobby", "--until", "3"],
    )
    .output()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let out = chatlog(&nats, &["events", "replay", "--room", "a.b"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad room id is refused");

    let out = chatlog(&nats, &["events", "stats"]).output().unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stdout);
    assert!(
        stats.contains("CHAT_ROOMS") && stats.contains(&last.to_string()),
        "{stats}"
    );
}

/// How many consumers of `stream` delivered up to `seq` (a reader restarted leaves its old
/// ordered consumer behind, idle, until the server's inactivity threshold removes it).
async fn consumers_through(js: &jetstream::Context, stream: &str, seq: u64) -> usize {
    let s = js.get_stream(stream).await.unwrap();
    let mut consumers = s.consumers();
    let mut through = 0;
    while let Some(info) = consumers.next().await {
        if info.unwrap().delivered.stream_sequence >= seq {
            through += 1;
        }
    }
    through
}

#[tokio::test]
async fn views_of_one_stream_share_one_reader_and_a_view_starting_behind_restarts_it() {
    use chatlog_runtime::{HostConfig, HostStats, SharedReaders};
    let (nats, client, js) = setup().await;
    let last = fill(&js, 3_000).await;
    let views = tempfile::tempdir().unwrap();
    let shared = SharedReaders::default();
    let config = |view: &str| {
        let mut c = HostConfig::new(views.path().join(view));
        c.shared = Some(shared.clone());
        c
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // History first, up to the head; then mentions from the first event: the shared reader must
    // start over for it (history passes over what it has applied).
    let history = tokio::spawn(chatlog_views::View::History.run(
        Default::default(),
        client.clone(),
        config("history"),
        std::sync::Arc::new(HostStats::default()),
        until(stopped.clone()),
    ));
    let at_head = view_at(&client, "history", last).await;
    let mentions = tokio::spawn(chatlog_views::View::Mentions.run(
        Default::default(),
        client.clone(),
        config("mentions"),
        std::sync::Arc::new(HostStats::default()),
        until(stopped),
    ));
    let more = fill(&js, 1_000).await;
    let history_now = view_at(&client, "history", more).await;
    let mentions_now = view_at(&client, "mentions", more).await;
    assert_eq!(consumers_through(&js, "CHAT_ROOMS", more).await, 1);
    assert_ne!(at_head["checksum"], history_now["checksum"]);

    let scratch = tempfile::tempdir().unwrap();
    assert_eq!(
        history_now["checksum"].as_str().unwrap(),
        rebuilt(&nats, "history", scratch.path())[0]
    );
    assert_eq!(
        mentions_now["checksum"].as_str().unwrap(),
        rebuilt(&nats, "notifications", scratch.path())[0]
    );
    stop.send_replace(true);
    history.await.unwrap().unwrap();
    mentions.await.unwrap().unwrap();
}

#[tokio::test]
async fn chatlog_up_reads_chat_rooms_once_for_history_and_mentions() {
    let (nats, client, js) = setup().await;
    let data = tempfile::tempdir().unwrap();
    let last = fill(&js, 500).await;
    let (_up, _) = common::serve(common::command(&nats.url(), data.path(), &["up"])).await;
    view_at(&client, "history", last).await;
    view_at(&client, "mentions", last).await;
    let more = fill(&js, 500).await;
    view_at(&client, "history", more).await;
    view_at(&client, "mentions", more).await;
    assert_eq!(consumers_through(&js, "CHAT_ROOMS", more).await, 1);
}

#[tokio::test]
async fn chatlog_up_metrics_name_each_metric_once_with_a_line_per_view() {
    let (nats, client, js) = setup().await;
    let data = tempfile::tempdir().unwrap();
    let last = fill(&js, 50).await;
    let (_up, http) = common::serve(common::command(&nats.url(), data.path(), &["up"])).await;
    view_at(&client, "history", last).await;
    let metrics = http.request("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);

    // The text format: a metric's HELP and TYPE once, then all of its samples together.
    let mut typed = std::collections::BTreeSet::new();
    let mut current = String::new();
    for line in metrics.text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default().to_string();
            assert!(typed.insert(name.clone()), "a second TYPE line for {name}");
            current = name;
        } else if !line.starts_with('#') && !line.is_empty() {
            assert!(
                line.starts_with(current.as_str()),
                "{line:?} is not with the other samples of its metric (under {current:?})"
            );
        }
    }
    for view in ["history", "presence", "notifications"] {
        assert!(
            metrics.text.contains(&format!(
                "chatlog_handler_reads_total{{handler=\"{view}\"}}"
            )),
            "no reads line for {view}:\n{}",
            metrics.text
        );
    }
    let applied = metrics
        .text
        .lines()
        .find_map(|l| l.strip_prefix("chatlog_handler_applied_total{handler=\"history\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the history view's applied count");
    assert!(applied >= 50, "history applied {applied} of the 51 events");
}

#[tokio::test]
async fn chatlog_runs_without_transparent_huge_pages() {
    let (nats, _client, _js) = setup().await;
    let data = tempfile::tempdir().unwrap();
    let (up, _) = common::serve(common::command(&nats.url(), data.path(), &["up"])).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", up.0.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
}

/// Hands `event` to JetStream; its ack to await.
async fn publish(
    js: &jetstream::Context,
    event: &ChatEvent,
) -> jetstream::context::PublishAckFuture {
    let enc = event.encode().unwrap();
    js.publish_with_headers(enc.subject, enc.headers, enc.body)
        .await
        .unwrap()
}

/// Appends `event`, answering its seq.
async fn append(js: &jetstream::Context, event: &ChatEvent) -> u64 {
    publish(js, event).await.await.unwrap().sequence
}

/// Appends what `next(i)` makes, one event every 5 ms (a steady trickle: never the 20 ms of quiet
/// after which a view commits), until `stop` is set or `n` are appended. Answers how many.
fn trickle(
    js: &jetstream::Context,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    next: impl Fn(usize) -> ChatEvent + Send + 'static,
) -> tokio::task::JoinHandle<usize> {
    let js = js.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(5));
        for i in 0..n {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return i;
            }
            every.tick().await;
            append(&js, &next(i)).await;
        }
        n
    })
}

/// A history handler on `views`, and the lobby created: the handler and the lobby's seq, once
/// the view has it.
async fn history_at_lobby(
    nats: &NatsServer,
    client: &async_nats::Client,
    js: &jetstream::Context,
    views: &Path,
) -> (Proc, u64) {
    let history = handler(nats, views, None);
    let lobby = RoomId::parse("lobby").unwrap();
    let first = append(js, &created(&lobby, &UserId::parse("ada").unwrap())).await;
    view_at(client, "history", first).await;
    (history, first)
}

#[tokio::test]
async fn a_view_commits_during_a_steady_trickle_not_only_after_it() {
    let (nats, client, js) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (_history, first) = history_at_lobby(&nats, &client, &js, dir.path()).await;

    // 400 messages at one per 5 ms: two seconds of appends, fewer than a batch (1 000).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lobby = RoomId::parse("lobby").unwrap();
    let sending = trickle(&js, 400, stop.clone(), move |i| {
        common::message(&lobby, "ada", i)
    });
    // The view reaches the 20th message while the trickle goes on.
    view_at(&client, "history", first + 20).await;
    let during = !sending.is_finished();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sending.await.unwrap();
    assert!(
        during && sent < 400,
        "the view's checkpoint moved only after the trickle ended ({sent} of 400 sent)"
    );
}

#[tokio::test]
async fn a_busy_stream_is_read_in_chunks_not_event_by_event() {
    let (nats, client, js) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (_history, first) = history_at_lobby(&nats, &client, &js, dir.path()).await;
    let counts = |stats: &[Value]| {
        let data = &stats[0]["endpoints"][0]["data"];
        (
            data["applied"].as_u64().unwrap(),
            data["reads"].as_u64().unwrap(),
        )
    };
    let (applied_before, reads_before) = counts(&gather_stats(&client).await);

    // 300 messages, one a millisecond, their acks awaited at the end: a steady stream the view
    // keeps up with, which read as it comes would be one event per read.
    let lobby = RoomId::parse("lobby").unwrap();
    let mut every = tokio::time::interval(Duration::from_millis(1));
    let mut acks = Vec::new();
    for i in 0..300 {
        every.tick().await;
        acks.push(publish(&js, &common::message(&lobby, "ada", i)).await);
    }
    let mut last = first;
    for ack in acks {
        last = last.max(ack.await.unwrap().sequence);
    }
    view_at(&client, "history", last).await;
    let (applied_after, reads_after) = counts(&gather_stats(&client).await);
    let (applied, reads) = (applied_after - applied_before, reads_after - reads_before);
    assert_eq!(applied, 300);
    assert!(
        reads * 2 <= applied,
        "{applied} events in {reads} reads: read one by one, not in chunks"
    );
}

#[tokio::test]
async fn presence_times_out_a_silent_connection_while_others_keep_heartbeating() {
    let (nats, client, js) = setup().await;
    let lobby = RoomId::parse("lobby").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = chatlog(&nats, &["handler", "presence", "--views-dir"]);
    cmd.arg(dir.path())
        .env("CHATLOG_OFFLINE_AFTER", "1")
        .env("CHATLOG_TICK_MS", "100");
    let _presence = Proc(cmd.stdout(Stdio::null()).spawn().unwrap());
    let mut stored = client
        .subscribe(chatlog_events::subjects::presence(&lobby))
        .await
        .unwrap();

    let room = lobby.clone();
    let presence = move |user: &str, connection: &str, heartbeat: bool| {
        let p = chatlog_events::event::Presence::of(connection);
        let payload = if heartbeat {
            Payload::PresenceHeartbeat(p)
        } else {
            Payload::PresenceOnline(p)
        };
        ChatEvent::in_room(&room, UserId::parse(user).unwrap(), "test", payload)
    };
    // Ghost comes online and is never heard of again; busy heartbeats every 5 ms meanwhile
    // (as a few hundred connections of one room would), for up to 20 s.
    append(&js, &presence("ghost", "ghost-1", false)).await;
    append(&js, &presence("busy", "busy-1", false)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = trickle(&js, 4_000, stop.clone(), move |_| {
        presence("busy", "busy-1", true)
    });
    let offline = tokio::time::timeout(PATIENCE, async {
        while let Some(m) = stored.next().await {
            if let Ok(event) = ChatEvent::decode(&m.payload)
                && matches!(event.payload, Payload::PresenceOffline(_))
            {
                return event;
            }
        }
        panic!("the subscription ended");
    })
    .await
    .expect("no chat.presence.offline within the patience");
    let during = !sending.is_finished();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sending.await.unwrap();
    assert_eq!(offline.user.as_str(), "ghost");
    assert!(
        during && sent < 4_000,
        "ghost went offline only after the heartbeats stopped ({sent} of 4 000 sent)"
    );
}

/// `chatlog handler <name>` with its views in `views` and its `/readyz` on a free port: the
/// process, and an HTTP client of that port once it listens.
async fn handler_with_http(nats: &NatsServer, name: &str, views: &Path) -> (Proc, Client) {
    let mut cmd = chatlog(nats, &["handler", name, "--views-dir"]);
    cmd.arg(views).stdout(Stdio::null());
    let (proc, http) = common::spawn_http(cmd);
    common::listening(&http).await;
    (proc, http)
}

/// Waits for `/readyz` to say 200; before, it may only say 503.
async fn until_ready(http: &Client) {
    eventually("the handler ready", PATIENCE, async || {
        let status = http.request("GET", "/readyz", None, None).await.status;
        assert!(matches!(status, 200 | 503), "/readyz answered {status}");
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_handler_that_lost_its_disk_answers_nothing_until_it_has_caught_up() {
    let (nats, client, js) = setup().await;
    let last = fill(&js, 30_000).await;
    let dir = tempfile::tempdir().unwrap();
    let views = dir.path().join("views");
    let page_request = serde_json::json!({"room": "lobby", "limit": 50}).to_string();
    let page = || async {
        let asked = client.request("views.history.messages", page_request.clone().into());
        match tokio::time::timeout(Duration::from_secs(2), asked).await {
            Ok(Ok(m)) => Some(String::from_utf8(m.payload.to_vec()).unwrap()),
            _ => None,
        }
    };

    let (mut first, http) = handler_with_http(&nats, "history", &views).await;
    until_ready(&http).await;
    assert_eq!(view_at(&client, "history", last).await["checkpoint"], last);
    let at_head = page().await.expect("a ready replica answers");
    assert!(at_head.contains("message 29999"), "{at_head}");
    first.kill9();

    // The pod comes back on a new node: its disk is gone.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let (_second, http) = handler_with_http(&nats, "history", &views).await;
    eventually("ready again", PATIENCE, async || {
        if http.request("GET", "/readyz", None, None).await.status == 200 {
            return Some(());
        }
        // No replica answers, or one answers the page as of the head (it may have become ready
        // since /readyz was asked): never an older page.
        if let Some(answer) = page().await {
            assert!(
                answer == at_head,
                "an answer from a view still rebuilding: {}…",
                answer.chars().take(200).collect::<String>()
            );
        }
        None
    })
    .await;
    assert_eq!(page().await.as_deref(), Some(at_head.as_str()));
}

#[tokio::test]
async fn a_notifications_handler_that_lost_its_disk_notifies_nobody_twice() {
    let (nats, client, js) = setup().await;
    let (lobby, ada, bob) = (
        RoomId::parse("lobby").unwrap(),
        UserId::parse("ada").unwrap(),
        UserId::parse("bob").unwrap(),
    );
    let mention = |text: &str| {
        ChatEvent::in_room(
            &lobby,
            ada.clone(),
            "test",
            Payload::MessagePosted(MessagePosted {
                text: text.into(),
                mentions: vec![bob.clone()],
                reply_to: None,
                attachments: Vec::new(),
            }),
        )
    };
    // Every publish on bob's subject, a duplicate too: the stream stores a re-emission within its
    // duplicate window once, but the subject sees it (and after the window it would be stored).
    let mut published = client.subscribe("chat.user.bob").await.unwrap();
    append(&js, &created(&lobby, &ada)).await;
    append(
        &js,
        &ChatEvent::in_room(
            &lobby,
            bob.clone(),
            "test",
            Payload::MemberJoined(chatlog_events::event::Membership {
                member: bob.clone(),
            }),
        ),
    )
    .await;
    let first = mention("hi @bob");
    append(&js, &first).await;
    fill(&js, 2_000).await;

    let dir = tempfile::tempdir().unwrap();
    let views = dir.path().join("views");
    let (mut handler, http) = handler_with_http(&nats, "notifications", &views).await;
    until_ready(&http).await;
    let notified = tokio::time::timeout(PATIENCE, published.next())
        .await
        .expect("bob notified")
        .unwrap();
    assert_eq!(
        notified
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string()),
        Some(EventId::derived(&first.id, "bob").to_string())
    );
    handler.kill9();
    std::fs::remove_dir_all(dir.path()).unwrap();

    let (_again, http) = handler_with_http(&nats, "notifications", &views).await;
    until_ready(&http).await;
    // Caught up past the first mention: had it been emitted again, that came before this one.
    let second = mention("again @bob");
    append(&js, &second).await;
    let next = tokio::time::timeout(PATIENCE, published.next())
        .await
        .expect("bob notified of the second mention")
        .unwrap();
    assert_eq!(
        next.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string()),
        Some(EventId::derived(&second.id, "bob").to_string()),
        "the first mention was notified again"
    );
    // The rebuilt view comes to list both, and only those.
    let request = serde_json::json!({"user": "bob", "limit": 10}).to_string();
    eventually("both notifications listed", PATIENCE, async || {
        let answer = client
            .request("views.notifications.list", request.clone().into())
            .await
            .unwrap();
        let listed: Value = serde_json::from_slice(&answer.payload).unwrap();
        let count = listed["notifications"].as_array().map_or(0, Vec::len);
        assert!(count <= 2, "{listed}");
        (count == 2).then_some(())
    })
    .await;
}
