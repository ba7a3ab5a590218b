//! `idle`: what an idle connection costs the edge. Opens N WebSocket connections, each joined to
//! one of R rooms, and reads the edge's resident memory (`VmRSS` in `/proc/<pid>/status`) before
//! and after. "Before" is taken once one connection per room is joined, so the per-room feeds
//! and the edge's first allocations are not charged to the connections.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use chatlog_events::{RoomId, UserId};
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use tokio::{task::JoinHandle, time::Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Common, client,
    stats::{Latency, Recorder},
    sys::{self, CpuUse},
};

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Rooms they join (connection i joins room i mod rooms); by default one per 20 connections
    /// (every join sends a `presence` frame to the room's members: n² / rooms frames in all).
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Seconds to let the edge settle before each memory reading.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Seconds the connections are held open after settling, to measure the edge's idle CPU
    /// (heartbeats and the like).
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 128)]
    pub connect_parallel: usize,
    /// Room ids are `<prefix>-<n>`, users `<prefix>-<n>`.
    #[arg(long, default_value = "bench-idle")]
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Connections open at the end, one per room opened before the "before" reading…
    pub connections: usize,
    /// …and the others, which the per-connection figures divide by.
    pub measured_connections: usize,
    pub rooms: usize,
    pub edge_pid: u32,
    /// The edge's open-file limit, when readable.
    pub edge_nofile: Option<u64>,
    /// The edge with one connection per room.
    pub before: sys::Memory,
    /// With every connection open and joined.
    pub after: sys::Memory,
    /// After they all closed.
    pub after_close: sys::Memory,
    /// `(after - before) / measured_connections`, in bytes.
    pub rss_bytes_per_connection: f64,
    /// Same, anonymous memory only.
    pub anon_bytes_per_connection: f64,
    pub connect_seconds: f64,
    /// Connect + upgrade + join, each.
    pub connect_latency: Latency,
    /// CPU while the connections were held open (after settling).
    pub idle_cpu: CpuUse,
    pub hold_seconds: f64,
    /// Frames the edge sent to the idle connections while they were open (presence, …).
    pub frames_received: u64,
    /// Connections the edge closed while they were held.
    pub closed_by_edge: u64,
}

pub async fn run(common: &Common, args: IdleArgs) -> anyhow::Result<IdleReport> {
    let room_count = args.rooms.unwrap_or(args.connections.div_ceil(20));
    anyhow::ensure!(
        room_count > 0 && args.connections > room_count,
        "--connections must be more than --rooms (the first connection of each room is opened \
         before the \"before\" reading)"
    );
    let nofile = sys::raise_nofile().context("raising RLIMIT_NOFILE")?;
    let wanted = (args.connections + 64) as u64;
    if nofile < wanted {
        bail!(
            "this process may open {nofile} files, {wanted} are needed: raise the hard limit (ulimit -Hn)"
        );
    }
    let pid = common.pids.edge.ok_or_else(|| {
        anyhow::anyhow!(
            "no process listening on port {} found: pass --edge-pid",
            common.target.port()
        )
    })?;
    let edge_nofile = sys::nofile_of(pid);
    if let Some(limit) = edge_nofile
        && limit < wanted
    {
        eprintln!(
            "warning: the edge (pid {pid}) may open only {limit} files: connections beyond will fail"
        );
    }
    sys::memory(pid)?;

    let rooms: Vec<String> = (0..room_count)
        .map(|r| format!("{}-{r}", args.prefix))
        .collect();
    let users: Vec<String> = (0..args.connections)
        .map(|i| format!("{}-{i}", args.prefix))
        .collect();
    for room in &rooms {
        RoomId::parse(room.as_str()).with_context(|| format!("room id {room:?}"))?;
    }
    for user in &users {
        UserId::parse(user.as_str()).with_context(|| format!("user id {user:?}"))?;
    }
    let target = common.target.clone();
    let started = Instant::now();
    let mut tokens = client::guest_tokens(&target, &users, 16).await?;
    client::create_rooms(&target, &tokens[0], &rooms).await?;
    eprintln!(
        "idle: {} guest tokens in {:.1} s",
        tokens.len(),
        started.elapsed().as_secs_f64()
    );
    let recorder = Recorder::new();

    // One connection per room first: the rooms' feeds exist before "before".
    let tokens_after = tokens.split_off(room_count);
    let primer_tokens = std::mem::replace(&mut tokens, tokens_after);
    let primers: (Vec<JoinHandle<()>>, Arc<Counts>) = open(
        &target,
        primer_tokens,
        &rooms,
        args.connect_parallel,
        &recorder,
    )
    .await?;
    let settle = Duration::from_secs_f64(args.settle.max(0.0));
    tokio::time::sleep(settle).await;
    let before = sys::memory(pid)?;

    let measured = tokens.len();
    let started = Instant::now();
    recorder.take();
    let counts = primers.1.clone();
    let sockets = open(&target, tokens, &rooms, args.connect_parallel, &recorder).await?;
    let connect_seconds = started.elapsed().as_secs_f64();
    let connect_latency = Latency::of(&recorder.take());
    eprintln!(
        "idle: {} connections joined in {connect_seconds:.1} s",
        sockets.0.len()
    );
    tokio::time::sleep(settle).await;
    let cpu_from = common.pids.sample();
    let frames_before = sockets.1.frames.load(Relaxed) + counts.frames.load(Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0))).await;
    let idle_cpu = common.pids.sample().since(&cpu_from);
    let after = sys::memory(pid)?;
    let frames_received =
        sockets.1.frames.load(Relaxed) + counts.frames.load(Relaxed) - frames_before;
    let closed_by_edge = sockets.1.closed.load(Relaxed) + counts.closed.load(Relaxed);
    if closed_by_edge > 0 {
        eprintln!("warning: the edge closed {closed_by_edge} idle connections");
    }

    for task in sockets.0.iter().chain(primers.0.iter()) {
        task.abort();
    }
    tokio::time::sleep(settle.max(Duration::from_secs(1))).await;
    let after_close = sys::memory(pid)?;

    let n = measured as f64;
    Ok(IdleReport {
        connections: args.connections,
        measured_connections: measured,
        rooms: room_count,
        edge_pid: pid,
        edge_nofile,
        before,
        after,
        after_close,
        rss_bytes_per_connection: (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / n,
        anon_bytes_per_connection: (after.rss_anon_kib as f64 - before.rss_anon_kib as f64)
            * 1024.0
            / n,
        connect_seconds,
        connect_latency,
        idle_cpu,
        hold_seconds: args.hold.max(0.0),
        frames_received,
        closed_by_edge,
    })
}

/// What the idle connections' readers saw.
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    closed: AtomicU64,
}

/// Opens one connection per token, the i-th joined to room i mod rooms; fails on the first that
/// cannot. Each connection then gets a task that reads (and drops) what the edge sends, as a
/// client would: an unread connection would end up closed as a slow consumer.
async fn open(
    target: &Arc<client::Target>,
    tokens: Vec<String>,
    rooms: &[String],
    parallel: usize,
    recorder: &Arc<Recorder>,
) -> anyhow::Result<(Vec<JoinHandle<()>>, Arc<Counts>)> {
    let total = tokens.len();
    let counts = Arc::new(Counts::default());
    let opened: Vec<anyhow::Result<JoinHandle<()>>> =
        futures::stream::iter(tokens.into_iter().enumerate())
            .map(|(i, token)| {
                let room = rooms[i % rooms.len()].clone();
                let target = target.clone();
                let mut local = recorder.local(i);
                let counts = counts.clone();
                async move {
                    let at = Instant::now();
                    // Idle clients read little: a small read buffer keeps the generator small too.
                    let mut ws = client::connect_ws(&target, &token, client::ws_config(4096))
                        .await
                        .with_context(|| format!("connection {i}"))?;
                    client::join(&mut ws, &room)
                        .await
                        .with_context(|| format!("connection {i}"))?;
                    local.record(at.elapsed().as_micros() as u64);
                    if (i + 1) % 5000 == 0 {
                        eprintln!("idle: {} of {total} connected", i + 1);
                    }
                    Ok(tokio::spawn(async move {
                        while let Some(Ok(msg)) = ws.next().await {
                            if matches!(msg, Message::Close(_)) {
                                break;
                            }
                            counts.frames.fetch_add(1, Relaxed);
                        }
                        counts.closed.fetch_add(1, Relaxed);
                    }))
                }
            })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
    let tasks = opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok((tasks, counts))
}
