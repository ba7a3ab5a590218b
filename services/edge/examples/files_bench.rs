//! Files through the edge against the Object Store itself (bench/README.md, "Files"), on a
//! running system: `bench/files.sh` starts one and runs this.
//!
//! ```text
//! files_bench --url http://127.0.0.1:8080 --nats-url nats://127.0.0.1:4222 [--pid <edge pid>]
//!             [--mib 25] [--concurrent 10]
//! ```
//!
//! 1. One upload and one download of `--mib` MiB through the edge (HTTP/1.1 on a raw socket);
//! 2. the same bytes put and read back with async-nats' `ObjectStore` (what the edge is
//!    compared with);
//! 3. `--concurrent` uploads of as many different files at once, each by a user of its own (the
//!    daily quota is per user), sampling the edge's resident memory (`--pid`) meanwhile.
//!
//! Everything it stored is deleted at the end.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Args {
    http: SocketAddr,
    nats_url: String,
    pid: Option<u32>,
    mib: usize,
    concurrent: usize,
}

fn args() -> Args {
    let mut args = Args {
        http: "127.0.0.1:8080".parse().unwrap(),
        nats_url: "nats://127.0.0.1:4222".into(),
        pid: None,
        mib: 25,
        concurrent: 10,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => {
                let host = value.trim_start_matches("http://").trim_end_matches('/');
                args.http = host.parse().expect("--url http://<ip>:<port>");
            }
            "--nats-url" => args.nats_url = value,
            "--pid" => args.pid = Some(value.parse().expect("--pid <number>")),
            "--mib" => args.mib = value.parse().expect("--mib <number>"),
            "--concurrent" => args.concurrent = value.parse().expect("--concurrent <number>"),
            other => panic!("unknown option {other}"),
        }
    }
    args
}

#[tokio::main]
async fn main() {
    let args = args();
    let size = args.mib * 1024 * 1024;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let bytes = varied(size, 1);
    let token = guest_token(args.http, &format!("fb{run}0")).await;

    // Through the edge.
    let started = Instant::now();
    let id = upload(args.http, &token, &bytes).await;
    let edge_up = started.elapsed();
    let started = Instant::now();
    let got = download(args.http, &token, &id).await;
    let edge_down = started.elapsed();
    assert_eq!(
        Sha256::digest(&got),
        Sha256::digest(&bytes),
        "the download differs"
    );
    drop(got);

    // The Object Store itself, same bytes, same server.
    let client = async_nats::connect(&args.nats_url)
        .await
        .expect("connecting to NATS");
    let js = async_nats::jetstream::new(client);
    let store = js
        .get_object_store("CHAT_FILES")
        .await
        .expect("the CHAT_FILES bucket");
    let name = format!("bench-{run}");
    let started = Instant::now();
    store
        .put(name.as_str(), &mut &bytes[..])
        .await
        .expect("a put");
    let direct_up = started.elapsed();
    let started = Instant::now();
    let mut object = store.get(&name).await.expect("a get");
    let mut read = Vec::with_capacity(size);
    object.read_to_end(&mut read).await.expect("reading");
    let direct_down = started.elapsed();
    assert_eq!(read.len(), size);
    drop(read);
    store
        .delete(&name)
        .await
        .expect("deleting the bench object");

    let rate = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
    println!("file: {} MiB ({size} bytes)", args.mib);
    println!(
        "upload    edge {:7.1} MB/s ({:6.0} ms)   object store {:7.1} MB/s ({:6.0} ms)   edge/store {:.2}",
        rate(edge_up),
        edge_up.as_secs_f64() * 1e3,
        rate(direct_up),
        direct_up.as_secs_f64() * 1e3,
        rate(edge_up) / rate(direct_up),
    );
    println!(
        "download  edge {:7.1} MB/s ({:6.0} ms)   object store {:7.1} MB/s ({:6.0} ms)   edge/store {:.2}",
        rate(edge_down),
        edge_down.as_secs_f64() * 1e3,
        rate(direct_down),
        direct_down.as_secs_f64() * 1e3,
        rate(edge_down) / rate(direct_down),
    );

    // Concurrent uploads, memory sampled.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for n in 0..args.concurrent {
        let token = guest_token(args.http, &format!("fb{run}{}", n + 1)).await;
        files.push((token, varied(size, n as u32 + 2)));
    }
    let before = args.pid.map(|pid| rss_kib(pid, "VmRSS:"));
    let sampling = args.pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(5)).await;
                if PEAK_DONE.load(std::sync::atomic::Ordering::Relaxed) {
                    return peak;
                }
            }
        })
    });
    let started = Instant::now();
    let uploads = files
        .iter()
        .map(|(token, bytes)| upload(args.http, token, bytes));
    let ids = futures::future::join_all(uploads).await;
    let took = started.elapsed();
    PEAK_DONE.store(true, std::sync::atomic::Ordering::Relaxed);
    println!(
        "{} concurrent uploads of {} MiB: {:.0} ms, {:.1} MB/s together",
        args.concurrent,
        args.mib,
        took.as_secs_f64() * 1e3,
        (size * args.concurrent) as f64 / 1e6 / took.as_secs_f64()
    );
    if let (Some(pid), Some(before), Some(sampling)) = (args.pid, before, sampling) {
        let peak = sampling.await.unwrap();
        println!(
            "edge RSS: {} MiB before, {} MiB at most while they ran (sampled every 5 ms), VmHWM {} MiB",
            before / 1024,
            peak / 1024,
            rss_kib(pid, "VmHWM:") / 1024
        );
    }

    for id in ids.iter().chain([&id]) {
        let _ = store.delete(id).await;
    }
}

static PEAK_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line of /proc/<pid>/status, in KiB.
fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `len` bytes, different per `seed`.
fn varied(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A guest token for `user`.
async fn guest_token(http: SocketAddr, user: &str) -> String {
    let body = format!(r#"{{"user":"{user}"}}"#);
    let (status, answer) = request(
        http,
        "POST",
        "/api/auth/guest",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    answer["token"].as_str().unwrap().to_string()
}

async fn upload(http: SocketAddr, token: &str, bytes: &[u8]) -> String {
    let auth = format!("Bearer {token}");
    let (status, answer) = request(
        http,
        "POST",
        "/api/rooms/lobby/files?name=bench.bin",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
        ],
        bytes,
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    answer["id"].as_str().unwrap().to_string()
}

async fn download(http: SocketAddr, token: &str, id: &str) -> Vec<u8> {
    let auth = format!("Bearer {token}");
    let (status, body) = request(
        http,
        "GET",
        &format!("/api/files/{id}"),
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    body
}

/// One HTTP/1.1 request on a connection of its own; the status and the body (read to the end).
async fn request(
    http: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut tcp = tokio::net::TcpStream::connect(http)
        .await
        .expect("connecting to the edge");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer's head");
    let status = String::from_utf8_lossy(&raw[..end])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    raw.drain(..end + 4);
    (status, raw)
}
