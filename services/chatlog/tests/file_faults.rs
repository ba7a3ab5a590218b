//! Files on a cluster (docs/protocol.md §10): `chatlog setup` replicates the files bucket as it
//! does the streams, and a file stored before the node leading the bucket's stream is killed
//! downloads whole after, through the edge.

mod common;

use std::{net::SocketAddr, time::Duration};

use async_nats::jetstream;
use chatlog_events::streams::FILES_STREAM;
use chatlog_test_support::{NatsCluster, eventually_ok};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request with a raw body (the test clients send JSON): the status, the headers
/// (names lower-cased) and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), String> {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(body).await.map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no answer head")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = raw[end + 4..].to_vec();
    // The edge sends a download with its length; an error's JSON may come chunked, and is only
    // shown.
    Ok((status, headers, body))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_file_stored_before_the_buckets_leader_is_killed_downloads_whole_after() {
    let mut cluster = NatsCluster::start(3).await;
    common::setup(&cluster.urls());
    let (client, _) = chatlog_edge::connect(&cluster.urls(), "test")
        .await
        .unwrap();
    let js = jetstream::new(client);
    let info = js
        .get_stream(FILES_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.num_replicas, 3,
        "the bucket is replicated as the streams are"
    );

    let data = tempfile::tempdir().unwrap();
    let (_up, app) = common::serve(common::command(
        &cluster.urls(),
        data.path(),
        &common::lifted("up"),
    ))
    .await;
    let token = app.token("ada").await;
    // 3 MiB that no two chunks share.
    let bytes: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = sha256_hex(&bytes);
    let (status, _, body) = http(
        app.addr,
        "POST",
        "/api/rooms/lobby/files?name=big.bin",
        &token,
        &bytes,
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let id = format!("lobby.{want}");
    assert!(
        String::from_utf8_lossy(&body).contains(&id),
        "{}",
        String::from_utf8_lossy(&body)
    );

    cluster.kill_leader_of(FILES_STREAM).await;

    // The edge may be on the node killed, and the bucket needs a new leader: both take a moment.
    let path = format!("/api/files/{id}");
    let got = eventually_ok(
        "the file downloads after its bucket's leader is killed",
        Duration::from_secs(30),
        async || {
            let (status, headers, body) = http(app.addr, "GET", &path, &token, &[]).await?;
            if status != 200 {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            // A read cut short (a replica lost under it) is an error its client sees: again.
            if body.len() != bytes.len() {
                return Err(format!("{} of {} bytes", body.len(), bytes.len()));
            }
            let etag = headers
                .iter()
                .find(|(n, _)| n == "etag")
                .map(|(_, v)| v.clone());
            Ok((etag, body))
        },
    )
    .await;
    assert_eq!(got.0.as_deref(), Some(format!("\"{want}\"").as_str()));
    assert_eq!(got.1.len(), bytes.len());
    assert_eq!(
        sha256_hex(&got.1),
        want,
        "the bytes downloaded are those stored"
    );
}
