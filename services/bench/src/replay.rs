//! `replay`: how fast a view is rebuilt from the log. Loads a room with N message events (straight
//! into JetStream, pipelined, once: a later run reuses them), then reads the whole `CHAT_ROOMS`
//! stream with a raw ordered consumer (the ceiling), then rebuilds the history view from it into a
//! scratch directory, as `chatlog views rebuild history` does. Reports both rates and their ratio.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use chatlog_events::{
    ChatEvent, Payload, RoomId, Stream, UserId,
    event::{MessagePosted, RoomCreated},
    streams::StreamSettings,
};
use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use crate::Common;

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Message events the bench room should hold (loaded when it has fewer).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// The room they go to.
    #[arg(long, default_value = "bench-replay")]
    pub room: String,
    /// Appends in flight while loading.
    #[arg(long, default_value_t = 2_000)]
    pub window: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub room: String,
    /// Messages in the whole stream (what both reads go through).
    pub stream_messages: u64,
    /// Events appended by this run to reach `--events` (0 when they were there).
    pub loaded: u64,
    pub load_per_s: Option<f64>,
    pub raw_seconds: f64,
    pub raw_per_s: f64,
    pub rebuild_seconds: f64,
    pub rebuild_per_s: f64,
    /// Rebuild rate over raw read rate.
    pub ratio: f64,
    pub checksum: String,
}

pub async fn run(common: &Common, args: ReplayArgs) -> anyhow::Result<ReplayReport> {
    let client = crate::connect_nats(&common.nats_url, "chatlog-bench-replay").await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(args.window * 2)
        .backpressure_on_inflight(true)
        .build(client.clone());
    chatlog_events::streams::ensure(&js, &StreamSettings::default())
        .await
        .context("ensuring the streams")?;
    let room = RoomId::parse(args.room.as_str()).context("--room")?;
    let subject = chatlog_events::subjects::room(&room);

    // Load what is missing.
    let mut stream = js.get_stream(Stream::Rooms.name()).await?;
    let have = stream
        .info_with_subjects(subject.clone())
        .await?
        .next()
        .await
        .transpose()?
        .map_or(0, |(_, n)| n as u64);
    let missing = args.events.saturating_sub(have);
    let mut load_per_s = None;
    if missing > 0 {
        eprintln!("loading {missing} message events into {subject}");
        let user = UserId::parse("bench").context("user")?;
        let started = Instant::now();
        if have == 0 {
            // A room is created before its first message, as through the edge: the view then
            // keeps its directory entry and last seq, as it does for every real room.
            let created = ChatEvent::in_room(
                &room,
                user.clone(),
                "bench",
                Payload::RoomCreated(RoomCreated {
                    name: args.room.clone(),
                    topic: String::new(),
                    private: false,
                    members: vec![],
                }),
            )
            .encode()?;
            js.publish_with_headers(created.subject, created.headers, created.body)
                .await?
                .await?;
        }
        let mut acks = std::collections::VecDeque::with_capacity(args.window);
        for n in 0..missing {
            let event = ChatEvent::in_room(
                &room,
                user.clone(),
                "bench",
                Payload::MessagePosted(MessagePosted {
                    text: format!("replay message {n} with a typical length of chat text"),
                    mentions: vec![],
                    reply_to: None,
                    attachments: Vec::new(),
                }),
            );
            let enc = event.encode()?;
            acks.push_back(
                js.publish_with_headers(enc.subject, enc.headers, enc.body)
                    .await?,
            );
            if acks.len() >= args.window
                && let Some(ack) = acks.pop_front()
            {
                ack.await?;
            }
        }
        for ack in acks {
            ack.await?;
        }
        load_per_s = Some(missing as f64 / started.elapsed().as_secs_f64());
    }
    crate::quiesce(common).await;
    let info = stream.info().await?.clone();
    let last = info.state.last_sequence;

    // The ceiling: an ordered consumer reading the whole stream, doing nothing with it.
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let started = Instant::now();
    let mut read = 0u64;
    while let Some(m) = messages.next().await {
        let m = m?;
        read += 1;
        if m.info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence
            >= last
        {
            break;
        }
    }
    let raw_seconds = started.elapsed().as_secs_f64();
    drop(messages);

    // The rebuild, exactly as `chatlog views rebuild history` runs it.
    let dir = tempfile::tempdir()?;
    let config = chatlog_runtime::HostConfig::new(dir.path().join("history"));
    let started = Instant::now();
    let answer =
        chatlog_runtime::rebuild(&chatlog_history::History, client, &config, |_, _| {}).await?;
    let rebuild_seconds = started.elapsed().as_secs_f64();
    let stream_messages = read;
    let raw_per_s = stream_messages as f64 / raw_seconds;
    let rebuild_per_s = stream_messages as f64 / rebuild_seconds;
    Ok(ReplayReport {
        room: room.to_string(),
        stream_messages,
        loaded: missing,
        load_per_s,
        raw_seconds,
        raw_per_s,
        rebuild_seconds,
        rebuild_per_s,
        ratio: rebuild_per_s / raw_per_s,
        checksum: answer.checksum,
    })
}
