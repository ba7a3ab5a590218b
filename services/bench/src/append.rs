//! `append`: how fast the edge appends. N WebSocket connections each keep W sends in flight
//! (closed loop: a new send for every ack); acked appends per second and ack latency. Then, in
//! the same run and against the same server, the ceiling: async-nats publishing the same-size
//! CloudEvent (same headers, a fresh `Nats-Msg-Id` each) straight to JetStream, pipelined with
//! the same N × W window, into a scratch stream `BENCH_RAW` (`bench.raw.>`, configured like
//! `CHAT_ROOMS`: file storage, duplicate window, RePublish), deleted afterwards.
//!
//! The edge limits sends per connection (20/s by default): run it with
//! `chatlog up --send-rate 1000000 --send-burst 1000000` for this workload.

use std::{collections::HashMap, fmt::Write as _, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use chatlog_events::{
    ChatEvent, Payload, RoomId, Stream, UserId,
    event::MessagePosted,
    streams::{self, StreamSettings},
    subjects,
};
use clap::Args;
use futures::{SinkExt, StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Common,
    client::{self, Frame, Ws},
    pace::{Pace, Pacer},
    stats::{Latency, Recorder, SliceSummary, Slices},
    sys::CpuUse,
};

/// The scratch stream of the raw JetStream ceiling.
pub const RAW_STREAM: &str = "BENCH_RAW";

#[derive(Args, Debug, Clone)]
pub struct AppendArgs {
    /// WebSocket connections (and raw publishing tasks).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Unacked sends each connection keeps in flight.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Rooms the sends are spread over (connection i sends to room i mod rooms).
    #[arg(long, default_value_t = 16)]
    pub rooms: usize,
    /// Seconds measured, for each of the edge and the raw ceiling.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Bytes of message text.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Skip the raw JetStream ceiling.
    #[arg(long)]
    pub no_raw: bool,
    /// Skip the last phase: open-loop sends at half the rate the edge phase reached, for the ack
    /// latency of a system at half of its saturation.
    #[arg(long)]
    pub no_half: bool,
    /// Instead of the closed loops: open-loop sends (and raw publishes) at this many per second
    /// over all connections, evenly paced; the half phase is then skipped. Ack latency at a load
    /// of your choosing, beside raw JetStream's at the same rate.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Room ids are `<prefix>-<n>`, users `<prefix>-u<n>`.
    #[arg(long, default_value = "bench-append")]
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppendReport {
    pub connections: usize,
    pub window: usize,
    pub rooms: usize,
    pub text_bytes: usize,
    /// Size of the stored CloudEvent (body only).
    pub event_bytes: usize,
    pub edge: AppendPhase,
    pub raw: Option<AppendPhase>,
    /// Open loop at half the edge phase's rate (the same connections, sends paced evenly):
    /// ack latency at half of saturation.
    pub half: Option<AppendPhase>,
    /// Raw JetStream publishing at the half phase's rate, paced the same way: the ack latency
    /// of the server alone at that load, the floor of the half phase's.
    pub raw_half: Option<AppendPhase>,
    /// Edge appends/s over raw JetStream appends/s.
    pub ratio: Option<f64>,
    /// Seconds after the edge phase until the system under test was quiet: the views of
    /// `chatlog up` projecting the appends they fell behind on (their thread runs at a low
    /// priority while the edge is busy).
    pub views_caught_up_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppendPhase {
    pub label: String,
    pub measured_seconds: f64,
    pub sent: u64,
    pub acked: u64,
    /// Acks received in the measured seconds, per second.
    pub per_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Send (or publish) to ack.
    pub latency: Latency,
    /// Cores used during the measured seconds.
    pub cpu: CpuUse,
    /// Edge CPU time per acked append in the measured seconds, in µs.
    pub edge_us_per_append: Option<f64>,
    /// The measured acks by 100 ms, and the slow ones (over 5 ms) among them: stalls or
    /// queueing.
    pub slices: SliceSummary,
}

pub async fn run(common: &Common, args: AppendArgs) -> anyhow::Result<AppendReport> {
    anyhow::ensure!(
        args.connections > 0 && args.window > 0 && args.rooms > 0,
        "--connections, --window and --rooms must be positive"
    );
    anyhow::ensure!(
        args.rate.is_none_or(|r| r.is_finite() && r > 0.0),
        "--rate must be positive"
    );
    let rooms: Vec<String> = (0..args.rooms)
        .map(|r| format!("{}-{r}", args.prefix))
        .collect();
    let users: Vec<String> = (0..args.connections)
        .map(|i| format!("{}-u{i}", args.prefix))
        .collect();
    for room in &rooms {
        RoomId::parse(room.as_str()).with_context(|| format!("room id {room:?}"))?;
    }
    for user in &users {
        UserId::parse(user.as_str()).with_context(|| format!("user id {user:?}"))?;
    }
    let text = text_of(args.size);
    let template = ChatEvent::in_room(
        &RoomId::parse(rooms[0].as_str())?,
        UserId::parse(users[0].as_str())?,
        "edge",
        Payload::MessagePosted(MessagePosted {
            text: text.clone(),
            mentions: Vec::new(),
            reply_to: None,
            attachments: Vec::new(),
        }),
    )
    .encode()
    .map_err(|e| anyhow::anyhow!("encoding the template event: {e}"))?;

    // The ceiling first, on a quiet system: after the edge phase the handlers still have its
    // events to project, and would take their CPU from the raw phase.
    let raw = if args.no_raw {
        None
    } else {
        let raw = raw_phase(
            common,
            &args,
            &rooms,
            template.headers.clone(),
            template.body.clone(),
        )
        .await?;
        eprintln!("{}", raw.one_line());
        Some(raw)
    };
    let mut edge = edge_phase(common, &args, &rooms, &users, args.rate).await?;
    if args.rate.is_some() {
        edge.label = "open".into();
    }
    eprintln!("{}", edge.one_line());
    let views_caught_up_s = crate::quiesce(common).await;
    let half = if args.no_half || args.rate.is_some() || edge.per_s < 1.0 {
        None
    } else {
        let mut half = edge_phase(common, &args, &rooms, &users, Some(edge.per_s / 2.0)).await?;
        half.label = "half".into();
        eprintln!("{}", half.one_line());
        crate::quiesce(common).await;
        Some(half)
    };
    let raw_half = match &half {
        Some(half) if !args.no_raw => {
            let at_half = AppendArgs {
                rate: Some(half.per_s),
                ..args.clone()
            };
            let mut raw = raw_phase(
                common,
                &at_half,
                &rooms,
                template.headers,
                template.body.clone(),
            )
            .await?;
            raw.label = "raw½".into();
            eprintln!("{}", raw.one_line());
            Some(raw)
        }
        _ => None,
    };
    let ratio = raw
        .as_ref()
        .filter(|r| r.per_s > 0.0)
        .map(|r| edge.per_s / r.per_s);
    Ok(AppendReport {
        connections: args.connections,
        window: args.window,
        rooms: args.rooms,
        text_bytes: text.len(),
        event_bytes: template.body.len(),
        edge,
        raw,
        half,
        raw_half,
        ratio,
        views_caught_up_s,
    })
}

impl AppendReport {
    /// The phases that ran, in the report's order: edge, raw, half, raw at half.
    pub fn phases(&self) -> impl Iterator<Item = &AppendPhase> {
        std::iter::once(&self.edge)
            .chain(self.raw.as_ref())
            .chain(self.half.as_ref())
            .chain(self.raw_half.as_ref())
    }
}

impl AppendPhase {
    pub(crate) fn one_line(&self) -> String {
        format!(
            "{:>5}: {:>8.0} appends/s, ack p50 {:.2} ms p99 {:.2} ms max {:.1} ms, errors {}",
            self.label,
            self.per_s,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            self.errors
        )
    }
}

/// `t=0000000000000 xxx…`, `size` bytes (at least 17).
fn text_of(size: usize) -> String {
    let size = size.max(17);
    format!("t={:013} {}", 0, "x".repeat(size - 16))
}

/// When a load phase sends, and which acks count.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
    /// Longest wait for the last acks after `end`.
    drain_until: Instant,
}

impl Window {
    fn new(warmup: f64, duration: f64) -> Self {
        let measure_from = Instant::now() + Duration::from_secs_f64(warmup.max(0.0));
        let end = measure_from + Duration::from_secs_f64(duration.max(0.1));
        Self {
            measure_from,
            end,
            drain_until: end + Duration::from_secs(5),
        }
    }

    fn measured(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.end
    }

    fn seconds(&self) -> f64 {
        (self.end - self.measure_from).as_secs_f64()
    }
}

#[derive(Default)]
struct Out {
    sent: u64,
    acked: u64,
    measured: u64,
    errors: u64,
    rate_limited: bool,
    first_error: Option<String>,
}

impl Out {
    /// An ack received `now` for a send at `sent_at`: counted; its latency in µs, to record,
    /// when it falls in the measured seconds.
    fn acked(&mut self, sent_at: Instant, now: Instant, window: &Window) -> Option<u64> {
        self.acked += 1;
        window.measured(now).then(|| {
            self.measured += 1;
            (now - sent_at).as_micros() as u64
        })
    }

    /// A raw publish's ack: counted, and `record`ed (when, µs) when measured.
    fn raw_ack<T, E: std::fmt::Display>(
        &mut self,
        ack: Result<T, E>,
        sent_at: Instant,
        window: &Window,
        record: &mut impl FnMut(Instant, u64),
    ) {
        match ack {
            Ok(_) => {
                let now = Instant::now();
                if let Some(us) = self.acked(sent_at, now, window) {
                    record(now, us);
                }
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    /// What every task of a phase did, together.
    async fn sum(tasks: Vec<tokio::task::JoinHandle<Out>>) -> anyhow::Result<Out> {
        let mut total = Out::default();
        for task in tasks {
            let out = task.await?;
            total.sent += out.sent;
            total.acked += out.acked;
            total.measured += out.measured;
            total.errors += out.errors;
            total.rate_limited |= out.rate_limited;
            if total.first_error.is_none() {
                total.first_error = out.first_error;
            }
        }
        Ok(total)
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

/// The edge phase: closed loop (`rate` None: each connection keeps `--window` sends in flight),
/// or open loop at `rate` sends/s over all connections, evenly paced.
async fn edge_phase(
    common: &Common,
    args: &AppendArgs,
    rooms: &[String],
    users: &[String],
    rate: Option<f64>,
) -> anyhow::Result<AppendPhase> {
    let target = common.target.clone();
    let tokens = client::guest_tokens(&target, users, 8).await?;
    client::create_rooms(&target, &tokens[0], rooms).await?;
    let mut sockets = Vec::new();
    for token in &tokens {
        sockets.push(client::connect_ws(&target, token, client::ws_config(8 * 1024)).await?);
    }
    let recorder = Recorder::new();
    let window = Window::new(args.warmup, args.duration);
    let slices = Slices::new(window.measure_from, window.seconds());
    let mut tasks = Vec::new();
    let mut paces = paces(rate, sockets.len(), window)?;
    for (i, ws) in sockets.into_iter().enumerate() {
        let room = rooms[i % rooms.len()].clone();
        let mut local = recorder.local(i);
        let slices = slices.clone();
        let (w, size, base) = (args.window, args.size, common.base);
        let pace = paces.next();
        tasks.push(tokio::spawn(async move {
            let out = edge_sender(ws, &room, w, size, window, pace, base, &mut |at, us| {
                local.record(us);
                slices.record(at, us);
            })
            .await;
            local.flush();
            out
        }));
    }
    let cpu = measure_cpu(common, window).await;
    let total = Out::sum(tasks).await?;
    if total.rate_limited {
        bail!(
            "the edge rate-limits sends (20/s per connection by default): run it with \
             `chatlog up --send-rate 1000000 --send-burst 1000000` for the append workload"
        );
    }
    Ok(AppendPhase {
        label: "edge".into(),
        measured_seconds: window.seconds(),
        sent: total.sent,
        acked: total.acked,
        per_s: total.measured as f64 / window.seconds(),
        errors: total.errors,
        first_error: total.first_error,
        latency: Latency::of(&recorder.take()),
        cpu,
        edge_us_per_append: cpu
            .edge_cpu_seconds
            .filter(|_| total.measured > 0)
            .map(|s| s * 1e6 / total.measured as f64),
        slices: slices.summary(),
    })
}

/// One connection: keeps `w` sends in flight until the window ends (or, with `pace`, sends one at
/// each tick of its period from its first instant, however many are in flight), then waits for
/// its acks. Send ids are `<random 20 hex digits of a v4 uuid>-<counter, 12 hex digits>`.
#[allow(clippy::too_many_arguments)]
async fn edge_sender(
    mut ws: Ws,
    room: &str,
    w: usize,
    size: usize,
    window: Window,
    pace: Option<Pace>,
    base: std::time::Instant,
    record: &mut impl FnMut(Instant, u64),
) -> Out {
    let mut out = Out::default();
    let uuid = uuid::Uuid::new_v4().to_string();
    let id_prefix = &uuid[..24];
    let pad = "x".repeat(size.max(17) - 16);
    let mut inflight: HashMap<u64, Instant> = HashMap::with_capacity(w * 2);
    let mut next: u64 = 0;
    let mut frame = String::with_capacity(128 + size);
    let mut sending = true;
    // Up to `n` sends now (fewer when the window has ended), written with one flush.
    macro_rules! send {
        ($n:expr) => {{
            let mut fed = false;
            for _ in 0..$n {
                let now = Instant::now();
                if now >= window.end {
                    sending = false;
                    break;
                }
                frame.clear();
                let t = base.elapsed().as_nanos() as u64;
                let _ = write!(
                    frame,
                    r#"{{"type":"send","room":"{room}","id":"{id_prefix}{next:012x}","text":"t={t:013} {pad}"}}"#
                );
                if ws.feed(Message::Text(frame.as_str().into())).await.is_err() {
                    out.error("connection closed".into());
                    return out;
                }
                inflight.insert(next, now);
                next += 1;
                out.sent += 1;
                fed = true;
            }
            if fed && ws.flush().await.is_err() {
                out.error("connection closed".into());
                return out;
            }
        }};
    }
    loop {
        if sending && pace.is_none() {
            send!(w.saturating_sub(inflight.len()));
        }
        if !sending && inflight.is_empty() {
            break;
        }
        let msg = tokio::select! {
            biased;
            due = owed(&pace), if sending => {
                send!(due);
                continue;
            }
            msg = ws.next() => msg,
            _ = tokio::time::sleep_until(window.end), if sending => {
                sending = false;
                continue;
            }
            _ = tokio::time::sleep_until(window.drain_until), if !sending => {
                out.error(format!("{} acks missing after the drain", inflight.len()));
                break;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                out.error("connection closed".into());
                break;
            }
        };
        let now = Instant::now();
        match client::scan(&text) {
            Some(Frame::Ack { id, .. }) => {
                let Some(sent_at) = counter_of(id).and_then(|c| inflight.remove(&c)) else {
                    continue;
                };
                if let Some(us) = out.acked(sent_at, now, &window) {
                    record(now, us);
                }
            }
            Some(Frame::Error { id, code, message }) => {
                if let Some(c) = id.and_then(counter_of) {
                    inflight.remove(&c);
                }
                if code == "rate_limited" {
                    out.rate_limited = true;
                    sending = false;
                }
                out.error(format!("{code}: {message}"));
            }
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    out
}

/// For an open-loop `rate`, one [`Pace`] per connection: each its share of the rate, its sends
/// offset from the others'. Nothing for a closed loop.
fn paces(
    rate: Option<f64>,
    connections: usize,
    window: Window,
) -> anyhow::Result<impl Iterator<Item = Pace>> {
    let schedule: Vec<(Instant, Duration)> = match rate {
        None => Vec::new(),
        Some(rate) => {
            let period = Duration::from_secs_f64(connections as f64 / rate);
            let start = Instant::now();
            (0..connections)
                .map(|i| {
                    (
                        start + period.mul_f64(i as f64 / connections as f64),
                        period,
                    )
                })
                .collect()
        }
    };
    Ok(Pacer::start(&schedule, window.end)
        .context("starting the pacer")?
        .into_iter())
}

/// The sends `pace` owes now (waiting until it owes one); never, without.
async fn owed(pace: &Option<Pace>) -> u64 {
    match pace {
        Some(pace) => pace.owed().await,
        None => std::future::pending().await,
    }
}

fn counter_of(id: &str) -> Option<u64> {
    u64::from_str_radix(id.get(id.len().checked_sub(12)?..)?, 16).ok()
}

async fn raw_phase(
    common: &Common,
    args: &AppendArgs,
    rooms: &[String],
    headers: HeaderMap,
    body: Bytes,
) -> anyhow::Result<AppendPhase> {
    let client = crate::connect_nats(&common.nats_url, "chatlog-bench").await?;
    // The closed loop never has more than connections × window in flight. The open loop has no
    // bound, and a publish waiting for one of the context's permits would hold up the very task
    // whose acks give them back (every task waiting on every other, as the edge once did): its
    // context never waits.
    let (inflight, wait) = match args.rate {
        None => ((args.connections * args.window).max(1) * 2, true),
        Some(_) => (1 << 24, false),
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(inflight)
        .backpressure_on_inflight(wait)
        .build(client.clone());
    let _ = js.delete_stream(RAW_STREAM).await;
    js.create_stream(raw_config())
        .await
        .with_context(|| format!("creating the scratch stream {RAW_STREAM}"))?;
    let result = raw_load(common, &js, args, rooms, headers, body).await;
    if let Err(e) = js.delete_stream(RAW_STREAM).await {
        eprintln!("warning: deleting {RAW_STREAM} failed: {e}");
    }
    let _ = client.drain().await;
    result
}

/// `CHAT_ROOMS`'s configuration, on `bench.raw.>`, deletable.
fn raw_config() -> jetstream::stream::Config {
    let mut config = streams::config(Stream::Rooms, &StreamSettings::default());
    config.name = RAW_STREAM.into();
    config.description = Some("chatlog bench scratch stream (deleted after the run)".into());
    config.subjects = vec!["bench.raw.>".into()];
    config.deny_delete = false;
    config.deny_purge = false;
    if let Some(republish) = config.republish.as_mut() {
        republish.source = "bench.raw.>".into();
        republish.destination = "bench.rawlive.>".into();
    }
    config
}

async fn raw_load(
    common: &Common,
    js: &jetstream::Context,
    args: &AppendArgs,
    rooms: &[String],
    headers: HeaderMap,
    body: Bytes,
) -> anyhow::Result<AppendPhase> {
    let recorder = Recorder::new();
    let window = Window::new(args.warmup, args.duration);
    let slices = Slices::new(window.measure_from, window.seconds());
    let headers = Arc::new(headers);
    let mut tasks = Vec::new();
    let mut paces = paces(args.rate, args.connections, window)?;
    for i in 0..args.connections {
        let js = js.clone();
        let subject = async_nats::Subject::from(format!("bench.raw.{}", rooms[i % rooms.len()]));
        let (headers, body, w) = (headers.clone(), body.clone(), args.window);
        let mut local = recorder.local(i);
        let slices = slices.clone();
        let pace = paces.next();
        tasks.push(tokio::spawn(async move {
            let mut out = Out::default();
            let mut record = |at, us| {
                local.record(us);
                slices.record(at, us);
            };
            let uuid = uuid::Uuid::new_v4().to_string();
            let id_prefix = uuid[..24].to_string();
            let mut pending = FuturesUnordered::new();
            let mut next: u64 = 0;
            let mut sending = true;
            loop {
                let due = if !sending {
                    0
                } else if pace.is_some() {
                    tokio::select! {
                        biased;
                        due = owed(&pace) => due as usize,
                        Some((sent_at, ack)) = pending.next(), if !pending.is_empty() => {
                            out.raw_ack(ack, sent_at, &window, &mut record);
                            continue;
                        }
                        _ = tokio::time::sleep_until(window.end) => {
                            sending = false;
                            continue;
                        }
                    }
                } else {
                    w.saturating_sub(pending.len())
                };
                for _ in 0..due {
                    let now = Instant::now();
                    if now >= window.end {
                        sending = false;
                        break;
                    }
                    let mut h = (*headers).clone();
                    h.insert(
                        subjects::headers::MSG_ID,
                        format!("{id_prefix}{next:012x}").as_str(),
                    );
                    next += 1;
                    match js
                        .publish_with_headers(subject.clone(), h, body.clone())
                        .await
                    {
                        Ok(ack) => {
                            out.sent += 1;
                            pending.push(async move { (now, ack.await) });
                        }
                        Err(e) => out.error(e.to_string()),
                    }
                }
                if due > 0 && pace.is_some() {
                    continue;
                }
                let Some((sent_at, ack)) = pending.next().await else {
                    if sending {
                        continue;
                    }
                    break;
                };
                out.raw_ack(ack, sent_at, &window, &mut record);
            }
            local.flush();
            out
        }));
    }
    let cpu = measure_cpu(common, window).await;
    let total = Out::sum(tasks).await?;
    Ok(AppendPhase {
        label: "raw".into(),
        measured_seconds: window.seconds(),
        sent: total.sent,
        acked: total.acked,
        per_s: total.measured as f64 / window.seconds(),
        errors: total.errors,
        first_error: total.first_error,
        latency: Latency::of(&recorder.take()),
        cpu,
        edge_us_per_append: None,
        slices: slices.summary(),
    })
}

/// CPU use over the measured seconds of `window`.
async fn measure_cpu(common: &Common, window: Window) -> CpuUse {
    tokio::time::sleep_until(window.measure_from).await;
    let from = common.pids.sample();
    tokio::time::sleep_until(window.end).await;
    common.pids.sample().since(&from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_counter() {
        let uuid = uuid::Uuid::new_v4().to_string();
        let id = format!("{}{:012x}", &uuid[..24], 1234u64);
        assert!(uuid::Uuid::try_parse(&id).is_ok());
        assert_eq!(counter_of(&id), Some(1234));
        assert_eq!(counter_of("short"), None);
        assert_eq!(text_of(64).len(), 64);
    }

    #[test]
    fn the_raw_stream_is_a_deletable_copy_of_chat_rooms() {
        let c = raw_config();
        assert_eq!(c.name, RAW_STREAM);
        assert_eq!(c.subjects, vec!["bench.raw.>".to_string()]);
        assert!(!c.deny_delete);
        assert_eq!(
            c.republish.map(|r| r.destination),
            Some("bench.rawlive.>".into())
        );
    }
}
