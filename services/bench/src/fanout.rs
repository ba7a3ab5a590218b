//! `fanout`: R rooms × M members, one connection each, every member joined to its room. The
//! members send at a fixed total rate, open loop (sends are scheduled on a clock, never wait for
//! acks), spread evenly over the members and the rooms. Each send carries `t=<nanos since the
//! bench started>` in its text; each member measures send-to-delivery latency on every event it
//! receives, and checks per room that it sees every acknowledged seq exactly once.
//!
//! The connections are WebSockets (`send` frames out, `event` frames in), or with `--via line`
//! line protocol clients (docs/protocol.md §7: `MSG <room> <text>` out, `MSG` lines in, acked by
//! `OK sent <seq>`): the same members, sends, clock and checks, only the wire differs.
//!
//! The run is made of phases over the same connections: one (warm-up included) for a plain run;
//! with `--step-up`, a warm-up then steps of rising rate until a step loses something, duplicates,
//! or its p99 goes over `--max-p99-ms`. After a phase's sends, the phase waits (at most
//! `--drain` seconds) for every ack and every delivery before it counts what is missing.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::Context;
use chatlog_events::{RoomId, UserId};
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes, protocol::WebSocketConfig};

use crate::{
    Common,
    client::{self, Frame, Ws},
    line::{self, LineConn},
    stats::{EdgeHistogram, Latency, Local, Recorder},
    sys::{self, CpuUse, Pids},
};

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Rooms.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Members (connections) per room.
    #[arg(long, default_value_t = 20)]
    pub members: usize,
    /// How the members connect: `ws`, or `line` (the line protocol, docs/protocol.md §7: each
    /// member logs in, sends `MSG <room> <text>` and reads `MSG` lines). The `--stalled`
    /// members are WebSocket clients either way.
    #[arg(long, value_enum, default_value_t = Via::Ws)]
    pub via: Via,
    /// The edge's line protocol address, for `--via line` (default: the host of --url, port
    /// 5000, where `chatlog up` serves it).
    #[arg(long, value_name = "HOST:PORT")]
    pub line_addr: Option<String>,
    /// Messages per second, all rooms together (the first step's rate with --step-up).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds sent before measuring (loss is checked for them too).
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Bytes of message text (at least 17: `t=<13 digits> ` and padding).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Raise the rate step by step until loss, duplicates or p99 over --max-p99-ms; reports the
    /// saturation deliveries per second.
    #[arg(long)]
    pub step_up: bool,
    /// Rate multiplier from one step to the next.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// Seconds per step (the first second of each is not measured).
    #[arg(long, default_value_t = 5.0)]
    pub step_duration: f64,
    /// The p99 latency beyond which a step counts as saturated.
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,
    /// The most steps taken.
    #[arg(long, default_value_t = 10)]
    pub max_steps: usize,
    /// Longest wait after a phase's last send for the missing acks and deliveries, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Room ids are `<prefix>-<n>`, users `<prefix>-<room>-<member>`.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Connections opened at the same time during setup.
    #[arg(long, default_value_t = 64)]
    pub connect_parallel: usize,
    /// Seconds of quiet between joining and the first phase (the joins' own events, such as
    /// `chat.member.joined`, fan out meanwhile).
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Extra members of every room that join and then never read (slow consumers): the others'
    /// latency with and without them is the fault suite's "one client that never reads".
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
}

/// How the members talk to the edge.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// WebSocket, JSON frames.
    Ws,
    /// The line protocol over TCP.
    Line,
}

impl Via {
    /// What a member sends for one message, around its 13 digits of `t=`: a `send` frame's text
    /// up to them, and after them.
    fn send_template(self, room: &str, pad: &str) -> (String, String) {
        match self {
            Via::Ws => (
                format!(r#"{{"type":"send","room":"{room}","text":"t="#),
                format!(" {pad}\"}}"),
            ),
            Via::Line => (format!("MSG {room} t="), format!(" {pad}\n")),
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Ws => "WebSocket",
            Via::Line => "line protocol",
        })
    }
}

/// What a fanout run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub rooms: usize,
    pub members: usize,
    /// How the members connected.
    pub via: Via,
    pub connections: usize,
    pub text_bytes: usize,
    pub step_up: bool,
    /// Seconds spent getting tokens, creating rooms, connecting and joining.
    pub setup_seconds: f64,
    pub phases: Vec<PhaseReport>,
    /// With `--step-up`: the best step that lost nothing and stayed under the p99 limit.
    pub saturation: Option<Saturation>,
    /// With `--step-up`: the most deliveries per second of a step that kept up (every delivery
    /// arrived, nothing lost, doubled or closed, the generator held its rate), whatever its
    /// latency: the throughput ceiling.
    pub ceiling: Option<Saturation>,
    /// `--stalled` members that never read, and how many of them the edge had closed by the end.
    pub stalled: usize,
    pub stalled_closed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    pub deliveries_per_s: f64,
    pub send_rate: f64,
    pub p99_ms: f64,
    /// Why the step-up stopped.
    pub stopped_because: String,
}

/// One phase: a rate held for some seconds.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub label: String,
    /// Messages per second asked for.
    pub target_rate: f64,
    /// Seconds of sending, and of them the measured ones.
    pub seconds: f64,
    pub measured_seconds: f64,
    pub sent: u64,
    pub acked: u64,
    /// Sends per second the generator achieved.
    pub send_rate: f64,
    pub rate_limited: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Deliveries of this phase's messages, all of them.
    pub deliveries: u64,
    /// Acked messages × members.
    pub expected_deliveries: u64,
    /// Deliveries of messages sent in the measured seconds, per second.
    pub deliveries_per_s: f64,
    /// Acked seqs some member of the room did not get.
    pub lost: u64,
    /// Events a member got twice (or out of order).
    pub duplicates: u64,
    /// Events delivered whose send was not acked (failed, or the ack came after the drain).
    pub unacked_deliveries: u64,
    /// Events delivered during this phase that it did not send: an earlier phase's stragglers,
    /// events other clients or the edge appended (e.g. `chat.member.joined`).
    pub other_deliveries: u64,
    /// Connections the edge closed (1008: slow consumer) or that failed.
    pub closed_connections: usize,
    /// Seconds waited after the last send for acks and deliveries.
    pub drain_seconds: f64,
    /// Send to delivery, measured seconds only.
    pub latency: Latency,
    /// How late sends left compared to their schedule (the generator's own lag).
    pub schedule_lag: Latency,
    /// Send to the sender's ack, measured seconds only: the append's share of the latency (the
    /// edge, NATS storing it and the ack's way back), beside which the rest is the fan-out.
    pub ack_latency: Latency,
    /// The edge's own measure of the same appends (its `chatlog_edge_append_seconds` over the
    /// measured seconds, interpolated within buckets): from handing the event to JetStream to
    /// its ack. The rest of the ack latency is the WebSocket hops and the generator.
    pub edge_append_p50_ms: Option<f64>,
    pub edge_append_p99_ms: Option<f64>,
    /// Cores used during the measured seconds by the edge, NATS and the generator.
    pub cpu: CpuUse,
    /// The edge's resident memory when the phase started and its peak during it (KiB).
    pub edge_rss_start_kib: Option<u64>,
    pub edge_rss_peak_kib: Option<u64>,
    /// Edge CPU time per delivery in the measured seconds, in µs (the append and the fan-out
    /// of a message together, divided by its deliveries).
    pub edge_us_per_delivery: Option<f64>,
    /// Second by second (of send time, warm-up included): deliveries, mean and max latency.
    pub timeline: Vec<Second>,
    pub ok: bool,
}

/// One second of a phase, by the time messages were sent.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: usize,
    pub deliveries: u64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// Text frames are `{"type":"send","room":R,"text":"t=<13 digits> xxx…"}`.
const T_DIGITS: usize = 13;

pub async fn run(common: &Common, args: FanoutArgs) -> anyhow::Result<FanoutReport> {
    anyhow::ensure!(
        args.rooms > 0 && args.members > 0,
        "--rooms and --members must be positive"
    );
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be positive"
    );
    anyhow::ensure!(
        args.step_factor > 1.0,
        "--step-factor must be greater than 1"
    );
    let connections = args.rooms * args.members;
    let per_conn = args.rate / connections as f64;
    if per_conn > 20.0 {
        eprintln!(
            "warning: {per_conn:.1} sends/s per connection is over the edge's default limit (20/s): \
             run the edge with --send-rate 1000000 --send-burst 1000000"
        );
    }
    let setup = Instant::now();
    let mut fleet = Fleet::connect(common, &args).await?;
    let mut stalled = connect_stalled(common, &args).await?;
    let setup_seconds = setup.elapsed().as_secs_f64();
    eprintln!(
        "fanout: {} rooms x {} members ({}) connected and joined in {setup_seconds:.1} s",
        args.rooms, args.members, args.via
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;
    fleet.forget_setup().await;

    let mut phases = Vec::new();
    let mut saturation = None;
    let mut ceiling = None;
    if args.step_up {
        if args.warmup > 0.0 {
            let warm = fleet.phase("warm-up", args.rate, args.warmup, 0.0).await;
            eprintln!("{}", warm.one_line());
            phases.push(warm);
        }
        let mut search = crate::stepup::StepUp::new(args.rate, args.step_factor, args.max_steps);
        let warm = args.step_duration.min(1.0).min(args.step_duration / 2.0);
        while let Some((label, rate)) = search.next() {
            let mut p = fleet.phase(&label, rate, args.step_duration, warm).await;
            p.ok = search.record(crate::stepup::StepOutcome {
                deliveries_per_s: p.deliveries_per_s,
                send_rate: p.send_rate,
                p99_ms: p.latency.p99_ms,
                over: p.saturated(args.max_p99_ms),
                behind: p.fell_behind(),
            });
            if search.again() {
                eprintln!("{} (once more)", p.one_line());
            } else {
                eprintln!("{}", p.one_line());
            }
            phases.push(p);
        }
        let stopped;
        (saturation, ceiling, stopped) = search.finish();
        if saturation.is_none() {
            eprintln!("no step passed: {stopped}");
        }
    } else {
        let p = fleet
            .phase("run", args.rate, args.warmup + args.duration, args.warmup)
            .await;
        eprintln!("{}", p.one_line());
        phases.push(p);
    }
    fleet.close().await;
    let stalled_closed = closed_by_edge(&mut stalled).await;
    if args.stalled > 0 {
        eprintln!(
            "stalled members: {} of {} closed by the edge",
            stalled_closed, args.stalled
        );
    }
    Ok(FanoutReport {
        rooms: args.rooms,
        members: args.members,
        via: args.via,
        connections,
        text_bytes: text_len(args.size),
        step_up: args.step_up,
        setup_seconds,
        phases,
        saturation,
        ceiling,
        stalled: args.stalled,
        stalled_closed,
    })
}

impl PhaseReport {
    /// Why this step did not keep up at all, if it did not: something lost, doubled, closed or
    /// refused, the generator short of its rate, or deliveries missing at the end of the drain.
    fn fell_behind(&self) -> Option<String> {
        match self.saturated(f64::INFINITY) {
            Some(why) => Some(why),
            None if self.deliveries < self.expected_deliveries => Some(format!(
                "{} of {} deliveries arrived",
                self.deliveries, self.expected_deliveries
            )),
            None => None,
        }
    }

    /// Why this step counts as past saturation, if it does.
    fn saturated(&self, max_p99_ms: f64) -> Option<String> {
        if self.closed_connections > 0 {
            Some(format!("{} connections closed", self.closed_connections))
        } else if self.lost > 0 {
            Some(format!("{} deliveries lost", self.lost))
        } else if self.duplicates > 0 {
            Some(format!("{} duplicates", self.duplicates))
        } else if self.rate_limited > 0 {
            Some(format!("{} sends rate-limited", self.rate_limited))
        } else if self.errors > 0 {
            Some(format!("{} send errors", self.errors))
        } else if self.latency.p99_ms > max_p99_ms {
            Some(format!(
                "p99 {:.1} ms over {max_p99_ms} ms",
                self.latency.p99_ms
            ))
        } else if self.send_rate < 0.95 * self.target_rate {
            Some(format!(
                "the generator sent only {:.0} of {:.0} msg/s",
                self.send_rate, self.target_rate
            ))
        } else {
            None
        }
    }

    pub(crate) fn one_line(&self) -> String {
        format!(
            "{:>8}: {:>7.0} msg/s sent, {:>9.0} deliveries/s, p50 {:.2} ms p99 {:.2} ms max {:.1} ms (ack p99 {:.2} ms{}), lost {} dup {} closed {}",
            self.label,
            self.send_rate,
            self.deliveries_per_s,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            self.ack_latency.p99_ms,
            self.edge_append_p99_ms
                .map(|ms| format!(", at the edge {ms:.2}"))
                .unwrap_or_default(),
            self.lost,
            self.duplicates,
            self.closed_connections
        )
    }
}

fn text_len(size: usize) -> usize {
    size.max(T_DIGITS + 4)
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
    /// Per second of send time: deliveries, latency sum and max (µs).
    seconds: Vec<[AtomicU64; 3]>,
}

impl Counters {
    fn new(seconds: usize) -> Self {
        Self {
            seconds: (0..seconds).map(|_| Default::default()).collect(),
            ..Self::default()
        }
    }

    fn delivered_at(&self, second: usize, micros: u64) {
        if let Some([n, sum, max]) = self.seconds.get(second) {
            n.fetch_add(1, Relaxed);
            sum.fetch_add(micros, Relaxed);
            max.fetch_max(micros, Relaxed);
        }
    }

    fn timeline(&self) -> Vec<Second> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(second, [n, sum, max])| {
                let n = n.load(Relaxed);
                Second {
                    second,
                    deliveries: n,
                    mean_ms: sum.load(Relaxed) as f64 / n.max(1) as f64 / 1000.0,
                    max_ms: max.load(Relaxed) as f64 / 1000.0,
                }
            })
            .collect()
    }
}

/// What one member is told for a phase.
struct Plan {
    /// This member's first send; then one every `period` until `send_end`.
    first: Instant,
    period: Duration,
    send_end: Instant,
    /// Events sent at or after this (ns since the bench started) belong to the phase…
    phase_from_ns: u64,
    /// …and are measured from this one on.
    measure_from_ns: u64,
    counters: Arc<Counters>,
}

enum Cmd {
    Phase(Plan, oneshot::Sender<MemberOut>),
    /// The current phase is over: reply.
    Stop,
    /// Forget what was seen between phases.
    Forget,
    Close,
}

/// What one member saw in a phase.
#[derive(Default)]
struct MemberOut {
    sent: u64,
    /// Seqs acked to this member's sends.
    acked: Vec<u64>,
    /// Seqs of this phase's events received, strictly increasing.
    received: Vec<u64>,
    measured: u64,
    duplicates: u64,
    other: u64,
    rate_limited: u64,
    errors: u64,
    first_error: Option<String>,
    closed: bool,
}

struct Member {
    conn: Option<Conn>,
    base: std::time::Instant,
    /// What is sent before the 13 digits of `t=`: `{"type":"send","room":"R","text":"t=`, or
    /// `MSG R t=` ([`Via::send_template`])…
    head: String,
    /// …and after them: ` xxx…"}`, or ` xxx…\n`.
    tail: String,
    /// The room's head when the member joined: the events up to it are the backlog a line
    /// `JOIN` starts with (a WebSocket join without `since` has none), not counted.
    joined_head: u64,
    last_seq: u64,
    /// Seen between phases, reported with the next one.
    pending: MemberOut,
    latency: Local,
    lag: Local,
    ack: Local,
    /// When the send awaiting its ack left (ns since `base`); 0 when none is awaited.
    sent_ns: u64,
}

enum Step {
    Stop,
    Tick(Instant),
    Msg(Incoming),
}

/// A member's connection.
#[allow(clippy::large_enum_variant)] // one per member, in its task: a box would only add a hop
enum Conn {
    Ws(Ws),
    Line(LineConn),
}

/// What a member's connection read.
enum Incoming {
    /// A WebSocket text frame.
    Frame(Utf8Bytes),
    /// A line of the line protocol.
    Line(String),
    /// Nothing the bench reads (a ping, a binary frame).
    Nothing,
    /// The connection ended or failed.
    Closed,
}

impl Incoming {
    /// The parts the bench reads, out of a frame's JSON or a line alike.
    fn frame(&self) -> Option<Frame<'_>> {
        match self {
            Incoming::Frame(text) => client::scan(text),
            Incoming::Line(line) => line::scan(line),
            Incoming::Nothing | Incoming::Closed => None,
        }
    }
}

impl Conn {
    /// The next thing the edge sent. Cancel-safe, as both streams are.
    async fn read(&mut self) -> Incoming {
        match self {
            Conn::Ws(ws) => match ws.next().await {
                Some(Ok(Message::Text(text))) => Incoming::Frame(text),
                Some(Ok(Message::Close(_)) | Err(_)) | None => Incoming::Closed,
                Some(Ok(_)) => Incoming::Nothing,
            },
            Conn::Line(conn) => match conn.next_line().await {
                Ok(Some(line)) => Incoming::Line(line),
                Ok(None) | Err(_) => Incoming::Closed,
            },
        }
    }

    /// Sends one message (a `send` frame, or a `MSG` line with its `\n`); false when the
    /// connection failed.
    async fn send(&mut self, frame: &str) -> bool {
        match self {
            Conn::Ws(ws) => ws.send(Message::Text(frame.into())).await.is_ok(),
            Conn::Line(conn) => conn.send(frame).await.is_ok(),
        }
    }

    async fn close(&mut self) {
        let closing = async {
            match self {
                Conn::Ws(ws) => drop(ws.close(None).await),
                Conn::Line(conn) => conn.close().await,
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
    }
}

/// How the members' connections are opened: with their guest tokens over WebSocket, or logged
/// in over the line protocol (with the secret their tokens were claimed with).
enum Opener {
    Ws {
        target: Arc<client::Target>,
        config: WebSocketConfig,
        tokens: Vec<String>,
    },
    Line {
        addr: std::net::SocketAddr,
    },
}

impl Opener {
    /// Member `k`'s (`user`'s) connection, joined to `room`, and the room's head.
    async fn open(&self, k: usize, user: &str, room: &str) -> anyhow::Result<(Conn, u64)> {
        match self {
            Opener::Ws {
                target,
                config,
                tokens,
            } => {
                let mut ws = client::connect_ws(target, &tokens[k], *config).await?;
                let head = client::join(&mut ws, room).await?;
                Ok((Conn::Ws(ws), head))
            }
            Opener::Line { addr } => {
                let mut conn = LineConn::connect(*addr, user, &client::guest_secret(user)).await?;
                let head = conn.join(room).await?;
                Ok((Conn::Line(conn), head))
            }
        }
    }
}

impl Member {
    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        loop {
            let cmd = match self.conn.as_mut() {
                Some(conn) => tokio::select! {
                    cmd = cmds.recv() => cmd,
                    msg = conn.read() => {
                        self.on_message(msg, None);
                        continue;
                    }
                },
                None => cmds.recv().await,
            };
            match cmd {
                Some(Cmd::Phase(plan, reply)) => {
                    let out = self.phase(plan, &mut cmds).await;
                    let _ = reply.send(out);
                }
                Some(Cmd::Stop) => {}
                Some(Cmd::Forget) => self.pending = MemberOut::default(),
                Some(Cmd::Close) | None => break,
            }
        }
        if let Some(mut conn) = self.conn.take() {
            conn.close().await;
        }
    }

    async fn phase(&mut self, plan: Plan, cmds: &mut mpsc::Receiver<Cmd>) -> MemberOut {
        let mut out = std::mem::take(&mut self.pending);
        let mut tick = tokio::time::interval_at(plan.first, plan.period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut sending = plan.first < plan.send_end;
        let mut frame = String::with_capacity(self.head.len() + T_DIGITS + self.tail.len());
        loop {
            let Some(conn) = self.conn.as_mut() else {
                // Closed: nothing more to see; wait for the end of the phase.
                out.closed = true;
                while let Some(Cmd::Phase(..)) = cmds.recv().await {}
                break;
            };
            let step = tokio::select! {
                biased;
                at = tick.tick(), if sending => Step::Tick(at),
                msg = conn.read() => Step::Msg(msg),
                // Only `Stop` comes during a phase, after the sends and the drain: polled last,
                // not before every frame read.
                _ = cmds.recv() => Step::Stop,
            };
            match step {
                Step::Stop => break,
                Step::Msg(msg) => self.on_message(msg, Some((&plan, &mut out))),
                Step::Tick(at) => {
                    let now = Instant::now();
                    if now >= plan.send_end {
                        sending = false;
                        continue;
                    }
                    self.lag.record((now - at).as_micros() as u64);
                    let t = self.base.elapsed().as_nanos() as u64;
                    self.sent_ns = t;
                    frame.clear();
                    frame.push_str(&self.head);
                    let _ = write!(frame, "{t:0width$}", width = T_DIGITS);
                    frame.push_str(&self.tail);
                    let Some(conn) = self.conn.as_mut() else {
                        continue;
                    };
                    if !conn.send(&frame).await {
                        self.conn = None;
                        continue;
                    }
                    out.sent += 1;
                    plan.counters.sent.fetch_add(1, Relaxed);
                }
            }
        }
        self.latency.flush();
        self.lag.flush();
        self.ack.flush();
        out.closed |= self.conn.is_none();
        out
    }

    fn on_message(&mut self, msg: Incoming, phase: Option<(&Plan, &mut MemberOut)>) {
        if let Incoming::Closed = msg {
            self.conn = None;
            return;
        }
        let (plan, out) = match phase {
            Some((plan, out)) => (Some(plan), out),
            None => (None, &mut self.pending),
        };
        match msg.frame() {
            Some(Frame::Event { seq, .. }) if seq <= self.joined_head => {}
            Some(Frame::Event { seq, t }) => {
                if seq <= self.last_seq {
                    out.duplicates += 1;
                    return;
                }
                self.last_seq = seq;
                match (plan, t) {
                    (Some(plan), Some(t)) if t >= plan.phase_from_ns => {
                        out.received.push(seq);
                        plan.counters.delivered.fetch_add(1, Relaxed);
                        let now = self.base.elapsed().as_nanos() as u64;
                        let micros = now.saturating_sub(t) / 1000;
                        let second = (t - plan.phase_from_ns) / 1_000_000_000;
                        plan.counters.delivered_at(second as usize, micros);
                        if t >= plan.measure_from_ns {
                            out.measured += 1;
                            self.latency.record(micros);
                        }
                    }
                    _ => out.other += 1,
                }
            }
            Some(Frame::Ack { seq, .. }) => {
                if let Some(plan) = plan {
                    out.acked.push(seq);
                    plan.counters.acked.fetch_add(1, Relaxed);
                    // One send in flight per member at these rates: the ack is the last send's.
                    let sent = std::mem::take(&mut self.sent_ns);
                    if sent != 0 && sent >= plan.measure_from_ns {
                        let now = self.base.elapsed().as_nanos() as u64;
                        self.ack.record(now.saturating_sub(sent) / 1000);
                    }
                }
            }
            Some(Frame::Error { code, message, .. }) => {
                if code == "rate_limited" {
                    out.rate_limited += 1;
                } else {
                    out.errors += 1;
                    if out.first_error.is_none() {
                        out.first_error = Some(format!("{code}: {message}"));
                    }
                }
                if let Some(plan) = plan {
                    plan.counters.failed.fetch_add(1, Relaxed);
                }
            }
            _ => {}
        }
    }
}

/// Every member's task, and what the phases need to know about them.
struct Fleet {
    base: std::time::Instant,
    rooms: usize,
    members: usize,
    drain: Duration,
    cmds: Vec<mpsc::Sender<Cmd>>,
    tasks: Vec<JoinHandle<()>>,
    /// Member k is in room `k / members`; it sends `order[k]`-th within a period, so that
    /// consecutive sends go to different rooms.
    order: Vec<usize>,
    latency: Arc<Recorder>,
    lag: Arc<Recorder>,
    ack: Arc<Recorder>,
    pids: Pids,
    /// For the edge's own append latency (`GET /metrics`).
    target: Arc<client::Target>,
}

impl Fleet {
    async fn connect(common: &Common, args: &FanoutArgs) -> anyhow::Result<Self> {
        let rooms: Vec<String> = (0..args.rooms)
            .map(|r| format!("{}-{r}", args.prefix))
            .collect();
        let users: Vec<String> = (0..args.rooms)
            .flat_map(|r| (0..args.members).map(move |m| (r, m)))
            .map(|(r, m)| format!("{}-{r}-{m}", args.prefix))
            .collect();
        for room in &rooms {
            RoomId::parse(room.as_str()).with_context(|| format!("room id {room:?}"))?;
        }
        for user in &users {
            UserId::parse(user.as_str()).with_context(|| format!("user id {user:?}"))?;
        }
        let target = common.target.clone();
        let size = text_len(args.size);
        let opener = match args.via {
            Via::Ws => {
                let tokens = client::guest_tokens(&target, &users, 16).await?;
                // tungstenite zero-fills its whole read buffer before every read: sized for one
                // event frame (the text and its envelope) rather than a generous default.
                let config = client::ws_config((size + 512).next_power_of_two().clamp(1024, 8192));
                Opener::Ws {
                    target: target.clone(),
                    config,
                    tokens,
                }
            }
            Via::Line => Opener::Line {
                addr: line_addr(&target, args.line_addr.as_deref()).await?,
            },
        };
        let creator = match &opener {
            Opener::Ws { tokens, .. } => tokens[0].clone(),
            // Line members log in on their connections: one token, to create the rooms.
            Opener::Line { .. } => client::guest_tokens(&target, &users[..1], 1)
                .await?
                .remove(0),
        };
        client::create_rooms(&target, &creator, &rooms).await?;

        let pad = "x".repeat(size - T_DIGITS - 3);
        let parallel = args.connect_parallel.max(1);
        let opener = &opener;
        let joined: Vec<(usize, anyhow::Result<(Conn, u64)>)> =
            futures::stream::iter(users.iter().enumerate())
                .map(|(k, user)| {
                    let room = &rooms[k / args.members];
                    async move { (k, opener.open(k, user, room).await) }
                })
                .buffer_unordered(parallel)
                .collect()
                .await;
        let mut sockets: Vec<Option<(Conn, u64)>> = (0..users.len()).map(|_| None).collect();
        for (k, joined) in joined {
            sockets[k] = Some(joined.with_context(|| format!("member {}", users[k]))?);
        }

        let latency = Recorder::new();
        let lag = Recorder::new();
        let ack = Recorder::new();
        let mut cmds = Vec::new();
        let mut tasks = Vec::new();
        let mut order = Vec::new();
        for (k, joined) in sockets.into_iter().enumerate() {
            let (r, m) = (k / args.members, k % args.members);
            order.push(m * args.rooms + r);
            let (conn, joined_head) = joined.map_or((None, 0), |(conn, head)| (Some(conn), head));
            let (head, tail) = args.via.send_template(&rooms[r], &pad);
            let member = Member {
                conn,
                base: common.base,
                head,
                tail,
                joined_head,
                last_seq: 0,
                pending: MemberOut::default(),
                latency: latency.local(k),
                lag: lag.local(k),
                ack: ack.local(k),
                sent_ns: 0,
            };
            let (tx, rx) = mpsc::channel(2);
            cmds.push(tx);
            tasks.push(tokio::spawn(member.run(rx)));
        }
        Ok(Self {
            base: common.base,
            rooms: args.rooms,
            members: args.members,
            drain: Duration::from_secs_f64(args.drain.max(0.0)),
            cmds,
            tasks,
            order,
            latency,
            lag,
            ack,
            pids: common.pids,
            target,
        })
    }

    /// Sends at `rate` for `seconds`, the first `warmup` of them not measured; waits for the
    /// stragglers; checks every member got every acked seq of its room once.
    async fn phase(&mut self, label: &str, rate: f64, seconds: f64, warmup: f64) -> PhaseReport {
        let count = self.cmds.len();
        let period = Duration::from_secs_f64(count as f64 / rate);
        let start = Instant::now() + Duration::from_millis(50);
        let send_end = start + Duration::from_secs_f64(seconds);
        let measure_from = start + Duration::from_secs_f64(warmup.min(seconds));
        let since_base = |at: Instant| (at.into_std() - self.base).as_nanos() as u64;
        let counters = Arc::new(Counters::new(seconds.ceil() as usize));
        let mut replies = Vec::with_capacity(count);
        for (k, cmd) in self.cmds.iter().enumerate() {
            let plan = Plan {
                first: start + period.mul_f64(self.order[k] as f64 / count as f64),
                period,
                send_end,
                phase_from_ns: since_base(start),
                measure_from_ns: since_base(measure_from),
                counters: counters.clone(),
            };
            let (tx, rx) = oneshot::channel();
            let _ = cmd.send(Cmd::Phase(plan, tx)).await;
            replies.push(rx);
        }
        // The edge's resident memory over the phase (start and peak), sampled every 100 ms.
        let rss_start = self
            .pids
            .edge
            .and_then(|pid| sys::memory(pid).ok())
            .map(|m| m.rss_kib);
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = self.pids.edge.map(|pid| {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut peak = 0;
                while sampling.load(Relaxed) {
                    if let Ok(m) = sys::memory(pid) {
                        peak = peak.max(m.rss_kib);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                peak
            })
        });
        tokio::time::sleep_until(measure_from).await;
        let cpu_from = self.pids.sample();
        let appends_from = self.edge_appends().await;
        tokio::time::sleep_until(send_end).await;
        let cpu = self.pids.sample().since(&cpu_from);
        let appends = self.edge_appends().await.since(&appends_from);
        let deadline = send_end + self.drain;
        let members = self.members as u64;
        loop {
            let sent = counters.sent.load(Relaxed);
            let acked = counters.acked.load(Relaxed);
            let failed = counters.failed.load(Relaxed);
            let delivered = counters.delivered.load(Relaxed);
            if (sent == acked + failed && delivered >= acked * members)
                || Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let drain_seconds = send_end.elapsed().as_secs_f64();
        sampling.store(false, Relaxed);
        let rss_peak = match sampler {
            Some(task) => task.await.ok().filter(|peak| *peak > 0),
            None => None,
        };
        for cmd in &self.cmds {
            let _ = cmd.send(Cmd::Stop).await;
        }
        let mut outs = Vec::with_capacity(count);
        for rx in replies {
            outs.push(rx.await.unwrap_or_else(|_| MemberOut {
                closed: true,
                ..MemberOut::default()
            }));
        }
        let latency = Latency::of(&self.latency.take());
        let schedule_lag = Latency::of(&self.lag.take());
        let mut report = self.report(
            label,
            rate,
            seconds,
            (send_end - measure_from).as_secs_f64(),
            drain_seconds,
            outs,
            latency,
            schedule_lag,
            cpu,
            counters.timeline(),
        );
        report.ack_latency = Latency::of(&self.ack.take());
        report.edge_append_p50_ms = appends.quantile_ms(0.5);
        report.edge_append_p99_ms = appends.quantile_ms(0.99);
        report.edge_rss_start_kib = rss_start;
        report.edge_rss_peak_kib = rss_peak;
        report
    }

    /// The edge's append latency histogram now (empty when `/metrics` does not answer it).
    async fn edge_appends(&mut self) -> EdgeHistogram {
        match self.target.get("/metrics").await {
            Ok((200, text)) => EdgeHistogram::parse(&text),
            _ => EdgeHistogram::default(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        label: &str,
        rate: f64,
        seconds: f64,
        measured_seconds: f64,
        drain_seconds: f64,
        outs: Vec<MemberOut>,
        latency: Latency,
        schedule_lag: Latency,
        cpu: CpuUse,
        timeline: Vec<Second>,
    ) -> PhaseReport {
        let mut acked_by_room: Vec<Vec<u64>> = vec![Vec::new(); self.rooms];
        for (k, out) in outs.iter().enumerate() {
            acked_by_room[k / self.members].extend_from_slice(&out.acked);
        }
        for acked in &mut acked_by_room {
            acked.sort_unstable();
            acked.dedup();
        }
        let mut p = PhaseReport {
            label: label.to_string(),
            target_rate: rate,
            seconds,
            measured_seconds,
            sent: 0,
            acked: acked_by_room.iter().map(|a| a.len() as u64).sum(),
            send_rate: 0.0,
            rate_limited: 0,
            errors: 0,
            first_error: None,
            deliveries: 0,
            expected_deliveries: 0,
            deliveries_per_s: 0.0,
            lost: 0,
            duplicates: 0,
            unacked_deliveries: 0,
            other_deliveries: 0,
            closed_connections: 0,
            drain_seconds,
            latency,
            schedule_lag,
            ack_latency: Latency::default(),
            edge_append_p50_ms: None,
            edge_append_p99_ms: None,
            cpu,
            edge_us_per_delivery: None,
            edge_rss_start_kib: None,
            edge_rss_peak_kib: None,
            timeline,
            ok: true,
        };
        let mut measured = 0;
        for (k, out) in outs.into_iter().enumerate() {
            let acked = &acked_by_room[k / self.members];
            let (missing, unexpected) = compare(acked, &out.received);
            p.sent += out.sent;
            p.rate_limited += out.rate_limited;
            p.errors += out.errors;
            if p.first_error.is_none() {
                p.first_error = out.first_error;
            }
            p.deliveries += out.received.len() as u64;
            p.expected_deliveries += acked.len() as u64;
            p.lost += missing;
            p.unacked_deliveries += unexpected;
            p.duplicates += out.duplicates;
            p.other_deliveries += out.other;
            p.closed_connections += usize::from(out.closed);
            measured += out.measured;
        }
        p.send_rate = p.sent as f64 / seconds;
        if measured_seconds > 0.0 {
            p.deliveries_per_s = measured as f64 / measured_seconds;
        }
        if measured > 0 {
            p.edge_us_per_delivery = cpu.edge_cpu_seconds.map(|s| s * 1e6 / measured as f64);
        }
        p.ok = p.lost == 0
            && p.duplicates == 0
            && p.closed_connections == 0
            && p.rate_limited == 0
            && p.errors == 0;
        p
    }

    /// Forgets what the members saw before the first phase (their joins' events).
    async fn forget_setup(&mut self) {
        for cmd in &self.cmds {
            let _ = cmd.send(Cmd::Forget).await;
        }
    }

    async fn close(self) {
        for cmd in &self.cmds {
            let _ = cmd.send(Cmd::Close).await;
        }
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// The edge's line protocol address: `--line-addr`, or the host of `--url` at port 5000.
async fn line_addr(
    target: &client::Target,
    given: Option<&str>,
) -> anyhow::Result<std::net::SocketAddr> {
    let Some(given) = given else {
        return Ok(std::net::SocketAddr::new(target.addr.ip(), 5000));
    };
    tokio::net::lookup_host(given)
        .await
        .with_context(|| format!("resolving --line-addr {given}"))?
        .next()
        .with_context(|| format!("--line-addr {given} resolves to nothing"))
}

/// How many of `expected` are not in `got`, and how many of `got` are not in `expected`; both
/// sorted ascending.
fn compare(expected: &[u64], got: &[u64]) -> (u64, u64) {
    let (mut i, mut j, mut missing, mut unexpected) = (0, 0, 0, 0);
    while i < expected.len() && j < got.len() {
        match expected[i].cmp(&got[j]) {
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => {
                missing += 1;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                unexpected += 1;
                j += 1;
            }
        }
    }
    missing += (expected.len() - i) as u64;
    unexpected += (got.len() - j) as u64;
    (missing, unexpected)
}

/// `--stalled` members: joined to every room, then never read again (their sockets are only kept
/// open), so that not reading backs up to the edge soon.
async fn connect_stalled(common: &Common, args: &FanoutArgs) -> anyhow::Result<Vec<Ws>> {
    if args.stalled == 0 {
        return Ok(Vec::new());
    }
    let rooms: Vec<String> = (0..args.rooms)
        .map(|r| format!("{}-{r}", args.prefix))
        .collect();
    let users: Vec<String> = (0..args.stalled)
        .map(|n| format!("{}-stalled-{n}", args.prefix))
        .collect();
    let tokens = client::guest_tokens(&common.target, &users, 16).await?;
    let mut out = Vec::new();
    for token in tokens {
        let mut ws = client::connect_ws(&common.target, &token, client::ws_config(4096)).await?;
        for room in &rooms {
            client::join(&mut ws, room).await?;
        }
        out.push(ws);
    }
    Ok(out)
}

/// How many of `stalled` the edge closed: reading now, each ends (close or EOF) within a few
/// seconds if it was closed, else it is still open.
async fn closed_by_edge(stalled: &mut [Ws]) -> usize {
    let mut closed = 0;
    for ws in stalled.iter_mut() {
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .unwrap_or(false);
        if ended {
            closed += 1;
        }
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_counts_missing_and_unexpected() {
        assert_eq!(compare(&[1, 3, 5], &[1, 3, 5]), (0, 0));
        assert_eq!(compare(&[1, 3, 5, 7], &[3, 4, 5]), (2, 1));
        assert_eq!(compare(&[], &[2]), (0, 1));
        assert_eq!(compare(&[2], &[]), (1, 0));
    }

    #[test]
    fn send_frames_have_the_asked_text_size() {
        let size = text_len(64);
        let pad = "x".repeat(size - T_DIGITS - 3);
        let text = format!("t={:013} {pad}", 42u64);
        assert_eq!(text.len(), 64);
        assert_eq!(text_len(3), T_DIGITS + 4);
    }
}
