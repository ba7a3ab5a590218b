//! Measurements for bench/README.md ("Functions (issue 25)"): a program, not a test.
//!
//! ```sh
//! NATS_SERVER_BIN=$(infra/nats-server.sh) cargo run --release -p chatlog-functions --example bench
//! ```
//!
//! 1. Delivery rate: N stored events to a function that answers 204 at once, beside a durable
//!    pull consumer with explicit acks reading the same events (the runtime's floor).
//! 2. Latency: a message every 10 ms to a function that answers each; from before the append to
//!    the answer seen on the room's live copy.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use axum::http::StatusCode;
use chatlog_events::{ChatEvent, Payload, RoomId, UserId, event::MessagePosted};
use common::{Bench, Hook, empty};
use futures::StreamExt;

const EVENTS: usize = 20_000;
const ROOMS: usize = 100;

fn message(room: usize, n: usize) -> ChatEvent {
    ChatEvent::in_room(
        &RoomId::parse(format!("r{room}")).unwrap(),
        UserId::parse("ada").unwrap(),
        "edge",
        Payload::MessagePosted(MessagePosted {
            text: format!("message {n}"),
            mentions: vec![],
            reply_to: None,
            attachments: Vec::new(),
        }),
    )
}

/// Appends pipelined, 256 acks awaited at a time.
async fn fill(bench: &Bench, events: usize) {
    let mut acks = Vec::new();
    for n in 0..events {
        let e = message(n % ROOMS, n).encode().unwrap();
        acks.push(
            bench
                .js
                .publish_with_headers(e.subject, e.headers, e.body)
                .await
                .unwrap(),
        );
        if acks.len() == 256 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = Bench::start().await;
    for room in 0..ROOMS {
        common::create_room(&bench.js, &format!("r{room}"), false).await;
    }
    let sink = Hook::start(|_| empty(StatusCode::NO_CONTENT)).await;
    bench.register("sink", &sink, "chat.room.>", &[]).await;
    fill(&bench, EVENTS).await;

    // The floor: the same events through a durable pull consumer, each acknowledged.
    let rooms = bench.js.get_stream("CHAT_ROOMS").await.unwrap();
    let raw = rooms
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            filter_subject: "chat.room.>".into(),
            max_ack_pending: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut messages = raw.messages().await.unwrap();
    let total = EVENTS + ROOMS + 4;
    for _ in 0..total {
        messages.next().await.unwrap().unwrap().ack().await.unwrap();
    }
    let raw_rate = total as f64 / started.elapsed().as_secs_f64();
    drop(messages);

    let started = Instant::now();
    let runtime = bench
        .runtime_with(chatlog_functions::Config {
            max_in_flight: 64,
            ..common::quick()
        })
        .await;
    sink.wait_calls(EVENTS, Duration::from_secs(300)).await;
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    println!(
        "delivery: {EVENTS} events over {ROOMS} rooms: {rate:.0} events/s to the function \
         (raw pull consumer with acks: {raw_rate:.0} events/s)"
    );

    // Latency: each message answered; from before its append to the answer on the live copy.
    let answerer = Hook::start(|call| {
        let mut r = common::say("pong", None);
        let body = serde_json::json!({"text": "pong", "reply_to": call.id()}).to_string();
        *r.body_mut() = body.into();
        r
    })
    .await;
    bench
        .register(
            "answer",
            &answerer,
            "chat.room.r0",
            &["chat.message.posted"],
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let mut live = bench.client.subscribe("live.room.r0").await.unwrap();
    let samples = 1000;
    let watcher = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while latencies.len() < samples {
                let Some(m) = live.next().await else { break };
                let Ok(e) = ChatEvent::decode(&m.payload) else {
                    continue;
                };
                if let Payload::MessagePosted(p) = &e.payload
                    && e.component == "function/answer"
                    && let Some(to) = p.reply_to
                    && let Some(at) = sent.lock().unwrap().get(&to.to_string())
                {
                    latencies.push(at.elapsed());
                }
            }
            latencies
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for n in 0..samples {
        tick.tick().await;
        let e = message(0, n);
        sent.lock()
            .unwrap()
            .insert(e.id.to_string(), Instant::now());
        let e = e.encode().unwrap();
        bench
            .js
            .publish_with_headers(e.subject, e.headers, e.body)
            .await
            .unwrap();
    }
    let mut latencies = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .unwrap()
        .unwrap();
    latencies.sort();
    println!(
        "append to answer stored, {} messages at 100/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        quantile(&latencies, 0.5).as_secs_f64() * 1000.0,
        quantile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0,
    );
    runtime.stop().await;
}
