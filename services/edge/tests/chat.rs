//! The core loop through real WebSocket clients against a real nats-server.

mod common;

use std::time::Duration;

use common::{Ended, PATIENCE, spawn_app, spawn_app_with};
use serde_json::json;

#[tokio::test]
async fn two_clients_chat_and_the_ack_seq_is_the_delivered_seq() {
    let app = spawn_app().await;
    let mut ada = app.ws("ada").await;
    let mut bob = app.ws("bob").await;
    let head = ada.join("lobby", None).await;
    bob.join("lobby", None).await;
    app.wait_member("lobby", "bob").await;

    let (id, seq) = ada.say("lobby", "hello @bob").await;
    assert!(seq > head);
    let (got, event) = bob.next_message().await;
    assert_eq!(got, seq);
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["type"], "chat.message.posted");
    assert_eq!(event["source"], "/chatlog/edge");
    assert_eq!(event["subject"], "lobby");
    assert_eq!(event["data"]["user"], "ada");
    assert_eq!(event["data"]["text"], "hello @bob");
    assert_eq!(event["data"]["mentions"], json!(["bob"]));
    assert_eq!(
        ada.next_message().await.0,
        seq,
        "the author sees its own event too"
    );

    let (_, reply) = bob.say("lobby", "hi ada").await;
    assert_eq!(ada.next_message().await.0, reply);
}

#[tokio::test]
async fn a_resent_id_is_acked_with_the_same_seq_and_stored_once() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let mut ada = app.ws("ada").await;
    let head = ada.join("lobby", None).await;
    let id = uuid::Uuid::new_v4().to_string();
    let send = json!({"type": "send", "room": "lobby", "text": "once", "id": id});
    ada.send(send.clone()).await;
    let first = ada.next_of("ack").await;
    ada.send(send).await;
    let second = ada.next_of("ack").await;
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["seq"], second["seq"]);

    let with_id = |stored: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        stored
            .into_iter()
            .filter(|e| e["event"]["type"] == "chat.message.posted")
            .collect()
    };
    let stored = with_id(app.events("lobby", head, &token).await);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["event"]["id"], id.as_str());

    // The HTTP API is idempotent on the same id, and agrees on the seq.
    let again = app
        .post(
            "/api/rooms/lobby/messages",
            &token,
            json!({"text": "once", "id": id}),
        )
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body["seq"], first["seq"]);
    assert_eq!(with_id(app.events("lobby", head, &token).await).len(), 1);
}

#[tokio::test]
async fn resume_after_a_disconnect_delivers_exactly_the_missed_events_in_order() {
    let app = spawn_app().await;
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    let (_, seen) = ada.say("lobby", "before").await;
    assert_eq!(bob.next_message().await.0, seen);
    drop(bob);

    let mut missed = Vec::new();
    for n in 0..5 {
        missed.push(ada.say("lobby", &format!("missed {n}")).await.1);
    }
    let mut bob = app.ws("bob").await;
    let head = bob.join("lobby", Some(seen)).await;
    assert_eq!(head, *missed.last().unwrap());
    for want in &missed {
        assert_eq!(bob.next_message().await.0, *want);
    }
    let (_, live) = ada.say("lobby", "live again").await;
    assert_eq!(bob.next_message().await.0, live, "nothing twice, then live");
}

#[tokio::test]
async fn resume_while_others_keep_sending_has_no_gap_and_no_duplicate() {
    let app = spawn_app_with(|c| {
        c.limits.sends_per_second = 10_000.0;
        c.limits.send_burst = 10_000.0;
    })
    .await;
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    let (_, since) = ada.say("lobby", "start").await;
    // A backlog to catch up on, then sends that race the catch-up.
    for n in 0..300 {
        ada.say("lobby", &format!("backlog {n}")).await;
    }
    let sender = tokio::spawn(async move {
        let mut acked = Vec::new();
        for n in 0..200 {
            acked.push(ada.say("lobby", &format!("racing {n}")).await.1);
        }
        acked
    });
    let mut bob = app.ws("bob").await;
    bob.join("lobby", Some(since)).await;
    let acked = sender.await.unwrap();
    let last = *acked.last().unwrap();

    let mut got = Vec::new();
    while got.last() != Some(&last) {
        got.push(bob.next_event().await.0);
    }
    let token = app.token("carol").await;
    let mut stored: Vec<u64> = Vec::new();
    let mut messages = 0;
    let mut after = since;
    loop {
        let page = app.events("lobby", after, &token).await;
        if page.is_empty() {
            break;
        }
        messages += page
            .iter()
            .filter(|e| e["event"]["type"] == "chat.message.posted")
            .count();
        stored.extend(page.iter().map(|e| e["seq"].as_u64().unwrap()));
        after = *stored.last().unwrap();
    }
    // 500 messages, and the joins' chat.member.joined wherever they landed.
    assert_eq!(messages, 500);
    stored.retain(|seq| *seq <= last);
    assert_eq!(
        got, stored,
        "every stored event after since, once, in order"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_the_others_keep_receiving() {
    let app = spawn_app_with(|c| {
        c.limits.outbound_queue = 64;
        c.limits.sends_per_second = 100_000.0;
        c.limits.send_burst = 100_000.0;
    })
    .await;
    let mut stalled = app.ws_small_buffer("sloth").await;
    stalled.join("lobby", None).await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    // The sender does not join: it reads only its acks.
    let mut ada = app.ws("ada").await;

    // ~6 MB of events: more than the kernel buffers plus the stalled client's queue hold.
    let text = "x".repeat(3900);
    let total = 1500;
    let sender = tokio::spawn(async move {
        let mut last = 0;
        for n in 0..total {
            let id = uuid::Uuid::now_v7().to_string();
            ada.send(json!({"type": "send", "room": "lobby", "text": text, "id": id}))
                .await;
            if n % 50 == 49 || n == total - 1 {
                // Keep the sender's own socket drained.
                loop {
                    let f = ada.next().await;
                    if f["type"] == "ack" && f["id"] == id.as_str() {
                        last = f["seq"].as_u64().unwrap();
                        break;
                    }
                }
            }
        }
        last
    });
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < total {
            seqs.push(bob.next_message().await.0);
        }
        seqs
    });
    let last = sender.await.unwrap();
    let seqs = reader.await.unwrap();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(seqs.last(), Some(&last), "bob got every event");

    let (frames, ended) = stalled.until_end(Duration::from_secs(30)).await;
    assert!(
        frames < total,
        "the stalled client was cut off ({frames} frames)"
    );
    match ended {
        Ended::Closed(code) => assert!(code.is_none() || code == Some(1008), "{code:?}"),
        Ended::Eof => {}
    }
}

#[tokio::test]
async fn sends_in_flight_together_are_stored_in_the_order_sent() {
    let app = spawn_app_with(|c| {
        c.limits.sends_per_second = 10_000.0;
        c.limits.send_burst = 10_000.0;
    })
    .await;
    let mut ada = app.ws("ada").await;
    let token = app.token("ada").await;
    let (_, since) = ada.say("lobby", "start").await;
    // 300 sends without waiting for any ack: they are pipelined, and must land in order.
    for n in 0..300 {
        ada.send(json!({"type": "send", "room": "lobby", "text": format!("{n}")}))
            .await;
    }
    let mut acks = 0;
    while acks < 300 {
        let frame = ada.next().await;
        assert_ne!(frame["type"], "error", "{frame}");
        acks += usize::from(frame["type"] == "ack");
    }
    let texts: Vec<String> = app
        .writes_after("lobby", since, &token)
        .await
        .iter()
        .map(|e| e["event"]["data"]["text"].as_str().unwrap().to_string())
        .collect();
    let sent: Vec<String> = (0..300).map(|n| n.to_string()).collect();
    assert_eq!(texts, sent);
}

/// A client pipelining thousands of sends while NATS hangs for a moment: the edge bounds what
/// each connection has in flight (it stops reading) instead of waiting on the process-wide ack
/// permits, which a connection blocked there could never give back. Every send is acked, in
/// order, once NATS answers again, and the edge goes on answering others.
#[tokio::test]
async fn a_client_pipelining_through_a_nats_pause_gets_every_ack_and_the_edge_stays_available() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let app = spawn_app_with(|c| {
        c.limits.sends_per_second = 100_000.0;
        c.limits.send_burst = 100_000.0;
        // Shorter than NATS's pause below: not reading a client by choice is not hearing nothing
        // from it.
        c.limits.ping = Duration::from_millis(200);
    })
    .await;
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    let (mut write, mut read) = ada.socket.split();

    // More than async-nats's default 5 000 acks in flight, all sent while nothing is acked.
    let total = 6_000;
    let ids: Vec<String> = (0..total)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    app.nats.pause();
    let frames: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            json!({"type": "send", "room": "lobby", "text": n.to_string(), "id": id}).to_string()
        })
        .collect();
    let writer = tokio::spawn(async move {
        for frame in frames {
            write.send(Message::text(frame)).await.expect("sending");
        }
        write
    });
    // NATS hangs for three of the edge's pings (more than the two periods after which a silent
    // peer counts as gone; well within the 2 s deadline of each append the edge has started).
    let mut pings = 0;
    let mut seqs = std::collections::HashMap::with_capacity(total);
    while seqs.len() < total {
        let msg = tokio::time::timeout(PATIENCE, read.next())
            .await
            .unwrap_or_else(|_| panic!("an ack in time ({} of {total})", seqs.len()))
            .unwrap_or_else(|| panic!("closed after {} acks of {total}", seqs.len()))
            .expect("a frame");
        if let Message::Ping(_) = msg {
            pings += 1;
            if pings == 3 {
                app.nats.resume();
            }
        }
        let Message::Text(text) = msg else { continue };
        let frame: serde_json::Value = serde_json::from_str(text.as_str()).expect("json");
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == "ack" {
            let id = frame["id"].as_str().expect("id").to_string();
            seqs.insert(id, frame["seq"].as_u64().expect("seq"));
        }
    }
    let stored: Vec<u64> = ids.iter().map(|id| seqs[id]).collect();
    assert!(
        stored.windows(2).all(|w| w[0] < w[1]),
        "stored in the order sent"
    );
    drop(writer.await.expect("the writer"));

    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    let (_, seq) = bob.say("lobby", "still here").await;
    assert!(seq > stored[total - 1]);
}

#[tokio::test]
async fn an_edge_shutting_down_closes_every_socket_with_1001() {
    let mut app = common::spawn_app().await;
    let mut joined = app.ws("ada").await;
    joined.join("lobby", None).await;
    let mut idle = app.ws("bob").await;
    idle.assert_alive().await;
    app.shut_down_edge();
    for ws in [&mut joined, &mut idle] {
        let (_, ended) = ws.until_end(PATIENCE).await;
        assert!(
            matches!(ended, Ended::Closed(Some(1001))),
            "closed with {ended:?}"
        );
    }
}

#[tokio::test]
async fn the_edge_survives_a_nats_server_restart() {
    let mut app = spawn_app().await;
    let token = app.token("ada").await;
    let mut ada = app.ws("ada").await;
    let mut bob = app.ws("bob").await;
    ada.join("lobby", None).await;
    bob.join("lobby", None).await;
    let (_, before) = ada.say("lobby", "before the outage").await;
    assert_eq!(bob.next_message().await.0, before);

    app.nats.kill();
    // While NATS is down: `unavailable`, promptly, and /readyz says 503.
    let started = std::time::Instant::now();
    let id = uuid::Uuid::new_v4().to_string();
    ada.send(json!({"type": "send", "room": "lobby", "text": "during", "id": id}))
        .await;
    let error = ada.next_of("error").await;
    assert_eq!(error["code"], "unavailable", "{error}");
    assert_eq!(error["id"], id.as_str());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.request("GET", "/readyz", None, None).await.status, 503);
    assert_eq!(app.request("GET", "/healthz", None, None).await.status, 200);

    app.nats.restart().await;
    wait_ready(&app).await;
    // Retrying the same id after the outage stores it once.
    ada.send(json!({"type": "send", "room": "lobby", "text": "during", "id": id}))
        .await;
    let ack = ada.next_of("ack").await;
    let seq = ack["seq"].as_u64().unwrap();
    assert_eq!(bob.next_message().await.0, seq, "the live feed works again");
    let (_, after) = ada.say("lobby", "after").await;
    assert_eq!(bob.next_message().await.0, after);
    let stored = app.events("lobby", 0, &token).await;
    let seqs: Vec<u64> = stored.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.contains(&before), "the acknowledged event survived");
    assert_eq!(seqs.iter().filter(|&&s| s == seq).count(), 1);
}

async fn wait_ready(app: &common::TestApp) {
    chatlog_test_support::eventually("the edge ready again", PATIENCE, async || {
        (app.request("GET", "/readyz", None, None).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_gap_on_the_live_feed_is_filled_from_the_stream() {
    // Events stored while the feed's subscription was cut off (a NATS reconnect) reach a
    // joined client all the same, in order: the feed reads the stream up to the new head.
    let mut app = spawn_app().await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    let token = app.token("ada").await;

    app.nats.kill();
    app.nats.restart().await;
    // Append straight to the stream from another client before the edge has reconnected.
    let client = async_nats::connect(app.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let lobby = chatlog_events::RoomId::parse("lobby").unwrap();
    let ada = chatlog_events::UserId::parse("ada").unwrap();
    let mut seqs = Vec::new();
    for n in 0..3 {
        let ev = chatlog_events::ChatEvent::in_room(
            &lobby,
            ada.clone(),
            "test",
            chatlog_events::Payload::MessagePosted(chatlog_events::event::MessagePosted {
                text: format!("while away {n}"),
                mentions: vec![],
                reply_to: None,
                attachments: Vec::new(),
            }),
        );
        let enc = ev.encode().unwrap();
        let ack = js
            .publish_with_headers(enc.subject, enc.headers, enc.body)
            .await
            .unwrap()
            .await
            .unwrap();
        seqs.push(ack.sequence);
    }
    wait_ready(&app).await;
    let mut got = Vec::new();
    while got.len() < seqs.len() {
        got.push(bob.next_message().await.0);
    }
    assert_eq!(got, seqs);
    let stored = app.events("lobby", 0, &token).await;
    let messages = stored
        .iter()
        .filter(|e| e["event"]["type"] == "chat.message.posted")
        .count();
    assert_eq!(messages, 3, "the three messages, once each");
}
