//! NATS least privilege: with the users of `infra/nats-auth.conf` (what `nats.conf` includes),
//! `chatlog setup` on admin's credentials and then `chatlog up` on the edge's and the handlers'
//! work end to end, and neither component can create, change, delete or purge a stream, create
//! or change a consumer it does not need, publish outside its subjects, or forge the live copies.

mod common;

use std::{path::PathBuf, time::Duration};

use async_nats::jetstream::{self, consumer::pull, stream};
use chatlog_test_support::NatsServer;
use futures::StreamExt;
use serde_json::json;

const EDGE: (&str, &str) = ("edge", "edge-dev-password");
const HANDLERS: (&str, &str) = ("handlers", "handlers-dev-password");
const FUNCTIONS: (&str, &str) = ("functions", "functions-dev-password");
const ADMIN: (&str, &str) = ("admin", "admin-dev-password");

fn auth_conf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../infra/nats-auth.conf")
}

async fn server() -> NatsServer {
    // Inlined rather than included: nats-server resolves includes relative to the config file.
    let auth = std::fs::read_to_string(auth_conf()).unwrap();
    NatsServer::start_with_auth(&auth, Some(ADMIN)).await
}

async fn connect(nats: &NatsServer, (user, password): (&str, &str)) -> async_nats::Client {
    chatlog_test_support::connect(&nats.url_as(user, password))
        .await
        .unwrap()
}

#[tokio::test]
async fn chatlog_up_works_with_least_privilege_credentials() {
    let nats = server().await;
    let data = tempfile::tempdir().unwrap();
    // The edge's user may not create the streams; admin's may.
    let mut denied = common::command(&nats.url_as(EDGE.0, EDGE.1), data.path(), &["setup"]);
    denied
        .args(["--wait", "0"])
        .stderr(std::process::Stdio::piped());
    let out = denied.output().unwrap();
    assert!(!out.status.success(), "the edge's user set the streams up");
    common::setup(&nats.url_as(ADMIN.0, ADMIN.1));
    let mut up = common::command(&nats.url_as(EDGE.0, EDGE.1), data.path(), &["up"]);
    // The repository's development passwords: accepted with --dev only.
    up.env("CHATLOG_DEV", "true");
    up.env("CHATLOG_MAX_FILE_BYTES", "200000");
    up.env(
        "CHATLOG_HANDLERS_NATS_URL",
        nats.url_as(HANDLERS.0, HANDLERS.1),
    );
    // The functions runtime too, as its own user (it follows the registry even when empty).
    up.env("CHATLOG_FUNCTIONS", "true").env(
        "CHATLOG_FUNCTIONS_NATS_URL",
        nats.url_as(FUNCTIONS.0, FUNCTIONS.1),
    );
    let (_up, app) = common::serve(up).await;

    // Accounts, rooms, chat, history, presence, mentions: every component at work.
    let a = app
        .request(
            "POST",
            "/api/auth/register",
            None,
            Some(json!({"user": "ada", "password": "ada's password"})),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let ada_token = a.body["token"].as_str().unwrap().to_string();
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    bob.presence_until("lobby", |online, _| online == ["bob"])
        .await;
    app.wait_member("lobby", "bob").await;
    let mut ada = app.ws_with_token(&ada_token).await;
    ada.join("lobby", Some(0)).await;
    let (_, seq) = ada.say("lobby", "hello @bob").await;
    assert_eq!(bob.next_message().await.0, seq);
    assert_eq!(
        bob.next_of("notification").await["event"]["data"]["seq"],
        seq
    );
    let token = app.token("bob").await;
    let page = app
        .get_until("/api/rooms/lobby/messages", &token, |b| {
            b["messages"].as_array().is_some_and(|m| !m.is_empty())
        })
        .await;
    assert_eq!(page["messages"][0]["text"], "hello @bob");
    // Every read that waits for the writes before it can learn where they are.
    for path in [
        "/api/rooms",
        "/api/rooms/lobby/events?since=0",
        "/api/rooms/lobby/presence",
        "/api/notifications",
        "/api/unread",
    ] {
        let a = app.get(path, &token).await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }
    // A private room's membership is read at its head, a removal appended at it.
    let a = app
        .post(
            "/api/rooms",
            &ada_token,
            json!({"id": "team", "private": true, "members": ["bob"]}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(
        app.get("/api/rooms/team/messages", &token).await.status,
        200
    );
    let removed = app
        .request(
            "DELETE",
            "/api/rooms/team/members/bob",
            Some(&ada_token),
            None,
        )
        .await;
    assert_eq!(removed.status, 204, "{removed:?}");
    assert_eq!(
        app.get("/api/rooms/team/messages", &token).await.status,
        404
    );

    // Files: stored, stored again (the duplicate's chunks purged), read back, and one over the
    // limit refused after its first chunk was stored (purged too). Only the first remains.
    let text = json!("a file's bytes");
    let up = app
        .post("/api/rooms/lobby/files", &token, text.clone())
        .await;
    assert_eq!(up.status, 201, "{up:?}");
    let again = app.post("/api/rooms/lobby/files", &ada_token, text).await;
    assert_eq!(again.body["id"], up.body["id"], "{again:?}");
    let id = up.body["id"].as_str().unwrap();
    let down = app.get(&format!("/api/files/{id}"), &token).await;
    assert_eq!(
        (down.status, down.text.as_str()),
        (200, "\"a file's bytes\"")
    );
    let big = json!("x".repeat(300_000));
    let over = app.post("/api/rooms/lobby/files", &token, big).await;
    assert_eq!(over.status, 413, "{over:?}");
    let admin = jetstream::new(connect(&nats, ADMIN).await);
    let mut bucket = admin.get_stream("OBJ_CHAT_FILES").await.unwrap();
    assert_eq!(
        bucket.info().await.unwrap().state.messages,
        2,
        "one chunk and its info"
    );
}

#[tokio::test]
async fn components_cannot_delete_purge_or_stray() {
    let nats = server().await;
    let admin = connect(&nats, ADMIN).await;
    let admin_js = jetstream::new(admin.clone());
    chatlog_events::streams::ensure(&admin_js, &Default::default())
        .await
        .unwrap();
    admin_js
        .get_stream("CHAT_ROOMS")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("audit".into()),
            description: Some("admin's".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    admin_js
        .publish("chat.function.echo", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut watch = admin.subscribe("stray.>").await.unwrap();
    let mut live = admin.subscribe("live.room.lobby").await.unwrap();
    admin.flush().await.unwrap();

    for creds in [EDGE, HANDLERS, FUNCTIONS] {
        let client = connect(&nats, creds).await;
        // A denied request is never answered: do not wait long for it.
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(300));
        for stream in [
            "CHAT_ROOMS",
            "CHAT_USERS",
            "CHAT_PRESENCE",
            "CHAT_ACCOUNTS",
            "CHAT_FUNCTIONS",
            "CHAT_DEAD",
            "KV_CHATLOG_MARKS",
        ] {
            assert!(
                js.delete_stream(stream).await.is_err(),
                "{} deleted {stream}",
                creds.0
            );
            let purged = match js.get_stream(stream).await {
                Ok(s) => s.purge().await.is_ok(),
                Err(_) => false,
            };
            assert!(!purged, "{} purged {stream}", creds.0);
        }
        // Streams are `chatlog setup`'s: no new one, no change to one (a leaked credential
        // cannot cut a room's history to its last message).
        let stray = stream::Config {
            name: "STRAY".into(),
            subjects: vec!["stray.>".into()],
            ..Default::default()
        };
        assert!(
            js.create_stream(stray).await.is_err(),
            "{} created a stream",
            creds.0
        );
        let mut cut = admin_js
            .get_stream("CHAT_ROOMS")
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        cut.max_messages_per_subject = 1;
        assert!(
            js.update_stream(&cut).await.is_err(),
            "{} changed CHAT_ROOMS",
            creds.0
        );
        // Consumers: none at all for the edge (it reads with direct gets); the handlers only on
        // the streams they project.
        let rooms = js.get_stream_no_info("CHAT_ROOMS").await.unwrap();
        let accounts = js.get_stream_no_info("CHAT_ACCOUNTS").await.unwrap();
        let durable = pull::Config {
            durable_name: Some("spy".into()),
            ..Default::default()
        };
        assert!(
            accounts
                .create_consumer(pull::OrderedConfig::default())
                .await
                .is_err(),
            "{} read CHAT_ACCOUNTS with a consumer",
            creds.0
        );
        // The functions' registry holds their secrets: only the functions runtime reads it,
        // and nobody but admin writes it.
        let registry = js.get_stream_no_info("CHAT_FUNCTIONS").await.unwrap();
        if creds != FUNCTIONS {
            assert!(
                registry
                    .create_consumer(pull::OrderedConfig::default())
                    .await
                    .is_err(),
                "{} read CHAT_FUNCTIONS with a consumer",
                creds.0
            );
            assert!(
                registry.direct_get(1).await.is_err(),
                "{} read CHAT_FUNCTIONS with a direct get",
                creds.0
            );
        }
        client
            .publish("chat.function.spy", "{}".into())
            .await
            .unwrap();
        if creds == EDGE {
            // The handlers' emission marks are theirs alone.
            assert!(js.get_key_value("CHATLOG_MARKS").await.is_err());
            assert!(rooms.create_consumer(durable).await.is_err());
            assert!(
                rooms
                    .create_consumer(pull::OrderedConfig::default())
                    .await
                    .is_err()
            );
            let changed = pull::Config {
                durable_name: Some("audit".into()),
                description: Some("the edge's".into()),
                ..Default::default()
            };
            assert!(rooms.update_consumer(changed).await.is_err());
            assert!(rooms.delete_consumer("audit").await.is_err());
        }
        client
            .publish("stray.subject", "nope".into())
            .await
            .unwrap();
        client
            .publish("live.room.lobby", "forged".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    }
    // The control: what admin publishes arrives, what the components published did not.
    admin.publish("stray.control", "ok".into()).await.unwrap();
    admin.flush().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), "stray.control");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), live.next())
            .await
            .is_err(),
        "nobody but the stream may publish the live copy"
    );
    let stream = admin_js.get_stream("CHAT_ROOMS").await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 0);
    // Only admin's registration is there.
    let registry = admin_js.get_stream("CHAT_FUNCTIONS").await.unwrap();
    assert_eq!(registry.cached_info().state.messages, 1);
    assert_eq!(stream.cached_info().config.max_messages_per_subject, -1);
    assert!(admin_js.get_stream("STRAY").await.is_err());
    let audit = stream
        .get_consumer::<pull::Config>("audit")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(audit.config.description.as_deref(), Some("admin's"));

    // The handlers can still read what they project, from any position.
    let handlers = jetstream::new(connect(&nats, HANDLERS).await);
    for name in ["CHAT_ROOMS", "CHAT_PRESENCE", "CHAT_USERS"] {
        handlers
            .get_stream(name)
            .await
            .unwrap()
            .create_consumer(pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: 1,
                },
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("the handlers could not read {name}: {e}"));
    }
    // And keep their marks.
    let marks = handlers.get_key_value("CHATLOG_MARKS").await.unwrap();
    let revision = marks.put("probe", "7".into()).await.unwrap();
    let entry = marks.entry("probe").await.unwrap().unwrap();
    assert_eq!(
        (entry.value.as_ref(), entry.revision),
        (&b"7"[..], revision)
    );

    // The edge can still do its own job.
    let edge = connect(&nats, EDGE).await;
    let ack = jetstream::new(edge)
        .publish("chat.room.lobby", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 1);
    let republished = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(republished.payload.as_ref(), b"{}");
}

#[tokio::test]
async fn the_functions_runtime_can_do_its_job_and_no_more() {
    let nats = server().await;
    let admin_js = jetstream::new(connect(&nats, ADMIN).await);
    chatlog_events::streams::ensure(&admin_js, &Default::default())
        .await
        .unwrap();
    admin_js
        .publish("chat.function.echo", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let client = connect(&nats, FUNCTIONS).await;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_millis(500));
    // Its job: the registry, a pinned durable consumer per function, acks, answers, dead letters.
    let registry = js.get_stream("CHAT_FUNCTIONS").await.unwrap();
    let mut read = registry
        .create_consumer(pull::OrderedConfig {
            filter_subject: "chat.function.*".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), read.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), "chat.function.echo");
    let ack = js
        .publish("chat.room.lobby", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("chat.dead.echo", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let rooms = js.get_stream("CHAT_ROOMS").await.unwrap();
    rooms
        .direct_get_first_for_subject("chat.room.lobby")
        .await
        .unwrap();
    let consumer = rooms
        .create_consumer(pull::Config {
            durable_name: Some("fn-echo-1".into()),
            filter_subject: "chat.room.>".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec!["chatlog".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.stream().group("chatlog").messages().await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(message.info().unwrap().stream_sequence, ack.sequence);
    message.double_ack().await.unwrap();
    let names: Vec<String> = rooms
        .consumer_names()
        .filter_map(|n| async { n.ok() })
        .collect()
        .await;
    assert_eq!(names, ["fn-echo-1"]);
    rooms.unpin_consumer("fn-echo-1", "chatlog").await.unwrap();
    drop(messages);
    rooms.delete_consumer("fn-echo-1").await.unwrap();

    // No more: the registry is admin's, the streams setup's, accounts nobody's to read.
    client
        .publish("chat.function.forged", "{}".into())
        .await
        .unwrap();
    client
        .publish("chat.account.ada", "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let accounts = js.get_stream_no_info("CHAT_ACCOUNTS").await.unwrap();
    assert!(accounts.direct_get(1).await.is_err());
    assert!(
        accounts
            .create_consumer(pull::OrderedConfig::default())
            .await
            .is_err()
    );
    assert!(js.delete_stream("CHAT_FUNCTIONS").await.is_err());
    assert!(
        registry.direct_get(1).await.is_err(),
        "the registry is read in order, not by gets"
    );
    let admin_registry = admin_js.get_stream("CHAT_FUNCTIONS").await.unwrap();
    assert_eq!(admin_registry.cached_info().state.messages, 1);
    let admin_accounts = admin_js.get_stream("CHAT_ACCOUNTS").await.unwrap();
    assert_eq!(admin_accounts.cached_info().state.messages, 0);
}
