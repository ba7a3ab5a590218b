//! Files (docs/protocol.md §10) end to end on a real nats-server: upload, download with its
//! headers and ranges, who may do either, and that every refused or broken upload leaves
//! nothing in the `CHAT_FILES` bucket (its stream's message count, read from JetStream).

mod common;

use common::{
    PATIENCE, TestApp,
    files::{chunked, download, metric, png, send, sha256_hex, stored_messages, upload},
    spawn_app, spawn_app_with,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Uploads `body` (already in chunked transfer coding, [`chunked`]) to lobby as a PNG, with
/// `auth` as the `Authorization` header.
async fn upload_chunked(app: &TestApp, auth: &str, body: &[u8]) -> common::files::Answer {
    send(
        app.addr,
        "POST",
        "/api/rooms/lobby/files",
        &[
            ("Authorization", auth),
            ("Content-Type", "image/png"),
            ("Transfer-Encoding", "chunked"),
        ],
        Some(body),
    )
    .await
}

/// The objects of the bucket, as async-nats' Object Store client lists them.
async fn objects(app: &TestApp) -> Vec<String> {
    use futures::TryStreamExt;
    let store = app
        .state
        .log
        .jetstream()
        .get_object_store("CHAT_FILES")
        .await
        .unwrap();
    let list: Vec<_> = store.list().await.unwrap().try_collect().await.unwrap();
    list.into_iter().map(|o| o.name).collect()
}

async fn private_room(app: &TestApp, creator: &str, id: &str) {
    let token = app.token(creator).await;
    let created = app
        .post("/api/rooms", &token, json!({"id": id, "private": true}))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
}

#[tokio::test]
async fn an_upload_round_trips_and_the_same_bytes_are_stored_once() {
    let app = spawn_app().await;
    let (ada, bob) = (app.token("ada").await, app.token("bob").await);
    // Three chunks and a bit (128 KiB each): the chunks are read back in order.
    let bytes = png(3 * 128 * 1024 + 1000, 1);
    let up = upload(&app, &ada, "lobby", "cat%20%C3%A9.png", "image/png", &bytes).await;
    assert_eq!(up.status, 201, "{:?}", String::from_utf8_lossy(&up.body));
    let file = up.json();
    let id = file["id"].as_str().unwrap().to_string();
    assert_eq!(file["sha256"], sha256_hex(&bytes));
    assert_eq!(file["size"], bytes.len());
    assert_eq!(file["name"], "cat é.png");
    assert_eq!(file["content_type"], "image/png");
    assert_eq!(id, format!("lobby.{}", sha256_hex(&bytes)));

    let down = download(&app, &bob, &id, &[]).await;
    assert_eq!(down.status, 200);
    assert_eq!(sha256_hex(&down.body), sha256_hex(&bytes));
    assert_eq!(down.body, bytes);
    assert_eq!(down.header("content-type"), Some("image/png"));
    assert_eq!(
        down.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    let etag = format!("\"{}\"", sha256_hex(&bytes));
    assert_eq!(down.header("etag"), Some(etag.as_str()));
    assert_eq!(
        down.header("content-disposition"),
        Some("inline; filename*=UTF-8''cat%20%C3%A9.png")
    );
    assert_eq!(down.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(down.header("accept-ranges"), Some("bytes"));
    // An <img src> cannot set a header: the token in the query is taken too.
    let by_query = send(
        app.addr,
        "GET",
        &format!("/api/files/{id}?token={bob}"),
        &[],
        None,
    )
    .await;
    assert_eq!((by_query.status, by_query.body == bytes), (200, true));
    let meta = send(
        app.addr,
        "GET",
        &format!("/api/files/{id}/meta?token={bob}"),
        &[],
        None,
    )
    .await;
    assert_eq!(meta.status, 200);
    assert_eq!(meta.json()["room"], "lobby");
    assert_eq!(meta.json()["size"], bytes.len());

    assert!(metric(&app, "chatlog_edge_file_bytes_in_total ").await >= bytes.len() as u64);
    assert!(metric(&app, "chatlog_edge_file_bytes_out_total ").await >= 2 * bytes.len() as u64);
    assert!(metric(&app, "chatlog_edge_file_uploads_total ").await >= 1);
    assert!(metric(&app, "chatlog_edge_file_downloads_total ").await >= 2);
    // Stored as one object: four chunks and its info.
    assert_eq!(stored_messages(&app).await, 5);
    assert_eq!(objects(&app).await, vec![id.clone()]);
    // The same bytes again, by ada then by bob: the same file, still stored once, and bob is
    // now one of its uploaders (what a message attaching it will ask).
    let file_id = chatlog_edge::files::FileId::parse(&id).unwrap();
    let bob_id = chatlog_events::UserId::parse("bob").unwrap();
    let uploaded_by_bob = async || {
        let meta = app.state.files.get(&file_id).await.unwrap().unwrap();
        meta.uploaders.contains_key(&bob_id)
    };
    assert!(!uploaded_by_bob().await);
    for token in [&ada, &bob] {
        let again = upload(&app, token, "lobby", "other.png", "image/png", &bytes).await;
        assert_eq!(again.status, 201);
        assert_eq!(again.json()["id"], id.as_str());
        assert_eq!(again.json()["name"], "cat é.png", "the first upload's name");
        assert_eq!(stored_messages(&app).await, 5);
    }
    assert!(uploaded_by_bob().await);
    // The same bytes in another room are another file.
    let room = app.post("/api/rooms", &ada, json!({"id": "den"})).await;
    assert_eq!(room.status, 201);
    let elsewhere = upload(&app, &ada, "den", "cat.png", "image/png", &bytes).await;
    assert_eq!(elsewhere.status, 201);
    assert_eq!(
        elsewhere.json()["id"],
        format!("den.{}", sha256_hex(&bytes))
    );
    assert_eq!(stored_messages(&app).await, 10);
    // The bucket is an Object Store other clients read: async-nats gets the same bytes.
    let store = app
        .state
        .log
        .jetstream()
        .get_object_store("CHAT_FILES")
        .await
        .unwrap();
    let mut object = store.get(&id).await.unwrap();
    let mut read = Vec::new();
    object.read_to_end(&mut read).await.unwrap();
    assert_eq!(read, bytes);
}

#[tokio::test]
async fn ranges_and_conditional_requests_are_served() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let bytes = png(300_000, 2);
    let id = upload(&app, &ada, "lobby", "x.png", "image/png", &bytes)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let size = bytes.len();
    for (range, from, to) in [
        ("bytes=10-19", 10, 19),
        // Across the first chunk's end.
        ("bytes=131000-131100", 131_000, 131_100),
        ("bytes=299990-", 299_990, size - 1),
        ("bytes=-5", size - 5, size - 1),
        ("bytes=299000-400000", 299_000, size - 1),
    ] {
        let part = download(&app, &ada, &id, &[("Range", range)]).await;
        assert_eq!(part.status, 206, "{range}");
        assert_eq!(part.body, &bytes[from..=to], "{range}");
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes {from}-{to}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(
            part.header("content-length"),
            Some((to - from + 1).to_string().as_str())
        );
    }
    for outside in ["bytes=300000-", "bytes=400000-400010"] {
        let refused = download(&app, &ada, &id, &[("Range", outside)]).await;
        assert_eq!(refused.status, 416, "{outside}");
        assert_eq!(
            refused.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
        assert_eq!(refused.json()["code"], "range_not_satisfiable");
    }
    // Past the first marks (a chunk's seq is kept every 8 chunks, 1 MiB), with another upload's
    // chunks between this one's.
    let big = png(2_700_000, 13);
    let other = png(400_000, 14);
    let (up, _) = tokio::join!(
        upload(&app, &ada, "lobby", "big.png", "image/png", &big),
        upload(&app, &ada, "lobby", "other.png", "image/png", &other),
    );
    let big_id = up.json()["id"].as_str().unwrap().to_string();
    let mib = 1 << 20;
    for (from, to) in [
        (mib - 3, mib + 3),
        (mib + 5, mib + 5),
        (2 * mib + 131_072, 2 * mib + 200_000),
        (big.len() - 10, big.len() - 1),
        (0, big.len() - 1),
    ] {
        let range = format!("bytes={from}-{to}");
        let part = download(&app, &ada, &big_id, &[("Range", &range)]).await;
        assert_eq!(part.status, 206, "{range}");
        assert!(part.body == big[from..=to], "{range}");
    }
    let etag = format!("\"{}\"", sha256_hex(&bytes));
    let cached = download(&app, &ada, &id, &[("If-None-Match", &etag)]).await;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
    let stale = download(&app, &ada, &id, &[("If-None-Match", "\"other\"")]).await;
    assert_eq!((stale.status, stale.body.len()), (200, size));
}

#[tokio::test]
async fn only_who_may_read_the_room_uploads_or_downloads_and_others_hear_not_found() {
    let app = spawn_app().await;
    private_room(&app, "ada", "secret").await;
    let (ada, bob) = (app.token("ada").await, app.token("bob").await);
    let bytes = png(2000, 3);
    let up = upload(&app, &ada, "secret", "x.png", "image/png", &bytes).await;
    assert_eq!(up.status, 201);
    let id = up.json()["id"].as_str().unwrap().to_string();
    assert_eq!(download(&app, &ada, &id, &[]).await.status, 200);

    let refused = upload(&app, &bob, "secret", "x.png", "image/png", &png(2000, 4)).await;
    assert_eq!(refused.status, 404);
    let no_room = upload(&app, &bob, "nowhere", "x.png", "image/png", &bytes).await;
    assert_eq!(no_room.status, 404);
    // The answer a room that does not exist gets.
    assert_eq!(
        refused.json(),
        json!({"code": "not_found", "message": "room secret not found"})
    );
    assert_eq!(no_room.json()["message"], "room nowhere not found");

    // bob cannot read it, nor tell it from a file that does not exist.
    let hidden = download(&app, &bob, &id, &[]).await;
    assert_eq!(hidden.status, 404);
    let unknown = download(&app, &bob, &format!("lobby.{}", "0".repeat(64)), &[]).await;
    let garbage = download(&app, &bob, "..%2Fetc", &[]).await;
    assert_eq!((unknown.status, garbage.status), (404, 404));
    assert_eq!(hidden.json(), unknown.json());
    assert_eq!(hidden.json(), garbage.json());
    let meta = send(
        app.addr,
        "GET",
        &format!("/api/files/{id}/meta?token={bob}"),
        &[],
        None,
    )
    .await;
    assert_eq!(meta.status, 404);
    assert_eq!(meta.json(), unknown.json());
    let anonymous = send(app.addr, "GET", &format!("/api/files/{id}"), &[], None).await;
    assert_eq!(anonymous.status, 401);
    // Only ada's one file is stored.
    assert_eq!(objects(&app).await.len(), 1);
}

#[tokio::test]
async fn an_upload_over_the_limit_is_refused_and_stores_nothing() {
    let max = 200_000;
    let app = spawn_app_with(|c| c.limits.max_file_bytes = max).await;
    let ada = app.token("ada").await;
    let auth = format!("Bearer {ada}");
    // Said up front: refused before a byte of the body is read.
    let length = (max + 1).to_string();
    let said = send(
        app.addr,
        "POST",
        "/api/rooms/lobby/files",
        &[
            ("Authorization", &auth),
            ("Content-Type", "image/png"),
            ("Content-Length", &length),
        ],
        None,
    )
    .await;
    assert_eq!(said.status, 413);
    assert_eq!(said.json()["code"], "too_large");
    // Chunked, so counted: refused once past the limit, its chunks so far purged.
    let body = chunked(&png(max as usize + 1, 5));
    let counted = upload_chunked(&app, &auth, &body).await;
    assert_eq!(counted.status, 413);
    assert_eq!(stored_messages(&app).await, 0);
    // At the limit, it is stored.
    let at = upload(
        &app,
        &ada,
        "lobby",
        "x.png",
        "image/png",
        &png(max as usize, 5),
    )
    .await;
    assert_eq!(at.status, 201);
}

#[tokio::test]
async fn an_upload_cut_short_by_its_client_leaves_nothing() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let bytes = png(1 << 20, 6);
    let head = format!(
        "POST /api/rooms/lobby/files?name=x.png HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ada}\r\n\
         Content-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        app.addr,
        bytes.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Five chunks' worth, then the client goes away.
    tcp.write_all(&bytes[..5 * 128 * 1024 + 77]).await.unwrap();
    tcp.flush().await.unwrap();
    // The edge has stored some of it: the upload was under way.
    chatlog_test_support::eventually("chunks stored", PATIENCE, async || {
        (stored_messages(&app).await >= 2).then_some(())
    })
    .await;
    drop(tcp);
    chatlog_test_support::eventually("the partial upload purged", PATIENCE, async || {
        (stored_messages(&app).await == 0).then_some(())
    })
    .await;
    assert!(objects(&app).await.is_empty());
}

#[tokio::test]
async fn a_declared_type_the_bytes_contradict_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let html = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>";
    for (declared, bytes) in [
        ("image/png", html.to_vec()),
        ("text/plain", png(5000, 7)),
        ("image/gif", png(5000, 7)),
        ("application/pdf", b"just text".to_vec()),
    ] {
        let refused = upload(&app, &ada, "lobby", "x", declared, &bytes).await;
        assert_eq!(refused.status, 415, "{declared}");
        assert_eq!(refused.json()["code"], "unsupported_media_type");
        assert!(
            refused.json()["message"]
                .as_str()
                .unwrap()
                .contains(declared)
        );
    }
    assert_eq!(stored_messages(&app).await, 0);
    let refused = r#"chatlog_edge_file_rejections_total{reason="type"} "#;
    assert!(metric(&app, refused).await >= 4);
    let bad_type = upload(&app, &ada, "lobby", "x", "not a type", b"hello").await;
    assert_eq!(bad_type.status, 400);
    for name in ["a%2Fb", "a%5Cb", "a%0Ab", &"x".repeat(256)] {
        let bad_name = upload(&app, &ada, "lobby", name, "text/plain", b"hello").await;
        assert_eq!(bad_name.status, 400, "{name}");
    }
    let empty = upload(&app, &ada, "lobby", "x", "text/plain", b"").await;
    assert_eq!(empty.status, 400);
    assert_eq!(stored_messages(&app).await, 0);
}

#[tokio::test]
async fn markup_is_served_as_an_attachment_that_no_browser_runs() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let svg = br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#;
    let html = b"<html><script>alert(1)</script></html>";
    for (name, declared, bytes, served) in [
        ("a.svg", Some("image/svg+xml"), &svg[..], "image/svg+xml"),
        ("a.html", Some("text/html"), &html[..], "text/html"),
        // Undeclared: typed by its bytes.
        (
            "b.html",
            None,
            &b"<html><body>hi</body></html>"[..],
            "text/html",
        ),
    ] {
        let auth = format!("Bearer {ada}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(declared) = declared {
            headers.push(("Content-Type", declared));
        }
        let up = send(
            app.addr,
            "POST",
            &format!("/api/rooms/lobby/files?name={name}"),
            &headers,
            Some(bytes),
        )
        .await;
        assert_eq!(up.status, 201, "{name}");
        let down = download(&app, &ada, up.json()["id"].as_str().unwrap(), &[]).await;
        assert_eq!(down.status, 200);
        assert_eq!(down.body, bytes);
        assert_eq!(down.header("content-type"), Some(served), "{name}");
        assert_eq!(
            down.header("content-disposition"),
            Some(format!("attachment; filename*=UTF-8''{name}").as_str())
        );
        assert_eq!(down.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(
            down.header("content-security-policy"),
            Some("default-src 'none'; sandbox")
        );
    }
}

#[tokio::test]
async fn the_daily_quota_is_refused_with_when_to_come_back() {
    let app = spawn_app_with(|c| c.limits.file_quota_bytes = 100_000).await;
    let (ada, bob) = (app.token("ada").await, app.token("bob").await);
    let first = upload(&app, &ada, "lobby", "a.png", "image/png", &png(60_000, 8)).await;
    assert_eq!(first.status, 201);
    let before = stored_messages(&app).await;
    let auth = format!("Bearer {ada}");
    let over = send(
        app.addr,
        "POST",
        "/api/rooms/lobby/files",
        &[
            ("Authorization", &auth),
            ("Content-Type", "image/png"),
            ("Content-Length", "60000"),
        ],
        None,
    )
    .await;
    assert_eq!(over.status, 429);
    assert_eq!(over.json()["code"], "rate_limited");
    let wait: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait), "{wait}");
    // Counted too when the length is not said.
    let body = chunked(&png(60_000, 9));
    let counted = upload_chunked(&app, &auth, &body).await;
    assert_eq!(counted.status, 429);
    assert_eq!(stored_messages(&app).await, before);
    // bob's quota is his own.
    let bobs = upload(&app, &bob, "lobby", "b.png", "image/png", &png(60_000, 10)).await;
    assert_eq!(bobs.status, 201);
}

#[tokio::test]
async fn the_edge_is_ready_only_with_the_files_bucket() {
    let app = spawn_app().await;
    assert_eq!(
        send(app.addr, "GET", "/readyz", &[], None).await.status,
        200
    );
    app.state
        .log
        .jetstream()
        .delete_stream("OBJ_CHAT_FILES")
        .await
        .unwrap();
    let unready = send(app.addr, "GET", "/readyz", &[], None).await;
    assert_eq!(unready.status, 503);
}

#[tokio::test]
async fn a_deleted_file_is_gone_and_its_bytes_can_be_stored_again() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let bytes = png(200_000, 11);
    let id = upload(&app, &ada, "lobby", "x.png", "image/png", &bytes)
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = chatlog_edge::files::FileId::parse(&id).unwrap();
    app.state.files.delete(&file).await.unwrap();
    assert_eq!(download(&app, &ada, &id, &[]).await.status, 404);
    // Only the info saying it was deleted is left: its chunks are purged.
    assert_eq!(stored_messages(&app).await, 1);
    assert!(objects(&app).await.is_empty());
    app.state.files.delete(&file).await.unwrap();
    let again = upload(&app, &ada, "lobby", "x.png", "image/png", &bytes).await;
    assert_eq!(
        (again.status, again.json()["id"].as_str()),
        (201, Some(id.as_str()))
    );
    assert_eq!(download(&app, &ada, &id, &[]).await.body, bytes);
}

#[tokio::test]
async fn the_same_bytes_uploaded_at_once_by_many_are_one_file_with_every_uploader() {
    let app = spawn_app().await;
    let users = ["ada", "bob", "cy", "dee", "eve", "fay"];
    let mut tokens = Vec::new();
    for user in users {
        tokens.push(app.token(user).await);
    }
    // Two chunks each: every upload writes its own before any can see another's.
    let bytes = png(200_000, 12);
    let uploads = tokens
        .iter()
        .map(|token| upload(&app, token, "lobby", "x.png", "image/png", &bytes));
    let answers = futures::future::join_all(uploads).await;
    let id = format!("lobby.{}", sha256_hex(&bytes));
    for answer in &answers {
        assert_eq!(answer.status, 201);
        assert_eq!(answer.json()["id"], id.as_str());
    }
    // One object (two chunks and its info); every other upload's chunks purged.
    assert_eq!(stored_messages(&app).await, 3);
    let file = chatlog_edge::files::FileId::parse(&id).unwrap();
    let meta = app.state.files.get(&file).await.unwrap().unwrap();
    let uploaders: Vec<&str> = meta.uploaders.keys().map(|u| u.as_str()).collect();
    let mut all = users.to_vec();
    all.sort_unstable();
    assert_eq!(uploaders, all);
    assert_eq!(download(&app, &tokens[0], &id, &[]).await.body, bytes);
}

#[tokio::test]
async fn an_upload_or_a_download_holds_one_of_the_users_connections_while_its_bytes_move() {
    let app = spawn_app_with(|c| c.limits.max_connections_per_user = 1).await;
    let ada = app.token("ada").await;
    let kept = png(1000, 2);
    let up = upload(&app, &ada, "lobby", "kept.png", "image/png", &kept).await;
    assert_eq!(up.status, 201);
    let kept_id = up.json()["id"].as_str().unwrap().to_string();
    let before = stored_messages(&app).await;
    // Her one connection is a socket: an upload or a download now would be a second.
    let ws = app.ws("ada").await;
    let refused = upload(&app, &ada, "lobby", "a.png", "image/png", &png(1000, 1)).await;
    assert_eq!(
        refused.status,
        429,
        "{:?}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.json()["code"], "rate_limited");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(stored_messages(&app).await, before, "nothing stored");
    let refused = download(&app, &ada, &kept_id, &[]).await;
    assert_eq!(refused.status, 429);
    // Socket closed, seat free (once the edge sees it closed): both go through.
    drop(ws);
    let bytes = png(1000, 1);
    let stored = chatlog_test_support::eventually_ok(
        "an upload once the socket is gone",
        PATIENCE,
        async || {
            let up = upload(&app, &ada, "lobby", "a.png", "image/png", &bytes).await;
            if up.status == 201 {
                Ok(up)
            } else {
                Err(up.status)
            }
        },
    )
    .await;
    assert_eq!(stored.json()["sha256"], sha256_hex(&bytes));
    let back = download(&app, &ada, &kept_id, &[]).await;
    assert_eq!((back.status, back.body), (200, kept));
}
