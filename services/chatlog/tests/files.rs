//! `chatlog files ls|get|stats` on what an edge stored: the bucket read as an Object Store, on
//! admin's credentials (here: a server without users).

mod common;

use chatlog_test_support::NatsServer;
use serde_json::json;

#[tokio::test]
async fn the_cli_lists_reads_and_counts_the_files() {
    let nats = NatsServer::start().await;
    common::setup(&nats.url());
    let data = tempfile::tempdir().unwrap();
    let (_up, app) = common::serve(common::command(&nats.url(), data.path(), &["up"])).await;
    let token = app.token("ada").await;
    let den = app.post("/api/rooms", &token, json!({"id": "den"})).await;
    assert_eq!(den.status, 201);
    // The test client sends JSON: the files are JSON texts.
    let mut ids = Vec::new();
    for (room, body) in [
        ("lobby", json!("first")),
        ("den", json!("x".repeat(200_000))),
    ] {
        let up = app
            .post(
                &format!("/api/rooms/{room}/files?name=a%20b.json"),
                &token,
                body,
            )
            .await;
        assert_eq!(up.status, 201, "{up:?}");
        ids.push(up.body["id"].as_str().unwrap().to_string());
    }
    let files = |args: &[&str]| {
        let mut all = vec!["files"];
        all.extend_from_slice(args);
        common::stdout_of(common::command(&nats.url(), data.path(), &all))
    };

    let listed = files(&["ls"]);
    let lines: Vec<Vec<&str>> = listed.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{listed}");
    let lobby = lines
        .iter()
        .find(|l| l[0] == ids[0])
        .expect("the lobby's file");
    assert_eq!(&lobby[1..5], ["lobby", "a b.json", "7", "application/json"]);
    assert!(lobby[5].starts_with("20"), "a time: {}", lobby[5]);
    let only_den = files(&["ls", "--room", "den"]);
    assert_eq!(only_den.lines().count(), 1);
    assert!(only_den.starts_with(&ids[1]), "{only_den}");

    assert_eq!(files(&["get", &ids[0]]), "\"first\"");
    let out = data.path().join("den.json");
    files(&["get", &ids[1], "-o", out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("\"{}\"", "x".repeat(200_000))
    );

    let stats = files(&["stats"]);
    assert!(stats.contains("files\t2\n"), "{stats}");
    assert!(
        stats.contains(&format!("bytes\t{}\n", 7 + 200_002)),
        "{stats}"
    );
    // Two objects: one chunk and two, and an info each.
    assert!(stats.contains("stream_messages\t5\n"), "{stats}");
}
