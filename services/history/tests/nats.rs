//! The history view's answers through a real nats-server, whose `max_payload` (1 MiB) drops any
//! larger reply: the abusive cases that made `GET /api/rooms/R/messages` and `GET /api/rooms`
//! answer 503 for good (messages of 3 990 multi-byte or escaped characters; rooms with
//! 1 000-character topics, each over 1 MiB as one answer) are answered, page after page, to the
//! last message and room.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use chatlog_events::{
    ChatEvent, Payload, RoomId,
    event::{MessagePosted, RoomCreated},
    queries::{
        CHECKSUM, MAX_ANSWER_BYTES, MIN_SEQ_HEADER, MessagesAnswer, MessagesRequest, RoomsAnswer,
        RoomsRequest, history, subject,
    },
    streams::{self, StreamSettings},
};
use chatlog_history::History;
use chatlog_runtime::{HostConfig, HostStats};
use chatlog_test_support::{NatsServer, eventually, fixtures::user};
use serde::{Serialize, de::DeserializeOwned};

/// Asks the view over NATS once it holds `seq`; the reply must come, and within the bound.
/// Returns the answer and its size.
async fn ask<T: DeserializeOwned>(
    client: &async_nats::Client,
    query: &str,
    request: &impl Serialize,
    seq: u64,
) -> (T, usize) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MIN_SEQ_HEADER, seq.to_string().as_str());
    let body = serde_json::to_vec(request).unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request_with_headers(subject(history::VIEW, query), headers, body.into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{query}: no answer"))
    .unwrap_or_else(|e| panic!("{query}: {e}"));
    assert!(reply.payload.len() <= MAX_ANSWER_BYTES, "{query}");
    let answer = serde_json::from_slice(&reply.payload).unwrap_or_else(|e| panic!("{query}: {e}"));
    (answer, reply.payload.len())
}

#[tokio::test]
async fn the_abusive_rooms_and_messages_are_answered_through_nats_page_after_page() {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    streams::ensure(&js, &StreamSettings::default())
        .await
        .unwrap();

    // 300 rooms with 100-character names and 1 000-character topics of emoji (4 bytes each); in
    // the first, 100 messages of 3 990 characters, emoji or `\` (2 bytes each in JSON) in turn.
    let ada = user("ada");
    let rooms: Vec<RoomId> = (0..300)
        .map(|r| RoomId::parse(format!("room-{r:03}")).unwrap())
        .collect();
    let mut events: Vec<ChatEvent> = rooms
        .iter()
        .map(|room| {
            let created = RoomCreated {
                name: "🎉".repeat(100),
                topic: "🎉".repeat(1000),
                private: false,
                members: vec![],
            };
            ChatEvent::in_room(room, ada.clone(), "test", Payload::RoomCreated(created))
        })
        .collect();
    let texts: Vec<String> = (0..100)
        .map(|i| if i % 2 == 0 { "🎉" } else { "\\" }.repeat(3990))
        .collect();
    for text in &texts {
        let posted = MessagePosted {
            text: text.clone(),
            mentions: vec![],
            reply_to: None,
            attachments: Vec::new(),
        };
        let payload = Payload::MessagePosted(posted);
        events.push(ChatEvent::in_room(&rooms[0], ada.clone(), "test", payload));
    }
    let mut acks = Vec::new();
    for event in &events {
        let enc = event.encode().unwrap();
        let ack = js.publish_with_headers(enc.subject, enc.headers, enc.body);
        acks.push(ack.await.unwrap());
    }
    let mut head = 0;
    for ack in acks {
        head = ack.await.unwrap().sequence;
    }

    let views = tempfile::tempdir().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(chatlog_runtime::run(
        History,
        client.clone(),
        HostConfig::new(views.path().join("history")),
        Arc::new(HostStats::default()),
        async move {
            let _ = stopped.await;
        },
    ));

    // Once the service answers (the queries wait for `head` themselves): its registration has no
    // event to await, so it is asked until it responds.
    eventually("the view answering", Duration::from_secs(30), async || {
        let asked = client.request(subject(history::VIEW, CHECKSUM), "{}".into());
        asked.await.ok()
    })
    .await;

    // Every message, once, in order, paging back from the latest.
    let mut paged = Vec::new();
    let mut before = None;
    let mut bytes = 0;
    loop {
        let request = MessagesRequest {
            room: rooms[0].clone(),
            before,
            limit: 200,
        };
        let (page, size): (MessagesAnswer, _) =
            ask(&client, history::MESSAGES, &request, head).await;
        bytes += size;
        before = page.messages.first().map(|m| m.seq);
        paged.splice(0..0, page.messages.into_iter().map(|m| m.text));
        if !page.has_more {
            break;
        }
    }
    assert!(bytes > 1 << 20, "as one answer, {bytes} bytes: dropped");
    assert_eq!(paged, texts);

    // Every room, once, by id, paging on after the last one.
    let mut listed = Vec::new();
    let mut after = None;
    let mut bytes = 0;
    loop {
        let request = RoomsRequest {
            user: user("bob"),
            after,
            limit: Some(500),
        };
        let (page, size): (RoomsAnswer, _) = ask(&client, history::ROOMS, &request, head).await;
        bytes += size;
        after = page.rooms.last().map(|r| r.room.id.clone());
        listed.extend(page.rooms.into_iter().map(|r| r.room.id));
        if !page.has_more {
            break;
        }
    }
    assert!(bytes > 1 << 20, "as one answer, {bytes} bytes: dropped");
    assert_eq!(listed, rooms);

    let _ = stop.send(());
    host.await.unwrap().unwrap();
}
