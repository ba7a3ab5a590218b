//! What goes wrong around the runtime: acks lost, replicas, registry changes while running.

mod common;

use std::{collections::HashSet, time::Duration};

use chatlog_events::functions::{FunctionName, FunctionSpec, Source};
use chatlog_test_support::{NatsServer, eventually};
use common::{Bench, Hook, say};
use futures::StreamExt;

const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_answer_is_stored_once_however_often_the_event_is_delivered_again() {
    // The runtime's user may not acknowledge: every event comes back after ack_wait, and the
    // function answers it again each time.
    let nats = NatsServer::start_with_auth(
        r#"authorization { users = [
            { user: admin, password: admin }
            { user: noack, password: noack, permissions: {
                publish: { allow: [">"], deny: ["$JS.ACK.>"] }, subscribe: { allow: [">"] } } }
        ] }"#,
        Some(("admin", "admin")),
    )
    .await;
    let noack = chatlog_test_support::connect(&nats.url_as("noack", "noack"))
        .await
        .unwrap();
    let bench = Bench::on(nats, Some(("admin", "admin"))).await;
    let hook = Hook::start(|_| say("pong", None)).await;
    bench
        .register("ponger", &hook, "chat.room.lobby", &[])
        .await;
    let runtime = common::Runtime::start(noack, common::quick()).await;
    let (_, ping) = bench.post("lobby", "ada", "ping").await;
    let calls = hook.wait_calls(3, WITHIN).await;
    assert!(
        calls.iter().all(|c| c.id() == ping.id.to_string()),
        "{calls:?}"
    );
    runtime.crash();
    let answers = bench.answers("lobby").await;
    assert_eq!(answers.len(), 1, "{answers:?}");
}

#[tokio::test]
async fn replicas_deliver_each_event_once_in_order_and_one_takes_over_when_the_other_stops() {
    let bench = Bench::start().await;
    let hook = Hook::ok().await;
    *hook.delay.lock().unwrap() = Duration::from_millis(5);
    bench.register("shared", &hook, "chat.room.>", &[]).await;
    let one = bench.runtime().await;
    let two = bench.runtime().await;
    for i in 0..20 {
        bench
            .post(["lobby", "dev"][i % 2], "ada", &format!("{i}"))
            .await;
    }
    hook.wait_calls(20, WITHIN).await;
    one.stop().await;
    // The last two (30 and 31) come after anything of their room still due: in order, a second
    // delivery of an earlier event would show before them.
    for i in 20..32 {
        bench
            .post(["lobby", "dev"][i % 2], "ada", &format!("{i}"))
            .await;
    }
    let calls = hook.wait_calls(32, WITHIN).await;
    assert_eq!(calls.len(), 32, "each once");
    for (room, parity) in [("lobby", 0), ("dev", 1)] {
        let seen: Vec<u32> = calls
            .iter()
            .filter(|c| c.header("ce-subject") == room)
            .map(|c| c.text().parse().unwrap())
            .collect();
        let expected: Vec<u32> = (0..32).filter(|i| i % 2 == parity).collect();
        assert_eq!(seen, expected, "{room}");
    }
    two.stop().await;
}

#[tokio::test]
async fn a_function_changed_or_removed_while_running_follows_the_registry() {
    let bench = Bench::start().await;
    let first = Hook::ok().await;
    let second = Hook::ok().await;
    let witness = Hook::ok().await;
    bench
        .register("moving", &first, "chat.room.lobby", &[])
        .await;
    bench
        .register("witness", &witness, "chat.room.lobby", &[])
        .await;
    let runtime = bench.runtime().await;
    bench.post("lobby", "ada", "one").await;
    first.wait_calls(1, WITHIN).await;

    // A new URL: the same consumer goes on, to the new address.
    let name = FunctionName::parse("moving").unwrap();
    let spec = FunctionSpec {
        url: second.url(),
        secret: common::SECRET.into(),
        stream: Source::Rooms,
        subject: "chat.room.lobby".into(),
        types: vec![],
        moderates: vec![],
    };
    assert!(
        chatlog_functions::registry::register(&bench.js, name.clone(), spec.clone(), false)
            .await
            .is_err(),
        "registered twice without --replace"
    );
    chatlog_functions::registry::register(&bench.js, name.clone(), spec, true)
        .await
        .unwrap();
    let registry = chatlog_functions::registry::load(&bench.js).await.unwrap();
    let consumer = registry.get(&name).unwrap().consumer();
    eventually("the new url used", WITHIN, async || {
        bench.post("lobby", "ada", "two").await;
        (!second.calls().is_empty()).then_some(())
    })
    .await;
    let seen: HashSet<String> = [first.texts(), second.texts()]
        .concat()
        .into_iter()
        .collect();
    assert_eq!(
        seen.len(),
        first.calls().len() + second.calls().len(),
        "each once"
    );

    // Removed: no more calls, and its consumer is gone.
    chatlog_functions::registry::remove(&bench.js, name.clone())
        .await
        .unwrap();
    let rooms = bench.js.get_stream("CHAT_ROOMS").await.unwrap();
    eventually("the consumer deleted", WITHIN, async || {
        let names: Vec<String> = rooms
            .consumer_names()
            .filter_map(|n| async { n.ok() })
            .collect()
            .await;
        (!names.contains(&consumer)).then_some(())
    })
    .await;
    let before = first.calls().len() + second.calls().len();
    bench.post("lobby", "ada", "three").await;
    eventually("the witness got it", WITHIN, async || {
        witness.texts().contains(&"three".to_string()).then_some(())
    })
    .await;
    // Its consumer is gone (above), so nothing can reach it; the witness got the event it would
    // have got.
    assert_eq!(first.calls().len() + second.calls().len(), before);
    assert!(
        chatlog_functions::registry::remove(&bench.js, name)
            .await
            .is_err(),
        "removed twice"
    );
    runtime.stop().await;
}

#[tokio::test]
async fn a_runtime_started_after_a_removal_deletes_the_consumer_left_behind() {
    let bench = Bench::start().await;
    let hook = Hook::ok().await;
    bench.register("gone", &hook, "chat.room.>", &[]).await;
    let runtime = bench.runtime().await;
    bench.post("lobby", "ada", "hi").await;
    hook.wait_calls(1, WITHIN).await;
    runtime.crash();
    chatlog_functions::registry::remove(&bench.js, FunctionName::parse("gone").unwrap())
        .await
        .unwrap();
    let rooms = bench.js.get_stream("CHAT_ROOMS").await.unwrap();
    let fn_consumers = async || -> Vec<String> {
        rooms
            .consumer_names()
            .filter_map(|n| async { n.ok() })
            .filter(|n| std::future::ready(n.starts_with("fn-")))
            .collect()
            .await
    };
    assert_eq!(fn_consumers().await.len(), 1);
    let runtime = bench.runtime().await;
    eventually("the consumer deleted", WITHIN, async || {
        fn_consumers().await.is_empty().then_some(())
    })
    .await;
    runtime.stop().await;
}

#[tokio::test]
async fn dead_letters_are_delivered_again_on_replay_and_removed_once_taken() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let bench = Bench::start().await;
    let failing = Arc::new(AtomicBool::new(true));
    let down = failing.clone();
    let hook = Hook::start(move |call| {
        if down.load(Ordering::Relaxed) {
            common::empty(axum::http::StatusCode::SERVICE_UNAVAILABLE)
        } else {
            say(&format!("late {}", call.text()), None)
        }
    })
    .await;
    bench.register("flaky", &hook, "chat.room.>", &[]).await;
    let runtime = bench.runtime().await;
    bench.post("lobby", "ada", "a").await;
    bench.post("lobby", "ada", "b").await;
    eventually("both dead", WITHIN, async || {
        (bench.stored("chat.dead.flaky").await.len() == 2).then_some(())
    })
    .await;
    runtime.stop().await;
    let name = FunctionName::parse("flaky").unwrap();
    let replay = || chatlog_functions::replay_dead(bench.client.clone(), common::quick(), &name);
    let still = replay().await.unwrap();
    assert_eq!((still.taken, still.left), (0, 2), "{still:?}");
    assert!(still.failure.unwrap().contains("503"));
    failing.store(false, Ordering::Relaxed);
    let done = replay().await.unwrap();
    assert_eq!((done.taken, done.left, done.failure), (2, 0, None));
    assert!(bench.stored("chat.dead.flaky").await.is_empty());
    let texts: Vec<String> = hook.texts();
    assert_eq!(texts[texts.len() - 2..], ["a", "b"], "in order");
    let answers = bench.answers("lobby").await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    let again = replay().await.unwrap();
    assert_eq!((again.taken, again.left), (0, 0));
}
