//! A reconnect storm (fault suite): an edge holding 300 clients in 30 rooms is restarted twice,
//! with SIGTERM and then with SIGKILL, while messages keep coming in through another edge. Every
//! client reconnects with backoff and jitter, as the web client does, and resumes its room with
//! `since`: in the end each has seen exactly its room's events after its first join, none
//! missing, none twice. The time until all have resumed is printed.

mod common;

use std::{
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chatlog_test_support::{NatsServer, client::Client, free_port};
use common::Proc;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 300;
const ROOMS: usize = 30;

/// `chatlog edge` (limits lifted) on `addr`, once ready.
async fn edge_on(nats: &NatsServer, data: &Path, addr: &str) -> Proc {
    let mut cmd: Command = common::command(&nats.url(), data, &common::lifted("edge"));
    let proc = Proc(
        cmd.args(["--http", addr])
            .spawn()
            .expect("starting an edge"),
    );
    let client = Client {
        addr: addr.parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(client.addr).await.is_ok()
            && client.request("GET", "/readyz", None, None).await.status == 200
        {
            return proc;
        }
        assert!(Instant::now() < deadline, "the edge on {addr} never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The wait before reconnect attempt `attempt`: 100 ms doubling up to 2 s, ±50 % at random, as
/// the web client waits (there from 500 ms up to 30 s).
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(5)).min(2_000);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1_000) as u64; // 0..1000 ‰
    Duration::from_millis(base / 2 + base * jitter / 1_000)
}

/// What one client saw of its room.
struct Seen {
    room: String,
    /// The head its first join reported: it expects every event after it.
    first_head: u64,
    seqs: Vec<u64>,
}

/// One client: joins `room` on `url` and keeps reading; whenever its socket ends it reconnects
/// with backoff and joins again with `since` = the last seq it saw. Ends once `done` is set and
/// it has seen `until[room]`.
#[allow(clippy::too_many_arguments)]
async fn client(
    url: String,
    room: String,
    joined: Arc<AtomicUsize>,
    generation: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    until: Arc<std::sync::Mutex<Vec<u64>>>,
    index: usize,
) -> Seen {
    let mut seen = Seen {
        room: room.clone(),
        first_head: 0,
        seqs: Vec::new(),
    };
    let mut last: Option<u64> = None;
    let mut resumed_in = 0;
    let mut attempt = 0;
    loop {
        let target = until.lock().unwrap()[index % ROOMS];
        if done.load(Ordering::Acquire) && last.is_some_and(|l| l >= target) && target > 0 {
            return seen;
        }
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&url).await else {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            continue;
        };
        let mut join = json!({"type": "join", "room": room});
        if let Some(since) = last {
            join["since"] = json!(since);
        }
        if socket.send(Message::text(join.to_string())).await.is_err() {
            continue;
        }
        let gen_at_connect = generation.load(Ordering::Acquire);
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), socket.next()).await;
            let msg = match next {
                Err(_) => {
                    let target = until.lock().unwrap()[index % ROOMS];
                    if done.load(Ordering::Acquire) && last.is_some_and(|l| l >= target) {
                        return seen;
                    }
                    continue;
                }
                Ok(Some(Ok(msg))) => msg,
                Ok(_) => break,
            };
            let Message::Text(text) = msg else {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
                continue;
            };
            let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                panic!("a frame that is not JSON: {text}");
            };
            match frame["type"].as_str() {
                Some("joined") => {
                    attempt = 0;
                    if last.is_none() {
                        let head = frame["head"].as_u64().unwrap_or(0);
                        seen.first_head = head;
                        last = Some(head);
                        joined.fetch_add(1, Ordering::AcqRel);
                    }
                    if gen_at_connect > resumed_in {
                        resumed_in = gen_at_connect;
                        resumed.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Some("event") if frame["room"] == room.as_str() => {
                    let seq = frame["seq"].as_u64().unwrap_or(0);
                    assert!(
                        last.is_none_or(|l| seq > l),
                        "client {index} got seq {seq} after {last:?}: a duplicate or out of order"
                    );
                    seen.seqs.push(seq);
                    last = Some(seq);
                }
                Some("error") => {
                    // Unavailable while the edge starts: rejoin after a pause.
                    assert_eq!(frame["code"], "unavailable", "client {index}: {frame}");
                    break;
                }
                _ => {}
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

#[tokio::test]
async fn a_reconnect_storm_after_an_edge_restart_loses_and_repeats_nothing() {
    let nats = NatsServer::start().await;
    common::setup(&nats.url());
    let data = tempfile::tempdir().unwrap();
    let (_up, producer) = common::serve(common::command(
        &nats.url(),
        data.path(),
        &common::lifted("up"),
    ))
    .await;
    let owner = producer.token("owner").await;
    let rooms: Vec<String> = (0..ROOMS).map(|n| format!("storm{n}")).collect();
    for room in &rooms {
        let made = producer
            .post("/api/rooms", &owner, json!({"id": room, "name": room}))
            .await;
        assert_eq!(made.status, 201, "{}", made.text);
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let mut storm = edge_on(&nats, &data.path().join("storm"), &addr).await;
    let storm_client = Client {
        addr: addr.parse().unwrap(),
    };

    let joined = Arc::new(AtomicUsize::new(0));
    let generation = Arc::new(AtomicUsize::new(0));
    let resumed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let until = Arc::new(std::sync::Mutex::new(vec![0u64; ROOMS]));
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let token = storm_client.token(&format!("s{n}")).await;
        clients.push(tokio::spawn(client(
            storm_client.ws_url(&token),
            rooms[n % ROOMS].clone(),
            joined.clone(),
            generation.clone(),
            resumed.clone(),
            done.clone(),
            until.clone(),
            n,
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while joined.load(Ordering::Acquire) < CLIENTS {
        assert!(Instant::now() < deadline, "not every client joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Messages keep coming through the other edge, a room at a time.
    let producing = Arc::new(AtomicBool::new(true));
    let sender = tokio::spawn({
        let (producing, rooms, owner) = (producing.clone(), rooms.clone(), owner.clone());
        async move {
            let mut heads = vec![0u64; ROOMS];
            let mut n = 0;
            while producing.load(Ordering::Acquire) {
                let room = n % ROOMS;
                let posted = producer
                    .post(
                        &format!("/api/rooms/{}/messages", rooms[room]),
                        &owner,
                        json!({"text": format!("storm {n}")}),
                    )
                    .await;
                assert_eq!(posted.status, 201, "{}", posted.text);
                heads[room] = posted.body["seq"].as_u64().unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (heads, n)
        }
    });

    let mut took = Vec::new();
    for (how, signal) in [("SIGTERM", "-TERM"), ("SIGKILL", "-KILL")] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = Command::new("kill")
            .args([signal, &storm.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = storm.0.wait();
        let round = generation.fetch_add(1, Ordering::AcqRel) + 1;
        let restarted = Instant::now();
        storm = edge_on(&nats, &data.path().join("storm"), &addr).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while resumed.load(Ordering::Acquire) < CLIENTS * round {
            assert!(
                Instant::now() < deadline,
                "after {how}: {} of {CLIENTS} resumed",
                resumed.load(Ordering::Acquire) - CLIENTS * (round - 1)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push((how, restarted.elapsed()));
    }
    producing.store(false, Ordering::Release);
    let (heads, sent) = sender.await.unwrap();
    *until.lock().unwrap() = heads.clone();
    done.store(true, Ordering::Release);

    let mut checked = 0;
    for seen in clients {
        let seen = tokio::time::timeout(Duration::from_secs(60), seen)
            .await
            .expect("every client reaches its room's last message")
            .unwrap();
        let stored: Vec<u64> = storm_client
            .events(&seen.room, seen.first_head, &owner)
            .await
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .filter(|seq| *seq <= heads[seen.room[5..].parse::<usize>().unwrap()])
            .collect();
        assert_eq!(seen.seqs, stored, "{}: no gap, no duplicate", seen.room);
        checked += 1;
    }
    assert_eq!(checked, CLIENTS);
    println!(
        "{CLIENTS} clients in {ROOMS} rooms, {sent} messages during the storms; all resumed after \
         the restart following {}",
        took.iter()
            .map(|(how, t)| format!("{how} in {t:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// `chatlog handler <name> --replica <replica>` with `/readyz` on a free port, once ready.
async fn replica(nats: &NatsServer, data: &Path, name: &str, replica: &str) -> Proc {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = common::command(
        &nats.url(),
        data,
        &["handler", name, "--replica", replica, "--http", &addr],
    );
    let proc = Proc(cmd.spawn().expect("starting a handler"));
    let http = Client {
        addr: addr.parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(http.addr).await.is_ok()
            && http.request("GET", "/readyz", None, None).await.status == 200
        {
            return proc;
        }
        assert!(Instant::now() < deadline, "{name}-{replica} never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_handler_replica_lost_during_a_storm_leaves_the_other_answering_every_query() {
    const CLIENTS: usize = 100;
    let nats = NatsServer::start().await;
    common::setup(&nats.url());
    let data = tempfile::tempdir().unwrap();
    let views = data.path().join("views");
    let mut replicas = Vec::new();
    for name in ["history", "presence", "notifications"] {
        for r in ["a", "b"] {
            replicas.push((format!("{name}-{r}"), replica(&nats, &views, name, r).await));
        }
    }
    let (_edge, reads) = common::serve(common::command(
        &nats.url(),
        &data.path().join("reads"),
        &common::lifted("edge"),
    ))
    .await;
    let owner = reads.token("owner").await;
    let rooms: Vec<String> = (0..ROOMS).map(|n| format!("storm{n}")).collect();
    for room in &rooms {
        let made = reads
            .post("/api/rooms", &owner, json!({"id": room, "name": room}))
            .await;
        assert_eq!(made.status, 201, "{}", made.text);
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let mut storm = edge_on(&nats, &data.path().join("storm"), &addr).await;
    let storm_client = Client {
        addr: addr.parse().unwrap(),
    };
    let (joined, generation, resumed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let done = Arc::new(AtomicBool::new(false));
    let until = Arc::new(std::sync::Mutex::new(vec![0u64; ROOMS]));
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let token = storm_client.token(&format!("s{n}")).await;
        clients.push(tokio::spawn(client(
            storm_client.ws_url(&token),
            rooms[n % ROOMS].clone(),
            joined.clone(),
            generation.clone(),
            resumed.clone(),
            done.clone(),
            until.clone(),
            n,
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while joined.load(Ordering::Acquire) < CLIENTS {
        assert!(Instant::now() < deadline, "not every client joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Writes and every kind of read, without pause, through the other edge.
    let reading = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn({
        let (reading, rooms, owner) = (reading.clone(), rooms.clone(), owner.clone());
        async move {
            let (mut heads, mut answered, mut refused) = (vec![0u64; ROOMS], 0, Vec::new());
            let mut n = 0;
            while reading.load(Ordering::Acquire) {
                let room = &rooms[n % ROOMS];
                let posted = reads
                    .post(
                        &format!("/api/rooms/{room}/messages"),
                        &owner,
                        json!({"text": format!("storm {n} @s{n}")}),
                    )
                    .await;
                assert_eq!(posted.status, 201, "{}", posted.text);
                heads[n % ROOMS] = posted.body["seq"].as_u64().unwrap();
                for path in [
                    format!("/api/rooms/{room}/messages?limit=20"),
                    "/api/rooms".to_string(),
                    format!("/api/rooms/{room}/presence"),
                    "/api/notifications".to_string(),
                    "/api/unread".to_string(),
                ] {
                    let answer = reads.get(&path, &owner).await;
                    if answer.status == 200 {
                        answered += 1;
                    } else {
                        refused.push(format!("{path}: {} {}", answer.status, answer.text));
                    }
                }
                n += 1;
            }
            (heads, answered, refused)
        }
    });

    // The storm edge and one replica of every handler die together.
    tokio::time::sleep(Duration::from_millis(500)).await;
    storm.kill9();
    for (name, proc) in replicas.iter_mut().filter(|(n, _)| n.ends_with("-a")) {
        proc.kill9();
        assert!(proc.0.try_wait().unwrap().is_some(), "{name} killed");
    }
    generation.fetch_add(1, Ordering::AcqRel);
    let restarted = Instant::now();
    let _storm = edge_on(&nats, &data.path().join("storm"), &addr).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while resumed.load(Ordering::Acquire) < CLIENTS {
        assert!(Instant::now() < deadline, "not every client resumed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = restarted.elapsed();
    // Reads go on for a while on the surviving replicas alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    reading.store(false, Ordering::Release);
    let (heads, answered, refused) = load.await.unwrap();
    assert!(refused.is_empty(), "reads refused: {refused:#?}");
    *until.lock().unwrap() = heads;
    done.store(true, Ordering::Release);
    for seen in clients {
        let seen = tokio::time::timeout(Duration::from_secs(60), seen)
            .await
            .expect("every client reaches its room's last message")
            .unwrap();
        let stored: Vec<u64> = storm_client
            .events(&seen.room, seen.first_head, &owner)
            .await
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .filter(|seq| seen.seqs.last().is_some_and(|last| seq <= last))
            .collect();
        assert_eq!(seen.seqs, stored, "{}: no gap, no duplicate", seen.room);
    }
    println!(
        "{answered} reads answered 200, none refused, with one replica of every handler killed; \
         {CLIENTS} clients resumed {took:?} after their edge's restart began"
    );
}
