//! The deployment's first steps: `chatlog setup` gives a cluster's streams (and the handlers'
//! marks bucket) three replicas even
//! when its servers advertise no peers (as the official Helm chart runs them), an edge starting
//! afterwards changes nothing, and a component refuses the repository's placeholder secrets.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use chatlog_test_support::NatsCluster;

#[tokio::test]
async fn setup_on_a_cluster_without_advertised_peers_makes_r3_streams_that_an_edge_keeps() {
    let cluster = NatsCluster::start_with(3, "no_advertise: true").await;
    common::setup(&cluster.urls());
    let client = async_nats::connect(cluster.nodes[0].url()).await.unwrap();
    assert!(
        client.server_info().connect_urls.is_empty(),
        "no peers advertised"
    );
    let js = jetstream::new(client);
    let replicas = |js: jetstream::Context| async move {
        let mut out = Vec::new();
        for name in [
            "CHAT_ROOMS",
            "CHAT_PRESENCE",
            "CHAT_USERS",
            "CHAT_ACCOUNTS",
            "CHAT_FUNCTIONS",
            "CHAT_DEAD",
            "KV_CHATLOG_MARKS",
        ] {
            let info = js.get_stream(name).await.unwrap().cached_info().clone();
            out.push((name, info.config.num_replicas));
        }
        out
    };
    for (name, n) in replicas(js.clone()).await {
        assert_eq!(n, 3, "{name}");
    }
    // An edge starting (and so checking the streams) leaves them as they are.
    let data = tempfile::tempdir().unwrap();
    let (_edge, app) =
        common::serve(common::command(&cluster.urls(), data.path(), &["edge"])).await;
    let token = app.token("ada").await;
    let posted = app
        .post(
            "/api/rooms/lobby/messages",
            &token,
            serde_json::json!({"text": "hello"}),
        )
        .await;
    assert_eq!(posted.status, 201, "{posted:?}");
    for (name, n) in replicas(js).await {
        assert_eq!(n, 3, "{name} after an edge started");
    }
}

#[test]
fn an_edge_refuses_the_placeholder_secrets_of_the_repository_unless_dev() {
    let data = tempfile::tempdir().unwrap();
    for (var, value) in [
        (
            "CHATLOG_JWT_SECRET",
            "change-me-to-a-long-random-token-secret-of-64-characters-or-more",
        ),
        ("NATS_URL", "nats://edge:change-me-edge@127.0.0.1:1"),
        ("NATS_URL", "nats://edge:edge-dev-password@127.0.0.1:1"),
    ] {
        let mut edge = common::command("nats://127.0.0.1:1", data.path(), &["edge"]);
        edge.env(var, value)
            .env("CHATLOG_DEV", "false")
            .stderr(std::process::Stdio::piped());
        let started = std::time::Instant::now();
        let out = edge.output().unwrap();
        assert!(!out.status.success(), "{var}={value} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--dev"), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "refused before connecting"
        );
    }
    // With --dev the same passwords are accepted: permissions.rs runs `chatlog up` so.
}
