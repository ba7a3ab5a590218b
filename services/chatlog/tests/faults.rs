//! The fault suite (`make test-faults`; part of `make test` too): producers append unique ids,
//! something breaks, a checker reads everything back. Every acknowledged id must be stored
//! exactly once, in order within its room.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use chatlog_edge::log::{Log, LogError};
use chatlog_events::{
    ChatEvent, EventId, RoomId, Stream,
    streams::{self, StreamSettings},
};
use chatlog_test_support::{NatsCluster, NatsServer, client::Client, eventually, eventually_ok};
use common::Proc;
use futures::StreamExt;
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

/// `producers` tasks append `per_producer` events each (one room per producer), retrying every
/// failed append with the same id until it is acknowledged. Returns (room, id, acked seq).
async fn produce(
    url: &str,
    producers: usize,
    per_producer: usize,
    acked: Arc<AtomicUsize>,
) -> Vec<(RoomId, EventId, u64)> {
    let (client, _) = chatlog_edge::connect(url, "producer").await.unwrap();
    let log = Log::new(client, Duration::from_secs(2));
    let mut tasks = Vec::new();
    for p in 0..producers {
        let log = log.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let room = RoomId::parse(format!("room-{p}")).unwrap();
            let mut done = Vec::with_capacity(per_producer);
            for n in 0..per_producer {
                let event = common::message(&room, "producer", n);
                let seq = append_acked(&log, &event).await;
                acked.fetch_add(1, Ordering::Relaxed);
                done.push((room.clone(), event.id, seq));
            }
            done
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Appends `event` again until it is acknowledged (the log answers `Unavailable` or `Internal`
/// meanwhile), and answers its seq.
async fn append_acked(log: &Log, event: &ChatEvent) -> u64 {
    // Each attempt a future of owned clones: one borrowing from the closure would not be `Send`
    // for every lifetime, as a spawned task must be (the compiler's limit, not the log's).
    let (log, event) = (log.clone(), event.clone());
    let attempt = move || {
        let (log, event) = (log.clone(), event.clone());
        async move {
            match log.append(&event).await {
                Ok(a) => Some(a.seq),
                Err(LogError::Unavailable) | Err(LogError::Internal(_)) => None,
                Err(e) => panic!("append failed: {e}"),
            }
        }
    };
    eventually("the append acknowledged", MINUTE, attempt).await
}

/// Every stored event id of CHAT_ROOMS, with its seq, in stream order.
async fn stored(url: &str) -> Vec<(String, EventId, u64)> {
    let (client, _) = chatlog_edge::connect(url, "checker").await.unwrap();
    let js = jetstream::new(client);
    // Right after a fault the cluster may still be electing: ask again until it answers.
    let (last, mut messages) = eventually("the stream answering", MINUTE, async || {
        let mut stream = js.get_stream(Stream::Rooms.name()).await.ok()?;
        let last = stream.info().await.ok()?.state.last_sequence;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .ok()?;
        Some((last, consumer.messages().await.ok()?))
    })
    .await;
    let mut out = Vec::new();
    while out
        .last()
        .is_none_or(|(_, _, s): &(String, EventId, u64)| *s < last)
    {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("reading back in time")
            .unwrap()
            .unwrap();
        let seq = m.info().unwrap().stream_sequence;
        let event = ChatEvent::decode(&m.payload).unwrap();
        out.push((m.subject.to_string(), event.id, seq));
    }
    out
}

/// Every acknowledged id stored exactly once, at its acked seq, in order within its room.
fn check(acked: &[(RoomId, EventId, u64)], stored: &[(String, EventId, u64)]) {
    let mut copies: HashMap<EventId, Vec<u64>> = HashMap::new();
    for (_, id, seq) in stored {
        copies.entry(*id).or_default().push(*seq);
    }
    for (room, id, seq) in acked {
        let at = copies
            .get(id)
            .unwrap_or_else(|| panic!("acked {id} in {room} was lost"));
        assert_eq!(at, &vec![*seq], "{id} stored {} times", at.len());
    }
    // Within a room, the producer's order is the stream's order.
    let mut by_room: HashMap<&RoomId, Vec<u64>> = HashMap::new();
    for (room, _, seq) in acked {
        by_room.entry(room).or_default().push(*seq);
    }
    for (room, seqs) in by_room {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{room} out of order");
    }
}

/// Waits until `acked` counts at least `count`.
async fn acks(acked: &AtomicUsize, count: usize) {
    eventually(format!("{count} acks"), MINUTE, async || {
        (acked.load(Ordering::Relaxed) >= count).then_some(())
    })
    .await
}

#[tokio::test]
async fn kill_9_of_the_server_during_10000_acknowledged_appends_loses_nothing() {
    let mut nats = NatsServer::start().await;
    let (client, _) = chatlog_edge::connect(&nats.url(), "setup").await.unwrap();
    streams::ensure(&jetstream::new(client), &StreamSettings::default())
        .await
        .unwrap();
    let acked = Arc::new(AtomicUsize::new(0));
    let producing = tokio::spawn({
        let url = nats.url();
        let acked = acked.clone();
        async move { produce(&url, 4, 2500, acked).await }
    });
    acks(&acked, 3000).await;
    nats.kill();
    let at_kill = acked.load(Ordering::Relaxed);
    nats.restart().await;
    let done = producing.await.unwrap();
    assert_eq!(done.len(), 10_000);
    assert!(at_kill < 10_000, "killed mid-run");
    check(&done, &stored(&nats.url()).await);
}

#[tokio::test]
async fn killing_the_stream_leader_of_a_cluster_loses_no_acknowledged_append() {
    let mut cluster = NatsCluster::start(3).await;
    let (client, _) = chatlog_edge::connect(&cluster.urls(), "setup")
        .await
        .unwrap();
    chatlog_edge::ensure_streams(
        &client,
        &StreamSettings {
            replicas: 0,
            ..Default::default()
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let info = client.server_info();
    assert_eq!(
        chatlog_edge::auto_replicas(&client),
        3,
        "a cluster of three gets replicas 3: {:?}",
        info.connect_urls
    );
    let js = jetstream::new(client);
    let info = js
        .get_stream(Stream::Rooms.name())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    let leader = info.cluster.and_then(|c| c.leader).expect("a leader");

    let acked = Arc::new(AtomicUsize::new(0));
    let producing = tokio::spawn({
        let urls = cluster.urls();
        let acked = acked.clone();
        async move { produce(&urls, 4, 750, acked).await }
    });
    acks(&acked, 500).await;
    cluster
        .node_named(&leader)
        .expect("the leader's node")
        .kill();
    let done = producing.await.unwrap();
    assert_eq!(done.len(), 3000);
    let survivors: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| format!("n{}", n.port()) != leader)
        .map(|n| n.url())
        .collect();
    check(&done, &stored(&survivors.join(",")).await);
}

async fn start_chatlog(nats: &NatsServer, data: &std::path::Path, what: &str) -> (Proc, Client) {
    common::setup(&nats.url());
    common::serve(common::command(&nats.url(), data, &common::lifted(what))).await
}

#[tokio::test]
async fn clients_of_a_killed_edge_resume_on_the_other_with_no_gap_and_no_duplicate() {
    let nats = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let (_up, a) = start_chatlog(&nats, data.path(), "up").await;
    let (mut doomed, b) = start_chatlog(&nats, &data.path().join("b"), "edge").await;
    let token = a.token("producer").await;

    // 100 clients on edge b, each remembering what it saw.
    let mut clients = Vec::new();
    for n in 0..100 {
        let mut ws = b.ws(&format!("c{n}")).await;
        ws.join("lobby", None).await;
        clients.push(ws);
    }
    let producer = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for n in 0..60 {
            let posted = a
                .post(
                    "/api/rooms/lobby/messages",
                    &token,
                    json!({"text": format!("m{n}")}),
                )
                .await;
            assert_eq!(posted.status, 201);
            seqs.push(posted.body["seq"].as_u64().unwrap());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seqs
    });
    // Each client reads a little, then its edge dies under it.
    let mut seen: Vec<Vec<u64>> = Vec::new();
    for ws in &mut clients {
        let mut got = Vec::new();
        got.push(ws.next_message().await.0);
        seen.push(got);
    }
    doomed.kill9();
    let seqs = producer.await.unwrap();
    let last = *seqs.last().unwrap();
    for (n, got) in seen.iter_mut().enumerate() {
        // Whatever the dead socket still held, then the other edge, resuming after it.
        let mut old = clients.remove(0);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(
            Duration::from_millis(5),
            futures::StreamExt::next(&mut old.socket),
        )
        .await
        {
            if let Ok(text) = msg.to_text()
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(text)
                && v["type"] == "event"
                && v["event"]["type"] == "chat.message.posted"
            {
                got.push(v["seq"].as_u64().unwrap());
            }
        }
        let since = *got.last().unwrap();
        let mut ws = a.ws(&format!("c{n}")).await;
        ws.join("lobby", Some(since)).await;
        while *got.last().unwrap() < last {
            got.push(ws.next_message().await.0);
        }
        let first = got[0];
        let want: Vec<u64> = seqs.iter().copied().filter(|s| *s >= first).collect();
        assert_eq!(*got, want, "client c{n}: no gap, no duplicate");
    }
}

#[tokio::test]
async fn thirty_seconds_without_nats_then_everything_recovers_alone() {
    let mut nats = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let (_up, app) = start_chatlog(&nats, data.path(), "up").await;
    let mut ada = app.ws("ada").await;
    let mut bob = app.ws("bob").await;
    ada.join("lobby", None).await;
    bob.join("lobby", None).await;
    let (_, before) = ada.say("lobby", "before").await;
    assert_eq!(bob.next_message().await.0, before);

    nats.kill();
    let outage = Instant::now();
    let id = uuid::Uuid::new_v4().to_string();
    while outage.elapsed() < Duration::from_secs(30) {
        let asked = Instant::now();
        ada.send(json!({"type": "send", "room": "lobby", "text": "during", "id": id}))
            .await;
        let error = ada.next_of("error").await;
        assert_eq!(error["code"], "unavailable");
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "unavailable promptly"
        );
        assert_eq!(app.request("GET", "/readyz", None, None).await.status, 503);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    nats.restart().await;
    eventually("ready again", Duration::from_secs(30), async || {
        (app.request("GET", "/readyz", None, None).await.status == 200).then_some(())
    })
    .await;
    ada.send(json!({"type": "send", "room": "lobby", "text": "during", "id": id}))
        .await;
    let seq = ada.next_of("ack").await["seq"].as_u64().unwrap();
    assert_eq!(
        bob.next_message().await.0,
        seq,
        "the same sockets work again"
    );
    let token = app.token("carol").await;
    let page = app
        .get_until("/api/rooms/lobby/messages", &token, |b| {
            b["messages"].as_array().is_some_and(|m| m.len() == 2)
        })
        .await;
    assert_eq!(
        page["messages"][0]["seq"], before,
        "nothing acknowledged was lost"
    );
}

/// The start of `body`, for a failure's message.
fn short(body: &serde_json::Value) -> String {
    body.to_string().chars().take(300).collect()
}

/// One round of every read path a client has, on `app` after `posted` messages mentioning bob:
/// `Ok` when each answered 200 with what was written, `Err` naming the paths that answered 503
/// (each with `Retry-After`) or not everything yet (notifications, which are derived). Any other
/// answer fails the test: never a 500.
async fn read_everything(app: &Client, ada: &str, bob: &str, posted: usize) -> Result<(), String> {
    let mut unavailable = Vec::new();
    let mut behind = None;
    let mut check =
        |path: &str, answer: chatlog_test_support::client::Answer| -> Option<serde_json::Value> {
            match answer.status {
                200 => Some(answer.body),
                503 => {
                    assert!(
                        answer.retry_after.is_some(),
                        "{path}: 503 without Retry-After"
                    );
                    unavailable.push(path.to_string());
                    None
                }
                other => panic!("{path} answered {other}: {}", answer.text),
            }
        };
    let page = "/api/rooms/lobby/messages?limit=100";
    if let Some(body) = check(page, app.get(page, ada).await) {
        let texts = body["messages"].as_array().map_or(0, |m| {
            m.iter()
                .filter(|m| m["text"].as_str().is_some_and(|t| t.starts_with("read me")))
                .count()
        });
        assert_eq!(texts, posted, "{page}: {}", short(&body));
    }
    let events = "/api/rooms/lobby/events?since=0";
    if let Some(body) = check(events, app.get(events, ada).await) {
        let texts = body.as_array().map_or(0, |e| {
            e.iter()
                .filter(|e| {
                    e["event"]["data"]["text"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("read me"))
                })
                .count()
        });
        assert_eq!(texts, posted, "{events}: {}", short(&body));
    }
    if let Some(body) = check("/api/rooms", app.get("/api/rooms", ada).await) {
        assert!(body.to_string().contains("lobby"), "/api/rooms: {body}");
    }
    let presence = "/api/rooms/lobby/presence";
    if let Some(body) = check(presence, app.get(presence, ada).await) {
        assert!(body.is_object(), "{presence}: {body}");
    }
    let inbox = "/api/notifications?limit=100";
    if let Some(body) = check(inbox, app.get(inbox, bob).await) {
        // Notifications are derived (eventually there): fewer is "not yet", more is wrong.
        let listed = body["notifications"].as_array().map_or(0, Vec::len);
        assert!(listed <= posted, "{inbox}: {}", short(&body));
        if listed < posted {
            behind = Some(format!("{inbox} ({listed} of {posted} yet)"));
        }
    }
    let unread = "/api/unread";
    if let Some(body) = check(unread, app.get(unread, bob).await) {
        assert!(body.is_object(), "{unread}: {body}");
    }
    unavailable.extend(behind);
    if unavailable.is_empty() {
        Ok(())
    } else {
        Err(unavailable.join(", "))
    }
}

#[tokio::test]
async fn every_read_answers_through_the_loss_of_a_node() {
    let mut cluster = NatsCluster::start(3).await;
    common::setup(&cluster.urls());
    let data = tempfile::tempdir().unwrap();
    let (_up, app) = common::serve(common::command(
        &cluster.urls(),
        data.path(),
        &common::lifted("up"),
    ))
    .await;
    let (ada, bob) = (app.token("ada").await, app.token("bob").await);
    let mut bob_ws = app.ws_with_token(&bob).await;
    bob_ws.join("lobby", None).await;
    let posted = 30;
    for n in 0..posted {
        let answer = app
            .post(
                "/api/rooms/lobby/messages",
                &ada,
                json!({"text": format!("read me {n} @bob")}),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.text);
    }
    let before_the_kill = Duration::from_secs(30);
    eventually("every read answered", before_the_kill, async || {
        read_everything(&app, &ada, &bob, posted).await.ok()
    })
    .await;

    // The node that leads the room log goes, and with it the connections on it.
    cluster.kill_leader_of(Stream::Rooms.name()).await;
    let killed = Instant::now();

    // Reads answer 200 or 503 with Retry-After meanwhile, and all answer 200 again in seconds.
    let mut refused = 0;
    let what = "every read answered again after the node's loss";
    let recovered = eventually_ok(what, Duration::from_secs(20), async || {
        let round = read_everything(&app, &ada, &bob, posted).await;
        round.map(|()| killed.elapsed()).map_err(|paths| {
            refused += 1;
            format!("rounds refused: {refused}, the last by {paths}")
        })
    })
    .await;
    for _ in 0..5 {
        read_everything(&app, &ada, &bob, posted)
            .await
            .unwrap_or_else(|paths| panic!("refused again after recovering: {paths}"));
    }
    // A client that reconnects now resumes from the start with everything.
    let mut again = app.ws_with_token(&ada).await;
    again.join("lobby", Some(0)).await;
    let mut caught_up = 0;
    while caught_up < posted {
        let (_, event) = again.next_message().await;
        if event["data"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("read me"))
        {
            caught_up += 1;
        }
    }
    println!(
        "every read answered again {recovered:?} after the leader's node was killed; rounds with a 503 before: {refused}"
    );
}
