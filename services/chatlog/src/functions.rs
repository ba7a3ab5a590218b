//! `chatlog functions add | ls | rm | stats | run`: the functions registry (`CHAT_FUNCTIONS`, as
//! admin) and the runtime that calls them (as the `functions` NATS user); docs/protocol.md §9.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use chatlog_events::{
    RoomId,
    functions::{FunctionName, FunctionSpec, Source},
    streams::StreamSettings,
};
use chatlog_functions::{registry, stats};
use clap::{Args, Subcommand, ValueEnum};

use crate::cli::DevArgs;

#[derive(Subcommand)]
pub enum FunctionsCommand {
    /// Register a function: every event its filter matches is POSTed to its URL (a CloudEvent in
    /// binary mode, signed with its secret); with --replace, change a registered one.
    Add(AddArgs),
    /// List the registered functions (their secrets are not shown).
    Ls,
    /// Remove a function: its deliveries stop and its position is dropped.
    Rm { name: String },
    /// Per function: delivered, failed calls, dead letters, answers stored and rejected, lag,
    /// call latency (added up over the runtime replicas that answer).
    Stats { name: Option<String> },
    /// Deliver again, oldest first, what CHAT_DEAD keeps for a function (as admin): each event it
    /// takes is removed; the first it does not take stops the replay.
    ReplayDead {
        name: String,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Run the functions runtime alone (as a NATS user that may: `functions`).
    Run {
        #[command(flatten)]
        dev: DevArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Serve `/livez`, `/readyz` and `/metrics` (Prometheus: each function's counters, lag and call
        /// latency) here, e.g. `0.0.0.0:9091`.
        #[arg(long, env = "CHATLOG_FUNCTIONS_HTTP")]
        http: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SourceArg {
    Rooms,
    Users,
    Presence,
}

#[derive(Args)]
pub struct AddArgs {
    /// The function's name (an id: a-z, 0-9, '_' and '-'): its answers' author.
    pub name: String,
    /// Where events are POSTed (http://).
    #[arg(long)]
    pub url: String,
    /// The HMAC-SHA256 key of `Chatlog-Signature` (16 to 512 bytes).
    #[arg(long, env = "CHATLOG_FUNCTION_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long, value_enum, default_value = "rooms")]
    pub stream: SourceArg,
    /// A subject pattern within the stream (default: all of it, e.g. chat.room.>).
    #[arg(long)]
    pub subject: Option<String>,
    /// Only events of this type (repeat for several; default: every type).
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Grant the function moderation of this room (repeat for several): its answers there may
    /// delete anyone's message. The room must be one its filter covers.
    #[arg(long = "moderates")]
    pub moderates: Vec<String>,
    /// Change the registered function of that name (a new filter starts from now).
    #[arg(long)]
    pub replace: bool,
}

/// `chatlog up`'s functions runtime.
#[derive(Args, Clone)]
pub struct UpArgs {
    /// Run the functions runtime too (`chatlog functions run` runs it alone).
    #[arg(long = "functions", env = "CHATLOG_FUNCTIONS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enabled: bool,
    /// The NATS URL (with the functions user's credentials) the runtime uses; the edge's
    /// `--nats-url` when unset.
    #[arg(long, env = "CHATLOG_FUNCTIONS_NATS_URL", hide_env_values = true)]
    pub functions_nats_url: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// How the runtime calls functions (`functions run`, and `up --functions`).
#[derive(Args, Clone)]
pub struct RuntimeArgs {
    /// Calls per event before it goes to CHAT_DEAD.
    #[arg(long, env = "CHATLOG_FUNCTION_TRIES", default_value_t = 10)]
    pub function_tries: u32,
    /// Milliseconds one call may take, its answer read included.
    #[arg(long, env = "CHATLOG_FUNCTION_TIMEOUT_MS", default_value_t = 10_000)]
    pub function_timeout_ms: u64,
    /// Milliseconds before the first retry, doubled after each (with jitter).
    #[arg(long, env = "CHATLOG_FUNCTION_BACKOFF_MS", default_value_t = 500)]
    pub function_backoff_ms: u64,
    /// The longest pause between two tries, in milliseconds.
    #[arg(
        long,
        env = "CHATLOG_FUNCTION_MAX_BACKOFF_MS",
        default_value_t = 30_000
    )]
    pub function_max_backoff_ms: u64,
    /// Calls in flight per function.
    #[arg(long, env = "CHATLOG_FUNCTION_IN_FLIGHT", default_value_t = 16)]
    pub function_in_flight: usize,
}

impl RuntimeArgs {
    pub fn config(&self) -> chatlog_functions::Config {
        let mut config = chatlog_functions::Config {
            tries: self.function_tries.max(1),
            timeout: Duration::from_millis(self.function_timeout_ms.max(1)),
            backoff: Duration::from_millis(self.function_backoff_ms),
            max_backoff: Duration::from_millis(self.function_max_backoff_ms),
            max_in_flight: self.function_in_flight.max(1),
            ..Default::default()
        };
        if let Ok(host) = std::env::var("HOSTNAME") {
            config.replica = format!("{host}-{}", std::process::id());
        }
        config
    }
}

/// `functions run`, and the runtime of `up --functions`: waits for the streams, then runs until
/// `stop`.
pub async fn runtime(
    client: async_nats::Client,
    args: &RuntimeArgs,
    stats: stats::Stats,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(stop);
    let settings = StreamSettings {
        replicas: 0,
        ..Default::default()
    };
    tokio::select! {
        () = &mut stop => return Ok(()),
        found = chatlog_edge::await_log_streams(&client, &settings, chatlog_edge::STREAMS_PATIENCE) => {
            found.map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    chatlog_functions::run(client, args.config(), stats, stop)
        .await
        .context("the functions runtime")
}

pub async fn run(command: FunctionsCommand, client: async_nats::Client) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    match command {
        FunctionsCommand::Add(args) => {
            let name = FunctionName::parse(args.name.as_str())
                .with_context(|| format!("function name {:?}", args.name))?;
            let stream = match args.stream {
                SourceArg::Rooms => Source::Rooms,
                SourceArg::Users => Source::Users,
                SourceArg::Presence => Source::Presence,
            };
            let spec = FunctionSpec {
                url: args.url,
                secret: args.secret,
                stream,
                subject: args.subject.unwrap_or_else(|| stream.all_subjects()),
                types: args.types,
                moderates: args
                    .moderates
                    .iter()
                    .map(|r| {
                        RoomId::parse(r.as_str()).with_context(|| format!("--moderates {r:?}"))
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            let seq = registry::register(&js, name.clone(), spec, args.replace).await?;
            println!("{name} registered (CHAT_FUNCTIONS seq {seq})");
        }
        FunctionsCommand::Rm { name } => {
            let name = FunctionName::parse(name.as_str())
                .with_context(|| format!("function name {name:?}"))?;
            registry::remove(&js, name.clone()).await?;
            println!("{name} removed");
        }
        FunctionsCommand::Ls => {
            let registry = registry::load(&js).await?;
            println!(
                "{:<20} {:<40} {:<9} {:<22} {:<26} {:<16} consumer",
                "name", "url", "stream", "subject", "types", "moderates"
            );
            for f in registry.iter() {
                let types = if f.spec.types.is_empty() {
                    "all".to_string()
                } else {
                    f.spec.types.join(",")
                };
                let moderates = if f.spec.moderates.is_empty() {
                    "-".to_string()
                } else {
                    f.spec
                        .moderates
                        .iter()
                        .map(RoomId::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                println!(
                    "{:<20} {:<40} {:<9} {:<22} {:<26} {:<16} {}",
                    f.name.as_str(),
                    f.spec.url,
                    format!("{:?}", f.spec.stream).to_lowercase(),
                    f.spec.subject,
                    types,
                    moderates,
                    f.consumer()
                );
            }
        }
        FunctionsCommand::Stats { name } => print_stats(&js, &client, name).await?,
        FunctionsCommand::ReplayDead { name, runtime } => {
            let name = FunctionName::parse(name.as_str())
                .with_context(|| format!("function name {name:?}"))?;
            let done = chatlog_functions::replay_dead(client, runtime.config(), &name).await?;
            println!("{name}: {} taken, {} left", done.taken, done.left);
            if let Some(why) = done.failure {
                anyhow::bail!("{name} did not take the oldest left: {why}");
            }
        }
        FunctionsCommand::Run { .. } => anyhow::bail!("the runtime is run by main"),
    }
    Ok(())
}

async fn print_stats(
    js: &jetstream::Context,
    client: &async_nats::Client,
    only: Option<String>,
) -> anyhow::Result<()> {
    let registry = registry::load(js).await?;
    let replicas: Vec<stats::ReplicaStats> = crate::events::gather(client, stats::SUBJECT).await?;
    let mut total: BTreeMap<String, stats::Snapshot> = BTreeMap::new();
    for replica in &replicas {
        for (name, s) in &replica.functions {
            let t = total.entry(name.clone()).or_default();
            t.delivered += s.delivered;
            t.failed += s.failed;
            t.dead += s.dead;
            t.skipped += s.skipped;
            t.answers += s.answers;
            t.rejected += s.rejected;
            t.calls += s.calls;
            for (k, v) in &s.rejections {
                *t.rejections.entry(k.clone()).or_default() += v;
            }
            // Replicas' quantiles do not add up: the largest is an upper bound.
            t.p99_ms = match (t.p99_ms, s.p99_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            t.last_failure = t.last_failure.take().or(s.last_failure.clone());
            t.last_rejection = t.last_rejection.take().or(s.last_rejection.clone());
        }
    }
    println!(
        "{} runtime replica(s) answered{}",
        replicas.len(),
        if replicas.is_empty() {
            ": counters are 0 (is `chatlog functions run` or `up --functions` running?)"
        } else {
            ""
        }
    );
    println!(
        "{:<20} {:>9} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "function",
        "delivered",
        "failed",
        "dead",
        "skipped",
        "answers",
        "rejected",
        "lag",
        "in hand",
        "p99 ms"
    );
    for f in registry.iter() {
        if only.as_deref().is_some_and(|n| n != f.name.as_str()) {
            continue;
        }
        let (lag, in_hand) = match js.get_stream(f.spec.stream.stream().name()).await {
            Ok(stream) => match stream.consumer_info(f.consumer()).await {
                Ok(info) => (
                    info.num_pending.to_string(),
                    info.num_ack_pending.to_string(),
                ),
                Err(_) => ("-".into(), "-".into()),
            },
            Err(_) => ("-".into(), "-".into()),
        };
        let s = total.remove(f.name.as_str()).unwrap_or_default();
        println!(
            "{:<20} {:>9} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            f.name.as_str(),
            s.delivered,
            s.failed,
            s.dead,
            s.skipped,
            s.answers,
            s.rejected,
            lag,
            in_hand,
            s.p99_ms.map_or("-".into(), |p| format!("{p:.1}")),
        );
        if only.is_some() {
            for (kind, n) in &s.rejections {
                println!("  rejected {kind}: {n}");
            }
            if let Some(why) = &s.last_rejection {
                println!("  last rejection: {why}");
            }
            if let Some(why) = &s.last_failure {
                println!("  last failed call: {why}");
            }
        }
    }
    if let Some(name) = only
        && registry
            .get(&FunctionName::parse(name.as_str()).context("function name")?)
            .is_none()
    {
        anyhow::bail!("no function {name}");
    }
    Ok(())
}

/// `functions run --http`: `/livez` while the process runs, `/readyz` once it read the registry
/// and started its functions, `/metrics`.
pub fn health_routes(stats: stats::Stats) -> axum::Router {
    use axum::{http::StatusCode, routing::get};
    let ready = stats.clone();
    axum::Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let answer = if ready.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "reading the registry")
                };
                async move { answer }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = stats.render_prometheus();
                async move { crate::handlers::prometheus(body) }
            }),
        )
}
