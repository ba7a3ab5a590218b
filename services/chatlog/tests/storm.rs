//! Reconnect storms (fault suite). `chatlog bench storm` at a size a test fits: an edge holding
//! 300 clients in 30 rooms restarted twice, with SIGTERM and then SIGKILL, while messages keep
//! coming in through another edge; every client reconnects with backoff and jitter, as the web
//! client does, resumes with `since`, and misses nothing and gets nothing twice. And a handler
//! replica lost with the storm edge: every read through the other edge still answers.

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

use chatlog_bench::storm::{Shared, StopWith, client};
use chatlog_test_support::{NatsServer, client::Client, eventually, free_port};
use common::Proc;
use serde_json::json;

const ROOMS: usize = 30;

/// `chatlog edge` (limits lifted) on `addr`, once ready.
async fn edge_on(nats: &NatsServer, data: &Path, addr: &str) -> Proc {
    let mut cmd: Command = common::command(&nats.url(), data, &common::lifted("edge"));
    let proc = Proc(
        cmd.args(["--http", addr])
            .spawn()
            .expect("starting an edge"),
    );
    common::ready(&Client {
        addr: addr.parse().unwrap(),
    })
    .await;
    proc
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
    let url = format!("http://{}", producer.addr);
    let outcome = common::bench(
        &url,
        &nats.url(),
        &[
            "storm",
            "--clients",
            "300",
            "--rooms",
            "30",
            "--rate",
            "100",
            "--settle",
            "0.5",
            "--chatlog",
            env!("CARGO_BIN_EXE_chatlog"),
        ],
    )
    .await;
    let chatlog_bench::Outcome::Storm(report) = outcome else {
        panic!("a storm report: {outcome:?}")
    };
    assert_eq!(
        report.restarts.iter().map(|r| r.how).collect::<Vec<_>>(),
        [StopWith::Term, StopWith::Kill]
    );
    assert!(report.messages > 0, "messages came in during the storms");
    assert_eq!((report.missed, report.duplicates), (0, 0), "{report:?}");
    // Clients that missed something caught up (one whose room had nothing new needs no
    // catch-up), read with direct gets (the edge's metrics say so).
    let catch_ups = report.edge_catch_ups.expect("the storm edge's metrics");
    assert!(catch_ups > 0, "no catch-up counted");
    assert!(
        report.edge_direct_gets.is_some_and(|g| g >= catch_ups),
        "{report:?}"
    );
    println!(
        "storm of {} clients in {} rooms, {} messages: {:?}; peaks edge {:?} cores {:?} MiB, \
         nats {:?} cores {:?} MiB; JetStream API requests {:?}; storm edge catch-ups {:?}, direct gets {:?}",
        report.clients,
        report.rooms,
        report.messages,
        report
            .restarts
            .iter()
            .map(|r| (r.how, r.resumed_seconds, r.edge_start_seconds, r.connects))
            .collect::<Vec<_>>(),
        report.edge_peak_cores,
        report.edge_peak_rss_mib,
        report.nats_peak_cores,
        report.nats_peak_rss_mib,
        report.js_api_requests,
        report.edge_catch_ups,
        report.edge_direct_gets
    );
}

/// `chatlog handler <name> --replica <replica>` with `/readyz` on a free port, once ready.
async fn replica(nats: &NatsServer, data: &Path, name: &str, replica: &str) -> Proc {
    let cmd = common::command(&nats.url(), data, &["handler", name, "--replica", replica]);
    let (proc, http) = common::spawn_http(cmd);
    common::ready(&http).await;
    proc
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
    let shared = Arc::new(Shared::default());
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let token = storm_client.token(&format!("s{n}")).await;
        clients.push(tokio::spawn(client(
            storm_client.ws_url(&token),
            rooms[n % ROOMS].clone(),
            shared.clone(),
        )));
    }
    let minute = Duration::from_secs(60);
    eventually("every client joined", minute, async || {
        (shared.joined.load(Ordering::Acquire) == CLIENTS).then_some(())
    })
    .await;

    // Writes and every kind of read, without pause, through the other edge; `rounds` counts the
    // rounds done (a post and five reads).
    let reading = Arc::new(AtomicBool::new(true));
    let rounds = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (reading, rooms, owner) = (reading.clone(), rooms.clone(), owner.clone());
        let rounds = rounds.clone();
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
                rounds.fetch_add(1, Ordering::Release);
            }
            (heads, answered, refused)
        }
    });

    // Some rounds on every replica, then the storm edge and one replica of every handler die
    // together.
    let rounds_done = async |n: usize| {
        let what = format!("{n} rounds of reads");
        eventually(what, minute, async || {
            (rounds.load(Ordering::Acquire) >= n).then_some(())
        })
        .await;
    };
    rounds_done(20).await;
    storm.kill9();
    for (name, proc) in replicas.iter_mut().filter(|(n, _)| n.ends_with("-a")) {
        proc.kill9();
        assert!(proc.0.try_wait().unwrap().is_some(), "{name} killed");
    }
    shared.generation.fetch_add(1, Ordering::AcqRel);
    let restarted = Instant::now();
    let _storm = edge_on(&nats, &data.path().join("storm"), &addr).await;
    eventually("every client resumed", minute, async || {
        (shared.resumed.load(Ordering::Acquire) == CLIENTS).then_some(())
    })
    .await;
    let took = restarted.elapsed();
    // More rounds on the surviving replicas alone.
    rounds_done(rounds.load(Ordering::Acquire) + 40).await;
    reading.store(false, Ordering::Release);
    let (heads, answered, refused) = load.await.unwrap();
    assert!(refused.is_empty(), "reads refused: {refused:#?}");
    *shared.until.lock().unwrap() = rooms.iter().cloned().zip(heads).collect();
    shared.done.store(true, Ordering::Release);
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
    assert_eq!(shared.duplicates.load(Ordering::Relaxed), 0);
    println!(
        "{answered} reads answered 200, none refused, with one replica of every handler killed; \
         {CLIENTS} clients resumed {took:?} after their edge's restart began"
    );
}
