//! Files no live message carries are removed (docs/protocol.md §10) on the NATS users of
//! `infra/nats-auth.conf`: the edge's own sweeper and its release after an author's delete run on
//! the edge's least-privilege user, and `chatlog files gc` sweeps once as admin.

mod common;

use std::{path::PathBuf, time::Duration};

use async_nats::jetstream;
use chatlog_test_support::{NatsServer, eventually};
use serde_json::json;

const EDGE: (&str, &str) = ("edge", "edge-dev-password");
const HANDLERS: (&str, &str) = ("handlers", "handlers-dev-password");
const ADMIN: (&str, &str) = ("admin", "admin-dev-password");

async fn server() -> NatsServer {
    let conf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../infra/nats-auth.conf");
    let auth = std::fs::read_to_string(conf).unwrap();
    NatsServer::start_with_auth(&auth, Some(ADMIN)).await
}

/// Whether the bucket holds `id` (not deleted), as any Object Store client reads it.
async fn stored(admin: &jetstream::Context, id: &str) -> bool {
    let store = admin.get_object_store("CHAT_FILES").await.unwrap();
    store.info(id).await.is_ok_and(|info| !info.deleted)
}

#[tokio::test]
async fn the_edge_removes_files_on_its_own_user_and_files_gc_sweeps_as_admin() {
    let nats = server().await;
    let data = tempfile::tempdir().unwrap();
    common::setup(&nats.url_as(ADMIN.0, ADMIN.1));
    let mut up = common::command(&nats.url_as(EDGE.0, EDGE.1), data.path(), &["up"]);
    up.env("CHATLOG_DEV", "true")
        .env(
            "CHATLOG_HANDLERS_NATS_URL",
            nats.url_as(HANDLERS.0, HANDLERS.1),
        )
        .env("CHATLOG_FILES_SWEEP_SECS", "1")
        .env("CHATLOG_FILES_UNATTACHED_SECS", "3");
    let (mut edge, app) = common::serve(up).await;
    let admin = jetstream::new(
        chatlog_test_support::connect(&nats.url_as(ADMIN.0, ADMIN.1))
            .await
            .unwrap(),
    );
    let token = app.token("ada").await;
    let upload = async |text: &str| {
        let up = app
            .post("/api/rooms/lobby/files", &token, json!(text))
            .await;
        assert_eq!(up.status, 201, "{up:?}");
        up.body["id"].as_str().unwrap().to_string()
    };

    // Attached, then deleted by its author: gone for readers at once, from the bucket after.
    let attached = upload("attached").await;
    let posted = app
        .post(
            "/api/rooms/lobby/messages",
            &token,
            json!({"text": "look", "attachments": [attached]}),
        )
        .await;
    assert_eq!(posted.status, 201, "{posted:?}");
    let mut ws = app.ws_with_token(&token).await;
    ws.send(json!({"type": "delete", "room": "lobby", "message_id": posted.body["id"]}))
        .await;
    ws.next_of("ack").await;
    assert_eq!(
        app.get(&format!("/api/files/{attached}"), &token)
            .await
            .status,
        404
    );
    // Never attached: the edge's sweeper takes it once older than the period.
    let unattached = upload("never attached").await;
    assert!(stored(&admin, &unattached).await);
    eventually(
        "both files removed by the edge",
        Duration::from_secs(20),
        async || {
            (!stored(&admin, &attached).await && !stored(&admin, &unattached).await).then_some(())
        },
    )
    .await;
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    let removed: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("chatlog_edge_files_removed_total ")?
                .parse()
                .ok()
        })
        .unwrap();
    assert!(removed >= 2, "{metrics}");

    // An edge that does not sweep: `chatlog files gc` as admin sweeps once, and says what it
    // removed (a file put straight into the bucket, its last upload long ago).
    edge.kill9();
    drop(ws);
    let mut up = common::command(&nats.url_as(EDGE.0, EDGE.1), data.path(), &["up"]);
    up.env("CHATLOG_DEV", "true")
        .env(
            "CHATLOG_HANDLERS_NATS_URL",
            nats.url_as(HANDLERS.0, HANDLERS.1),
        )
        .env("CHATLOG_FILES_SWEEP_SECS", "0");
    let (_up, _app) = common::serve(up).await;
    let store = admin.get_object_store("CHAT_FILES").await.unwrap();
    let bytes: &[u8] = b"put straight into the bucket";
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let id = format!("lobby.{digest}");
    let mut meta: async_nats::jetstream::object_store::ObjectMetadata = id.as_str().into();
    meta.metadata = [
        ("name".to_string(), "raw".to_string()),
        ("content-type".to_string(), "text/plain".to_string()),
        (
            "created".to_string(),
            "2020-01-01T00:00:00.000Z".to_string(),
        ),
        (
            "uploaded".to_string(),
            "2020-01-01T00:00:00.000Z".to_string(),
        ),
    ]
    .into();
    let mut reader = bytes;
    store.put(meta, &mut reader).await.unwrap();
    let out = eventually(
        "chatlog files gc with the history view up",
        Duration::from_secs(20),
        async || {
            let mut gc = common::command(
                &nats.url_as(ADMIN.0, ADMIN.1),
                data.path(),
                &["files", "gc"],
            );
            let out = gc.stdout(std::process::Stdio::piped()).output().unwrap();
            out.status.success().then(|| {
                (
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
        },
    )
    .await;
    let (out, said) = out;
    assert_eq!(out.trim(), id, "{said}");
    assert!(!stored(&admin, &id).await);
}
