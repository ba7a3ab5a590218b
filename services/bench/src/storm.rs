//! `storm`: a reconnect storm. The bench starts an edge of its own (`chatlog edge`, the "storm
//! edge") on the NATS of `--nats-url`, connects N clients to it in R rooms, and restarts it (with
//! SIGTERM, then with SIGKILL, by default) while messages keep coming in through the edge at
//! `--url`. Every client reconnects with backoff and jitter, as the web client does, and resumes
//! its room with `since` = the last seq it saw. Reported: how long after each restart began every
//! client had resumed; the storm edge's and NATS's peak CPU and memory; the JetStream API requests
//! the storms cost (the account's API counter); and, read back from the log, every event a client
//! missed or got twice (both must be 0).

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Common,
    client::{self, Frame, Target},
    sys,
};

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Clients on the storm edge.
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// Rooms they are in (client i in room i mod rooms).
    #[arg(long, default_value_t = 500)]
    pub rooms: usize,
    /// Messages per second posted through `--url` during the storms.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How the storm edge is stopped, one restart each, in order.
    #[arg(long, value_delimiter = ',', default_value = "term,kill")]
    pub restarts: Vec<StopWith>,
    /// Seconds of traffic before each restart.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// The `chatlog` binary to run the storm edge with (this one by default).
    #[arg(long)]
    pub chatlog: Option<PathBuf>,
    /// Room ids are `<prefix>-<n>`, users `<prefix>-<n>`.
    #[arg(long, default_value = "bench-storm")]
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopWith {
    /// SIGTERM: the edge closes its sockets (1001) and exits.
    Term,
    /// SIGKILL: the sockets just die.
    Kill,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub clients: usize,
    pub rooms: usize,
    /// Messages posted during the storms.
    pub messages: u64,
    pub restarts: Vec<Restart>,
    /// Events of a client's room after its first join that it never got.
    pub missed: u64,
    /// Events a client got twice (or out of order).
    pub duplicates: u64,
    /// Peaks over the storms, sampled every 200 ms.
    pub edge_peak_cores: Option<f64>,
    pub edge_peak_rss_mib: Option<f64>,
    pub nats_peak_cores: Option<f64>,
    pub nats_peak_rss_mib: Option<f64>,
    /// JetStream API requests (and errors) over the storms, from the account's counters (direct
    /// gets are not counted there).
    pub js_api_requests: Option<u64>,
    pub js_api_errors: Option<u64>,
    /// Direct get requests and catch-ups of the storm edge over the storms (its metrics, summed
    /// over its lives).
    pub edge_direct_gets: Option<u64>,
    pub edge_catch_ups: Option<u64>,
    pub setup_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub how: StopWith,
    /// From the signal to every client joined again.
    pub resumed_seconds: f64,
    /// Of which the edge's own start (the signal to its `/readyz` answering 200).
    pub edge_start_seconds: f64,
    /// Connection attempts the clients made (refused ones included).
    pub connects: u64,
}

/// What the clients share with the run.
#[derive(Default)]
pub struct Shared {
    /// Clients whose first join succeeded.
    pub joined: AtomicUsize,
    /// Restarts begun so far: a client joined again after the n-th counts in `resumed`.
    pub generation: AtomicUsize,
    /// Client resumptions, summed over generations.
    pub resumed: AtomicUsize,
    pub connects: AtomicUsize,
    pub duplicates: AtomicUsize,
    /// Set when the producer stopped and `until` holds each room's last seq.
    pub done: AtomicBool,
    pub until: Mutex<HashMap<String, u64>>,
}

/// What one client saw of its room.
pub struct Seen {
    pub room: String,
    /// The head its first join reported: it expects every event after it.
    pub first_head: u64,
    pub seqs: Vec<u64>,
}

/// The wait before reconnect attempt `attempt`: 100 ms doubling up to 2 s, ±50 % at random (the
/// web client waits the same way, from 500 ms up to 30 s).
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(5)).min(2_000);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1_000) as u64;
    Duration::from_millis(base / 2 + base * jitter / 1_000)
}

/// One client: joins `room` on `url` and reads; whenever its socket ends it reconnects with
/// backoff and joins again with `since` = the last seq it saw. Ends once `shared.done` is set and
/// it has seen its room's last seq.
pub async fn client(url: String, room: String, shared: Arc<Shared>) -> Seen {
    let mut seen = Seen {
        room: room.clone(),
        first_head: 0,
        seqs: Vec::new(),
    };
    let mut last: Option<u64> = None;
    let mut resumed_in = 0;
    let mut attempt = 0;
    let finished = |last: Option<u64>| {
        shared.done.load(Ordering::Acquire)
            && last.is_some_and(|l| {
                l >= shared
                    .until
                    .lock()
                    .map_or(0, |u| u.get(&room).copied().unwrap_or(0))
            })
    };
    loop {
        if finished(last) {
            return seen;
        }
        shared.connects.fetch_add(1, Ordering::Relaxed);
        let generation = shared.generation.load(Ordering::Acquire);
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&url).await else {
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            continue;
        };
        let join = match last {
            Some(since) => format!(r#"{{"type":"join","room":"{room}","since":{since}}}"#),
            None => format!(r#"{{"type":"join","room":"{room}"}}"#),
        };
        if socket.send(Message::text(join)).await.is_err() {
            continue;
        }
        loop {
            let msg = match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
                Err(_) if finished(last) => return seen,
                Err(_) => continue,
                Ok(Some(Ok(msg))) => msg,
                Ok(_) => break,
            };
            let text = match msg {
                Message::Text(text) => text,
                Message::Close(_) => break,
                _ => continue,
            };
            match client::scan(&text) {
                Some(Frame::Joined { head }) => {
                    attempt = 0;
                    if last.is_none() {
                        seen.first_head = head;
                        last = Some(head);
                        shared.joined.fetch_add(1, Ordering::AcqRel);
                    }
                    if generation > resumed_in {
                        resumed_in = generation;
                        shared.resumed.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Some(Frame::Event { seq, .. }) => {
                    if last.is_some_and(|l| seq <= l) {
                        shared.duplicates.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    seen.seqs.push(seq);
                    last = Some(seq);
                }
                // Unavailable while the edge starts, say: join again after a pause.
                Some(Frame::Error { .. }) => break,
                _ => {}
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// The storm edge: `chatlog edge` on `addr` with the per-user and per-address limits lifted (all
/// its clients are one address), its data under `data` (its token secret survives restarts).
struct StormEdge {
    chatlog: PathBuf,
    addr: String,
    data: tempfile::TempDir,
    nats_url: String,
    child: Option<Child>,
    pid: Arc<AtomicU32>,
}

impl StormEdge {
    async fn start(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.chatlog)
            .args(["edge", "--http", &self.addr])
            .args(crate::LIMITS_LIFTED)
            .args([
                "--max-connections-per-address",
                "1000000",
                "--limits-exempt",
                "127.0.0.0/8",
            ])
            .env("NATS_URL", &self.nats_url)
            .env("CHATLOG_DATA_DIR", self.data.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.chatlog.display()))?;
        self.pid.store(child.id(), Ordering::Release);
        self.child = Some(child);
        let target = Target::resolve(&format!("http://{}", self.addr)).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = target.get("/readyz").await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the storm edge on {} was not ready in 60 s", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self, how: StopWith) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let signal = match how {
            StopWith::Term => libc::SIGTERM,
            StopWith::Kill => libc::SIGKILL,
        };
        let pid = libc::pid_t::try_from(child.id()).context("a pid that fits")?;
        // SAFETY: a plain system call on the id of a child this value owns and has not waited
        // for, so the id is not reused meanwhile.
        unsafe { libc::kill(pid, signal) };
        child.wait().context("waiting for the storm edge")?;
        Ok(())
    }
}

impl StormEdge {
    /// (direct gets, catch-ups) from the edge's metrics.
    async fn reads(&self) -> Option<(u64, u64)> {
        let target = Target::resolve(&format!("http://{}", self.addr))
            .await
            .ok()?;
        let (status, text) = target.get("/metrics").await.ok()?;
        if status != 200 {
            return None;
        }
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        Some((
            value("chatlog_edge_direct_gets_total")?,
            value("chatlog_edge_catch_ups_total")?,
        ))
    }
}

impl Drop for StormEdge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Peaks of CPU and memory, sampled every 200 ms while `running`.
#[derive(Default, Clone, Copy)]
struct Peaks {
    edge_cores: f64,
    edge_rss_kib: u64,
    nats_cores: f64,
    nats_rss_kib: u64,
}

fn sample_peaks(
    edge: Arc<AtomicU32>,
    nats: Option<u32>,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Peaks> {
    tokio::spawn(async move {
        let mut peaks = Peaks::default();
        let cpu = |pid: u32| sys::cpu_seconds(pid);
        let mut before = (
            edge.load(Ordering::Acquire),
            cpu(edge.load(Ordering::Acquire)),
            nats.and_then(cpu),
            std::time::Instant::now(),
        );
        while running.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let pid = edge.load(Ordering::Acquire);
            let now = (pid, cpu(pid), nats.and_then(cpu), std::time::Instant::now());
            let dt = now.3.duration_since(before.3).as_secs_f64().max(1e-3);
            // A restarted edge is a new process: its first interval is not a delta.
            if now.0 == before.0
                && let (Some(a), Some(b)) = (before.1, now.1)
            {
                peaks.edge_cores = peaks.edge_cores.max((b - a) / dt);
            }
            if let (Some(a), Some(b)) = (before.2, now.2) {
                peaks.nats_cores = peaks.nats_cores.max((b - a) / dt);
            }
            if let Ok(m) = sys::memory(pid) {
                peaks.edge_rss_kib = peaks.edge_rss_kib.max(m.rss_kib);
            }
            if let Some(m) = nats.and_then(|p| sys::memory(p).ok()) {
                peaks.nats_rss_kib = peaks.nats_rss_kib.max(m.rss_kib);
            }
            before = now;
        }
        peaks
    })
}

/// The JetStream API counters of the account: (requests, errors).
async fn js_api(js: &async_nats::jetstream::Context) -> Option<(u64, u64)> {
    let info = js.query_account().await.ok()?;
    Some((info.requests.total, info.requests.errors))
}

pub async fn run(common: &Common, args: StormArgs) -> anyhow::Result<StormReport> {
    if args.clients == 0 || args.rooms == 0 {
        bail!("--clients and --rooms must be at least 1");
    }
    let setup_started = Instant::now();
    sys::raise_nofile().context("raising the open-file limit for the clients")?;
    let chatlog = match &args.chatlog {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding the chatlog binary")?,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut edge = StormEdge {
        chatlog,
        addr: format!("127.0.0.1:{port}"),
        data: tempfile::tempdir()?,
        nats_url: common.nats_url.clone(),
        child: None,
        pid: Arc::new(AtomicU32::new(0)),
    };
    edge.start().await?;
    let storm = Arc::new(Target::resolve(&format!("http://{}", edge.addr)).await?);

    // The rooms and the producer through the edge under test.
    let producer = format!("{}-producer", args.prefix);
    let token = client::guest_tokens(&common.target, &[producer], 1)
        .await?
        .remove(0);
    let rooms: Vec<String> = (0..args.rooms)
        .map(|n| format!("{}-{n}", args.prefix))
        .collect();
    client::create_rooms(&common.target, &token, &rooms).await?;
    let users: Vec<String> = (0..args.clients)
        .map(|n| format!("{}-{n}", args.prefix))
        .collect();
    let tokens = client::guest_tokens(&storm, &users, 32).await?;
    let shared = Arc::new(Shared::default());
    let mut clients = Vec::with_capacity(args.clients);
    for (n, token) in tokens.iter().enumerate() {
        clients.push(tokio::spawn(client(
            storm.ws_url(token),
            rooms[n % args.rooms].clone(),
            shared.clone(),
        )));
        // Connect in waves, not all at once: the first joins are setup, not the storm.
        if n % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.joined.load(Ordering::Acquire) < args.clients {
        if Instant::now() >= deadline {
            bail!(
                "{} of {} clients joined in 120 s",
                shared.joined.load(Ordering::Acquire),
                args.clients
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup_seconds = setup_started.elapsed().as_secs_f64();

    let nats = crate::connect_nats(&common.nats_url, "chatlog-bench-storm").await?;
    let js = async_nats::jetstream::new(nats);
    let api_before = js_api(&js).await;
    let running = Arc::new(AtomicBool::new(true));
    let peaks = sample_peaks(edge.pid.clone(), common.pids.nats, running.clone());

    // Messages keep coming through the other edge, a room at a time, at `rate`.
    let producing = Arc::new(AtomicBool::new(true));
    let sender = tokio::spawn({
        let (producing, rooms, target) = (producing.clone(), rooms.clone(), common.target.clone());
        let every = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
        async move {
            let mut heads: HashMap<String, u64> = HashMap::new();
            let mut ticks = tokio::time::interval(every);
            let mut n: u64 = 0;
            while producing.load(Ordering::Acquire) {
                ticks.tick().await;
                let room = &rooms[n as usize % rooms.len()];
                let body = serde_json::json!({ "text": format!("storm {n}") }).to_string();
                let (status, answer) = target
                    .post(&format!("/api/rooms/{room}/messages"), Some(&token), &body)
                    .await?;
                if status != 201 {
                    bail!("posting to {room}: HTTP {status} {answer}");
                }
                #[derive(serde::Deserialize)]
                struct Posted {
                    seq: u64,
                }
                let posted: Posted = serde_json::from_str(&answer)?;
                heads.insert(room.clone(), posted.seq);
                n += 1;
            }
            Ok((heads, n, token))
        }
    });

    let mut restarts = Vec::new();
    // The storm edge's reads, summed over its lives (a restarted edge counts from 0).
    let mut reads = edge.reads().await.map(|(g, c)| (0u64, 0u64, g, c));
    let add_reads = |now: Option<(u64, u64)>, reads: &mut Option<(u64, u64, u64, u64)>| {
        *reads = match (*reads, now) {
            (Some((g, c, base_g, base_c)), Some((ng, nc))) => Some((
                g + ng.saturating_sub(base_g),
                c + nc.saturating_sub(base_c),
                0,
                0,
            )),
            _ => None,
        };
    };
    for how in &args.restarts {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        add_reads(edge.reads().await, &mut reads);
        let connects_before = shared.connects.load(Ordering::Relaxed);
        let round = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let began = Instant::now();
        edge.stop(*how)?;
        edge.start().await?;
        let edge_start_seconds = began.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(300);
        while shared.resumed.load(Ordering::Acquire) < args.clients * round {
            if Instant::now() >= deadline {
                bail!(
                    "after {how:?}: {} of {} clients resumed in 300 s",
                    shared.resumed.load(Ordering::Acquire) - args.clients * (round - 1),
                    args.clients
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        restarts.push(Restart {
            how: *how,
            resumed_seconds: began.elapsed().as_secs_f64(),
            edge_start_seconds,
            connects: (shared.connects.load(Ordering::Relaxed) - connects_before) as u64,
        });
    }
    producing.store(false, Ordering::Release);
    let (heads, messages, token) = sender.await.context("the producer")??;
    // The clients' last catch-ups are done once they have resumed; what they read since is live.
    add_reads(edge.reads().await, &mut reads);
    running.store(false, Ordering::Release);
    let peaks = peaks.await.unwrap_or_default();
    let api_after = js_api(&js).await;
    if let Ok(mut until) = shared.until.lock() {
        *until = heads;
    }
    shared.done.store(true, Ordering::Release);

    // What each client saw, against its room's log after its first join.
    let mut seen_by_room: HashMap<String, Vec<Seen>> = HashMap::new();
    for c in clients {
        let seen = tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .context("a client did not reach its room's last message in 120 s")??;
        seen_by_room
            .entry(seen.room.clone())
            .or_default()
            .push(seen);
    }
    let mut missed = 0u64;
    for (room, seen) in &seen_by_room {
        let since = seen.iter().map(|s| s.first_head).min().unwrap_or(0);
        let stored = stored_seqs(&common.target, room, since, &token).await?;
        for s in seen {
            let last = s.seqs.last().copied().unwrap_or(s.first_head);
            let want = stored
                .iter()
                .filter(|&&seq| seq > s.first_head && seq <= last)
                .count();
            missed += want.saturating_sub(s.seqs.len()) as u64;
        }
    }
    let mib = |kib: u64| (kib > 0).then(|| kib as f64 / 1024.0);
    let positive = |v: f64| (v > 0.0).then_some(v);
    Ok(StormReport {
        clients: args.clients,
        rooms: args.rooms,
        messages,
        restarts,
        missed,
        duplicates: shared.duplicates.load(Ordering::Relaxed) as u64,
        edge_peak_cores: positive(peaks.edge_cores),
        edge_peak_rss_mib: mib(peaks.edge_rss_kib),
        nats_peak_cores: positive(peaks.nats_cores),
        nats_peak_rss_mib: mib(peaks.nats_rss_kib),
        js_api_requests: api_before
            .zip(api_after)
            .map(|(a, b)| b.0.saturating_sub(a.0)),
        js_api_errors: api_before
            .zip(api_after)
            .map(|(a, b)| b.1.saturating_sub(a.1)),
        edge_direct_gets: reads.map(|r| r.0),
        edge_catch_ups: reads.map(|r| r.1),
        setup_seconds,
    })
}

/// The seqs stored in `room` after `since`, every page of them.
async fn stored_seqs(
    target: &Target,
    room: &str,
    mut since: u64,
    token: &str,
) -> anyhow::Result<Vec<u64>> {
    #[derive(serde::Deserialize)]
    struct Stored {
        seq: u64,
    }
    let mut out = Vec::new();
    loop {
        let path = format!("/api/rooms/{room}/events?since={since}&limit=1000");
        let (status, body) = target.get_as(&path, token).await?;
        if status != 200 {
            bail!("{path}: HTTP {status} {body}");
        }
        let page: Vec<Stored> = serde_json::from_str(&body)?;
        let Some(last) = page.last().map(|s| s.seq) else {
            return Ok(out);
        };
        out.extend(page.iter().map(|s| s.seq));
        since = last;
    }
}
