//! `chatlog events tail|replay|stats`: the log from the command line, as JSON lines
//! (`{"stream","seq","subject","time","event"}`), ready for `jq`.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use chatlog_events::{RoomId, Stream};
use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};
use futures::StreamExt;
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StreamArg {
    Rooms,
    Presence,
    Users,
    Accounts,
}

impl From<StreamArg> for Stream {
    fn from(s: StreamArg) -> Stream {
        match s {
            StreamArg::Rooms => Stream::Rooms,
            StreamArg::Presence => Stream::Presence,
            StreamArg::Users => Stream::Users,
            StreamArg::Accounts => Stream::Accounts,
        }
    }
}

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Print new events as they are stored, one JSON object per line.
    Tail {
        /// Only this room (rooms and presence streams) or user (users and accounts streams).
        #[arg(long, alias = "user")]
        room: Option<String>,
        /// Only events of this type, e.g. chat.message.posted.
        #[arg(long = "type")]
        ty: Option<String>,
        #[arg(long, value_enum, default_value = "rooms")]
        stream: StreamArg,
    },
    /// Print a room's stored events, one JSON object per line, then stop.
    Replay {
        #[arg(long)]
        room: String,
        /// Start after this seq.
        #[arg(long, conflicts_with = "from")]
        since: Option<u64>,
        /// Start at this time (RFC 3339).
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Stop at this seq, or at this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value = "rooms")]
        stream: StreamArg,
    },
    /// Per stream: messages, bytes, first and last seq and time; per handler: checkpoint and lag.
    Stats,
}

pub async fn run(command: EventsCommand, client: async_nats::Client) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    match command {
        EventsCommand::Tail { room, ty, stream } => {
            let stream: Stream = stream.into();
            let filter = filter_subject(stream, room.as_deref())?;
            let mut messages = reader(&js, stream, filter, DeliverPolicy::New).await?;
            while let Some(message) = messages.next().await {
                let message = message.context("reading the stream")?;
                print_event(stream, &message, ty.as_deref(), None)?;
            }
        }
        EventsCommand::Replay {
            room,
            since,
            from,
            until,
            stream,
        } => {
            let stream: Stream = stream.into();
            let filter = filter_subject(stream, Some(&room))?;
            let (until_seq, until_time) = match until {
                None => (None, None),
                Some(u) => match u.parse::<u64>() {
                    Ok(seq) => (Some(seq), None),
                    Err(_) => (
                        None,
                        Some(
                            u.parse::<DateTime<Utc>>()
                                .context("--until is neither a seq nor an RFC 3339 time")?,
                        ),
                    ),
                },
            };
            let s = js.get_stream(stream.name()).await?;
            let last = match s.direct_get_last_for_subject(filter.clone()).await {
                Ok(m) => m.sequence,
                Err(_) => return Ok(()), // nothing stored on that subject
            };
            let stop = until_seq.map_or(last, |u| u.min(last));
            let policy = match (since, from) {
                (Some(seq), _) => DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                },
                (None, Some(time)) => DeliverPolicy::ByStartTime {
                    start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                        time.timestamp_nanos_opt().unwrap_or_default().into(),
                    )
                    .context("--from out of range")?,
                },
                (None, None) => DeliverPolicy::All,
            };
            if since.is_some_and(|s| s >= stop) {
                return Ok(());
            }
            let mut messages = reader(&js, stream, filter, policy).await?;
            loop {
                let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
                    .await
                    .context("the stream stopped answering")?;
                let Some(message) = next else { break };
                let message = message.context("reading the stream")?;
                let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                let seq = info.stream_sequence;
                if seq > stop {
                    break;
                }
                if until_time.is_some_and(|t| published(&info) > t) {
                    break;
                }
                print_event(stream, &message, None, Some(seq))?;
                if seq >= stop {
                    break;
                }
            }
        }
        EventsCommand::Stats => stats(&js, &client).await?,
    }
    Ok(())
}

fn filter_subject(stream: Stream, id: Option<&str>) -> anyhow::Result<String> {
    match id {
        None => Ok(format!("{}.*", stream.subject_prefix())),
        Some(id) => {
            // Rooms and users share the id syntax: validate before it reaches a subject.
            let id = RoomId::parse(id).with_context(|| format!("bad id {id:?}"))?;
            Ok(format!("{}.{id}", stream.subject_prefix()))
        }
    }
}

async fn reader(
    js: &jetstream::Context,
    stream: Stream,
    filter: String,
    deliver_policy: DeliverPolicy,
) -> anyhow::Result<jetstream::consumer::pull::Ordered> {
    let s = js
        .get_stream(stream.name())
        .await
        .with_context(|| format!("stream {}", stream.name()))?;
    let consumer = s
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("creating a reader")?;
    consumer.messages().await.context("reading")
}

fn published(info: &jetstream::message::Info<'_>) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(
        i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX),
    )
}

fn print_event(
    stream: Stream,
    message: &jetstream::Message,
    ty: Option<&str>,
    seq: Option<u64>,
) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        stream: &'a str,
        seq: u64,
        subject: &'a str,
        time: DateTime<Utc>,
        event: &'a RawValue,
    }
    #[derive(serde::Deserialize)]
    struct TypeOnly<'a> {
        #[serde(rename = "type", borrow)]
        ty: Option<&'a str>,
    }
    let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    let body = std::str::from_utf8(&message.payload).unwrap_or("");
    let Ok(event) = serde_json::from_str::<&RawValue>(body) else {
        eprintln!("seq {}: not json, skipped", info.stream_sequence);
        return Ok(());
    };
    if let Some(want) = ty {
        let got = serde_json::from_str::<TypeOnly>(event.get())
            .ok()
            .and_then(|t| t.ty);
        if got != Some(want) {
            return Ok(());
        }
    }
    let line = Line {
        stream: stream.name(),
        seq: seq.unwrap_or(info.stream_sequence),
        subject: message.subject.as_str(),
        time: published(&info),
        event,
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

async fn stats(js: &jetstream::Context, client: &async_nats::Client) -> anyhow::Result<()> {
    println!(
        "{:<14} {:>10} {:>12} {:>10} {:>10}  {:<25} {:<25}",
        "stream", "messages", "bytes", "first", "last", "first time", "last time"
    );
    let mut last_seqs = std::collections::HashMap::new();
    for stream in Stream::ALL {
        let mut s = match js.get_stream(stream.name()).await {
            Ok(s) => s,
            Err(e) => {
                println!("{:<14} missing ({e})", stream.name());
                continue;
            }
        };
        let state = s.info().await?.state.clone();
        last_seqs.insert(stream, state.last_sequence);
        println!(
            "{:<14} {:>10} {:>12} {:>10} {:>10}  {:<25} {:<25}",
            stream.name(),
            state.messages,
            state.bytes,
            state.first_sequence,
            state.last_sequence,
            state.first_timestamp,
            state.last_timestamp,
        );
    }
    println!();
    println!(
        "{:<14} {:<24} {:>10} {:>8} {:>10} {:>8}",
        "view", "instance", "checkpoint", "lag", "applied", "skipped"
    );
    for view in chatlog_views::View::ALL {
        let stream = view.stream();
        let view = view.name();
        let stream_last = last_seqs.get(&stream).copied().unwrap_or(0);
        let replicas: Vec<serde_json::Value> =
            gather(client, &format!("$SRV.STATS.{view}")).await?;
        if replicas.is_empty() {
            println!("{view:<14} not running");
        }
        for stats in replicas {
            let data = stats["endpoints"]
                .as_array()
                .and_then(|e| e.first())
                .map(|e| e["data"].clone())
                .unwrap_or_default();
            let checkpoint = data["checkpoint"].as_u64().unwrap_or(0);
            println!(
                "{:<14} {:<24} {:>10} {:>8} {:>10} {:>8}",
                view,
                stats["id"].as_str().unwrap_or("?"),
                checkpoint,
                stream_last.saturating_sub(checkpoint),
                data["applied"].as_u64().unwrap_or(0),
                data["skipped"].as_u64().unwrap_or(0),
            );
        }
    }
    Ok(())
}

/// Every answer to `subject` within a short window (one per service instance or replica) that
/// parses as a `T`.
pub(crate) async fn gather<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
) -> anyhow::Result<Vec<T>> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subject.to_string(), inbox, bytes::Bytes::new())
        .await?;
    client.flush().await?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await {
        if let Ok(v) = serde_json::from_slice(&message.payload) {
            out.push(v);
        }
    }
    Ok(out)
}
