//! Delivery end to end: a real nats-server, the runtime, and HTTP functions served by axum.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use axum::http::StatusCode;
use chatlog_events::functions::SIGNATURE_HEADER;
use chatlog_functions::signature;
use common::{Bench, Hook, SECRET, empty, say};

const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn an_event_is_delivered_as_a_signed_cloudevent_and_its_answer_stored_as_the_function() {
    let bench = Bench::start().await;
    let hook = Hook::start(|call| say(&format!("echo: {}", call.text()), None)).await;
    bench
        .register("echo", &hook, "chat.room.lobby", &["chat.message.posted"])
        .await;
    let runtime = bench.runtime().await;
    let (_, hello) = bench.post("lobby", "ada", "hello").await;

    let call = hook.wait_calls(1, WITHIN).await.remove(0);
    assert_eq!(call.header("ce-specversion"), "1.0");
    assert_eq!(call.id(), hello.id.to_string());
    assert_eq!(call.header("ce-type"), "chat.message.posted");
    assert_eq!(call.header("ce-source"), "/chatlog/edge");
    assert_eq!(call.header("ce-subject"), "lobby");
    let time: chrono::DateTime<chrono::Utc> = call.header("ce-time").parse().unwrap();
    assert_eq!(time, hello.time);
    assert_eq!(call.header("content-type"), "application/json");
    assert_eq!(
        call.data(),
        serde_json::json!({"text": "hello", "mentions": [], "user": "ada"})
    );
    let signed = call.header(SIGNATURE_HEADER);
    assert!(signed.starts_with("sha256="), "{signed}");
    assert!(signature::verify(SECRET.as_bytes(), &call.body, signed));

    let answers = chatlog_test_support::eventually("the answer stored", WITHIN, async || {
        let a = bench.answers("lobby").await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(answers.len(), 1);
    let echo = &answers[0];
    assert_eq!(echo.user.as_str(), "echo");
    assert_eq!(echo.component, "function/echo");
    let stored = bench.stored("chat.room.lobby").await;
    let (_, headers, body) = stored.last().unwrap();
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["source"], "/chatlog/function/echo");
    assert_eq!(json["data"]["text"], "echo: hello");
    assert_eq!(json["data"]["user"], "echo");
    assert_eq!(json["chatloghops"], 1);
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(echo.id.to_string().as_str())
    );

    // Its own answer matches its filter but does not come back to it: the next message, stored
    // after the answer on the same subject, is the next call.
    bench.post("lobby", "ada", "again").await;
    let calls = hook.wait_calls(2, WITHIN).await;
    assert_eq!(
        calls.iter().map(|c| c.text()).collect::<Vec<_>>(),
        ["hello", "again"]
    );
    // And neither does the second answer, once stored.
    chatlog_test_support::eventually("both answers skipped", WITHIN, async || {
        (bench.stats("echo").await["skipped"] == 2).then_some(())
    })
    .await;
    assert_eq!(bench.answers("lobby").await.len(), 2);
    assert_eq!(hook.calls().len(), 2);
    runtime.stop().await;
}

#[tokio::test]
async fn events_of_a_room_arrive_in_log_order_while_rooms_go_in_parallel() {
    let bench = Bench::start().await;
    let mut hook = Hook::ok().await;
    *hook.delay.lock().unwrap() = Duration::from_millis(15);
    bench.register("order", &hook, "chat.room.>", &[]).await;
    let runtime = bench.runtime().await;
    let rooms = ["lobby", "dev", "ops"];
    for i in 0..30 {
        bench.post(rooms[i % 3], "ada", &format!("{i}")).await;
    }
    let calls = hook.wait_calls(30, WITHIN).await;
    let mut per_room: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for c in &calls {
        per_room
            .entry(c.header("ce-subject").to_string())
            .or_default()
            .push(c.text().parse().unwrap());
    }
    for (room, seen) in &per_room {
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, &sorted, "{room}");
        assert_eq!(seen.len(), 10, "{room}");
    }
    // The rooms were not delivered one after the other.
    let first_of_each: Vec<usize> = rooms
        .iter()
        .map(|r| {
            calls
                .iter()
                .position(|c| c.header("ce-subject") == *r)
                .unwrap()
        })
        .collect();
    assert!(first_of_each.iter().all(|&i| i < 10), "{first_of_each:?}");
    runtime.stop().await;
    hook.stop().await;
}

#[tokio::test]
async fn a_function_down_for_a_while_misses_nothing_and_answers_each_event_once() {
    let bench = Bench::start().await;
    let mut hook = Hook::start(|call| say(&format!("re: {}", call.text()), None)).await;
    bench.register("patient", &hook, "chat.room.>", &[]).await;
    let runtime = bench
        .runtime_with(chatlog_functions::Config {
            tries: 100,
            max_backoff: Duration::from_millis(200),
            ..common::quick()
        })
        .await;
    bench.post("lobby", "ada", "before").await;
    hook.wait_calls(1, WITHIN).await;
    hook.stop().await;
    for text in ["a", "b", "c"] {
        bench.post("lobby", "ada", text).await;
    }
    bench.post("dev", "ada", "d").await;
    chatlog_test_support::eventually("failed calls while down", WITHIN, async || {
        let failed = bench.stats("patient").await["failed"].as_u64()?;
        (failed >= 2).then_some(())
    })
    .await;
    hook.resume().await;
    let texts_of = |answers: Vec<chatlog_events::ChatEvent>| -> Vec<String> {
        answers
            .iter()
            .map(|e| match &e.payload {
                chatlog_events::Payload::MessagePosted(p) => p.text.clone(),
                _ => String::new(),
            })
            .collect()
    };
    chatlog_test_support::eventually("every answer", WITHIN, async || {
        let a = [bench.answers("lobby").await, bench.answers("dev").await].concat();
        (a.len() >= 5).then_some(())
    })
    .await;
    // A last event in each room: delivered in order, after anything of those rooms still due.
    bench.post("lobby", "ada", "after").await;
    bench.post("dev", "ada", "after").await;
    let mut texts = chatlog_test_support::eventually("the last answers", WITHIN, async || {
        let texts = texts_of([bench.answers("lobby").await, bench.answers("dev").await].concat());
        (texts.iter().filter(|t| *t == "re: after").count() == 2).then_some(texts)
    })
    .await;
    texts.retain(|t| t != "re: after");
    texts.sort();
    assert_eq!(
        texts,
        ["re: a", "re: b", "re: before", "re: c", "re: d"],
        "each once"
    );
    let lobby: Vec<String> = hook
        .texts()
        .into_iter()
        .filter(|t| ["before", "a", "b", "c"].contains(&t.as_str()))
        .collect();
    assert_eq!(lobby, ["before", "a", "b", "c"], "in order, each once");
    assert_eq!(bench.stats("patient").await["dead"], 0);
    runtime.stop().await;
}

#[tokio::test]
async fn after_the_last_try_an_event_is_dead_lettered_and_later_events_still_flow() {
    let bench = Bench::start().await;
    let hook = Hook::start(|call| {
        if call.text() == "poison" {
            empty(StatusCode::INTERNAL_SERVER_ERROR)
        } else {
            empty(StatusCode::NO_CONTENT)
        }
    })
    .await;
    bench.register("picky", &hook, "chat.room.>", &[]).await;
    let runtime = bench.runtime().await;
    let (poison_seq, poison) = bench.post("lobby", "ada", "poison").await;
    bench.post("lobby", "ada", "after").await;
    bench.post("dev", "ada", "elsewhere").await;
    chatlog_test_support::eventually("the later events", WITHIN, async || {
        let texts = hook.texts();
        (texts.contains(&"after".to_string()) && texts.contains(&"elsewhere".to_string()))
            .then_some(())
    })
    .await;
    let texts = hook.texts();
    let lobby: Vec<&str> = texts
        .iter()
        .map(String::as_str)
        .filter(|t| *t != "elsewhere")
        .collect();
    assert_eq!(lobby, ["poison", "poison", "poison", "after"]);
    let dead = bench.stored("chat.dead.picky").await;
    assert_eq!(dead.len(), 1);
    let (_, headers, body) = &dead[0];
    let header = |n: &str| {
        headers
            .get(n)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    assert!(header("Chatlog-Dead-Reason").contains("500"), "{headers:?}");
    assert_eq!(header("Chatlog-Dead-Tries"), "3");
    assert_eq!(header("Chatlog-Dead-Stream"), "CHAT_ROOMS");
    assert_eq!(header("Chatlog-Dead-Seq"), poison_seq.to_string());
    assert_eq!(header("Chatlog-Dead-Subject"), "chat.room.lobby");
    assert_eq!(chatlog_events::ChatEvent::decode(body).unwrap(), poison);
    let stats = bench.stats("picky").await;
    assert_eq!(
        (stats["dead"].as_u64(), stats["failed"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(stats["delivered"], 2);
    runtime.stop().await;
}

#[tokio::test]
async fn bad_answers_are_rejected_and_counted_and_nothing_of_them_is_stored() {
    let bench = Bench::start().await;
    let hook = Hook::start(|call| {
        let ok = |ct: &str, body: axum::body::Body| {
            axum::http::Response::builder()
                .status(StatusCode::OK)
                .header("content-type", ct)
                .body(body)
                .unwrap()
        };
        match call.text().as_str() {
            "garbage" => ok("text/plain", "garbage!".into()),
            "json" => ok("application/json", r#"{"text":"not an event"}"#.into()),
            "forbidden" => axum::http::Response::builder()
                .status(StatusCode::OK)
                .header("ce-specversion", "1.0")
                .header("ce-id", "x")
                .header("ce-source", "/bot")
                .header("ce-type", "chat.room.created")
                .header("content-type", "application/json")
                .body(r#"{"name":"mine"}"#.into())
                .unwrap(),
            // 10 MB, streamed without a length.
            "huge" => {
                let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
                let chunks = futures::stream::iter(
                    (0..160).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                ok(
                    "application/cloudevents+json",
                    axum::body::Body::from_stream(chunks),
                )
            }
            "elsewhere" => say("into dev", Some("dev")),
            "blank" => say(" \n ", None),
            "fine" => say("fine indeed", None),
            _ => common::empty(StatusCode::OK),
        }
    })
    .await;
    bench.register("bad", &hook, "chat.room.lobby", &[]).await;
    let runtime = bench.runtime().await;
    for text in [
        "garbage",
        "json",
        "forbidden",
        "huge",
        "elsewhere",
        "blank",
        "fine",
    ] {
        bench.post("lobby", "ada", text).await;
    }
    let answers = chatlog_test_support::eventually("the fine answer", WITHIN, async || {
        let a = bench.answers("lobby").await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(answers.len(), 1, "only the fine answer: {answers:?}");
    assert!(bench.answers("dev").await.is_empty());
    let stats = bench.stats("bad").await;
    assert_eq!(stats["rejected"], 6, "{stats}");
    assert_eq!(stats["delivered"], 7, "{stats}");
    assert_eq!(stats["answers"], 1, "{stats}");
    let kinds = &stats["rejections"];
    assert_eq!(kinds["not_a_cloudevent"], 2, "{stats}");
    assert_eq!(kinds["forbidden_type"], 1, "{stats}");
    assert_eq!(kinds["too_large"], 1, "{stats}");
    assert_eq!(kinds["not_covered"], 1, "{stats}");
    assert_eq!(kinds["bad_text"], 1, "{stats}");
    // Nothing was dead-lettered: the function took every event.
    assert_eq!(stats["dead"], 0);
    runtime.stop().await;
}

#[tokio::test]
async fn an_answer_into_a_private_or_missing_room_is_rejected() {
    let bench = Bench::start().await;
    let hook = Hook::start(|call| match call.text().as_str() {
        "private" => say("psst", Some("secret")),
        "missing" => say("hello?", Some("nowhere")),
        _ => empty(StatusCode::OK),
    })
    .await;
    bench.register("nosy", &hook, "chat.room.>", &[]).await;
    let runtime = bench.runtime().await;
    bench.post("lobby", "ada", "private").await;
    bench.post("lobby", "ada", "missing").await;
    chatlog_test_support::eventually("both rejected", WITHIN, async || {
        (bench.stats("nosy").await["rejected"] == 2).then_some(())
    })
    .await;
    assert_eq!(bench.stats("nosy").await["rejections"]["no_such_room"], 2);
    assert!(bench.stored("chat.room.nowhere").await.is_empty());
    assert!(bench.answers("secret").await.is_empty());
    runtime.stop().await;
}

#[tokio::test]
async fn two_functions_answering_each_other_stop_at_the_hop_limit() {
    let bench = Bench::start().await;
    let ping = Hook::start(|_| say("ping", None)).await;
    let pong = Hook::start(|_| say("pong", None)).await;
    bench.register("ping", &ping, "chat.room.lobby", &[]).await;
    bench.register("pong", &pong, "chat.room.lobby", &[]).await;
    let runtime = bench.runtime().await;
    bench.post("lobby", "ada", "serve").await;
    // Each answers the user and every answer of the other: two answers per hop, four hops.
    chatlog_test_support::eventually("both loops stopped", WITHIN, async || {
        let ping = bench.stats("ping").await["rejections"]["loop"].as_u64();
        let pong = bench.stats("pong").await["rejections"]["loop"].as_u64();
        (ping == Some(1) && pong == Some(1)).then_some(())
    })
    .await;
    // Both refused an answer at the limit: each has taken every event of the room but its own
    // answers (skipped), so the counts below are final.
    let answers = bench.answers("lobby").await;
    assert_eq!(answers.len(), 8, "{answers:?}");
    assert_eq!(
        ping.calls().len(),
        5,
        "the user's message and pong's four answers"
    );
    assert_eq!(pong.calls().len(), 5);
    let hops: Vec<u64> = bench
        .stored("chat.room.lobby")
        .await
        .iter()
        .filter_map(|(_, _, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter_map(|v| v["chatloghops"].as_u64())
        .collect();
    assert_eq!(hops.iter().max(), Some(&4));
    runtime.stop().await;
}

#[tokio::test]
async fn a_function_that_stays_down_does_not_slow_another() {
    let bench = Bench::start().await;
    let mut down = Hook::ok().await;
    down.stop().await;
    let slow = Hook::ok().await;
    *slow.delay.lock().unwrap() = Duration::from_secs(30);
    let fast = Hook::ok().await;
    bench.register("down", &down, "chat.room.>", &[]).await;
    bench.register("slow", &slow, "chat.room.>", &[]).await;
    bench.register("fast", &fast, "chat.room.>", &[]).await;
    let runtime = bench
        .runtime_with(chatlog_functions::Config {
            tries: 1000,
            timeout: Duration::from_secs(20),
            ..common::quick()
        })
        .await;
    let started = std::time::Instant::now();
    for i in 0..40 {
        bench
            .post(["lobby", "dev"][i % 2], "ada", &format!("{i}"))
            .await;
    }
    fast.wait_calls(40, WITHIN).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The slow one holds one call per room (its subjects wait behind their first event).
    assert_eq!(slow.calls().len(), 2);
    runtime.stop().await;
}

#[tokio::test]
async fn a_restarted_runtime_resumes_where_the_durable_consumer_is() {
    let bench = Bench::start().await;
    let hook = Hook::ok().await;
    bench.register("steady", &hook, "chat.room.>", &[]).await;
    let runtime = bench.runtime().await;
    for i in 0..5 {
        bench.post("lobby", "ada", &format!("{i}")).await;
    }
    hook.wait_calls(5, WITHIN).await;
    runtime.stop().await;
    for i in 5..10 {
        bench.post("lobby", "ada", &format!("{i}")).await;
    }
    let runtime = bench.runtime().await;
    hook.wait_calls(10, WITHIN).await;
    // A crash gives nothing back: what was not acknowledged comes again after ack_wait.
    *hook.delay.lock().unwrap() = Duration::from_millis(500);
    bench.post("lobby", "ada", "10").await;
    hook.wait_calls(11, WITHIN).await;
    runtime.crash();
    *hook.delay.lock().unwrap() = Duration::ZERO;
    bench.post("lobby", "ada", "11").await;
    let runtime = bench.runtime().await;
    let texts = chatlog_test_support::eventually("the rest", WITHIN, async || {
        let t = hook.texts();
        t.contains(&"11".to_string()).then_some(t)
    })
    .await;
    let expected: Vec<String> = (0..=11).map(|i| i.to_string()).collect();
    let unique: Vec<String> = {
        let mut seen = HashSet::new();
        texts
            .iter()
            .filter(|t| seen.insert(t.to_string()))
            .cloned()
            .collect()
    };
    assert_eq!(unique, expected, "in order, nothing lost");
    // Only the event in flight at the crash came twice.
    assert_eq!(texts.len(), 13, "{texts:?}");
    assert_eq!(texts[11], "10");
    runtime.stop().await;
}
