//! `chatlog-bench`: the load generator behind `chatlog bench <workload>`.
//!
//! Three workloads, each against a running edge (and its NATS server):
//! - [`fanout`]: R rooms × M members over WebSocket (or the line protocol, `--via line`), an
//!   open-loop send rate, end-to-end latency from send to every delivery, deliveries per second,
//!   loss and duplicates per room seq; `--step-up` finds the saturation rate.
//! - [`append`]: closed-loop senders with a window: acked appends per second and ack latency,
//!   beside raw async-nats JetStream publishing of the same event to a scratch stream.
//! - [`idle`]: N idle joined connections and the edge's resident memory per connection.
//! - [`replay`]: rebuilding the history view from N events, beside a raw read of the stream.
//! - [`storm`]: an edge of its own with N clients restarted (SIGTERM, SIGKILL) while messages
//!   come in through the edge under test: how long until every client resumed, peaks of CPU and
//!   memory, JetStream API requests, and every event missed or repeated.
//!
//! [`run`] runs one and answers a [`Report`] (a table when displayed, JSON when serialized);
//! [`write_results`] files it under `bench/results/` with an SVG latency chart; [`cli`] does
//! both, as `chatlog bench` does. `bench/README.md` says how to run them and what to expect.

pub mod append;
pub mod client;
pub mod fanout;
pub mod idle;
pub mod line;
pub mod pace;
pub mod replay;
pub mod report;
pub mod stats;
pub mod stepup;
pub mod storm;
pub mod sys;

use std::{path::PathBuf, sync::Arc};

use clap::{Args, Subcommand};

pub use append::{AppendArgs, AppendReport};
pub use fanout::{FanoutArgs, FanoutReport};
pub use idle::{IdleArgs, IdleReport};
pub use report::{Outcome, Report, chart, write_results};

/// `chatlog up` / `chatlog edge` arguments that lift the per-user limits, as load from few users
/// (the bench's workloads, the fault tests' producers) needs.
pub const LIMITS_LIFTED: &[&str] = &[
    "--send-rate",
    "1000000",
    "--send-burst",
    "1000000",
    "--signal-rate",
    "1000000",
    "--signal-burst",
    "1000000",
    "--rooms-per-minute",
    "1000000",
    "--max-connections-per-user",
    "100000",
];

/// `chatlog bench [options] <workload> [workload options]`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub workload: Workload,
    /// The edge to load: its HTTP base URL.
    #[arg(
        long,
        env = "CHATLOG_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        help_heading = "Common options"
    )]
    pub url: String,
    /// The NATS server behind the edge (for the raw JetStream ceiling of `append`).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true,
        help_heading = "Common options"
    )]
    pub nats_url: String,
    /// Where `cli` writes `<workload>-<timestamp>.json` and `.svg`.
    #[arg(
        long,
        env = "CHATLOG_BENCH_RESULTS",
        default_value = "bench/results",
        global = true,
        help_heading = "Common options"
    )]
    pub results: PathBuf,
    /// Do not write the results (`cli` only).
    #[arg(long, global = true, help_heading = "Common options")]
    pub no_save: bool,
    /// The edge's process id, for its memory (`idle`) and CPU use; found by the port of --url
    /// when unset.
    #[arg(
        long,
        env = "CHATLOG_EDGE_PID",
        global = true,
        help_heading = "Common options"
    )]
    pub edge_pid: Option<u32>,
    /// Print the report as JSON instead of a table (`cli` only).
    #[arg(long, global = true, help_heading = "Common options")]
    pub json: bool,
    /// Threads of the load generator (`chatlog bench` only). One by default: on a small machine
    /// shared with the system under test, a second generator thread mostly adds wake-ups and
    /// steals the server's core (40 000 deliveries/s cost it 0.47 cores on one thread, 0.56 on
    /// two, and the p99 measured was worse with two).
    #[arg(
        long,
        env = "CHATLOG_BENCH_THREADS",
        default_value_t = 1,
        global = true,
        help_heading = "Common options"
    )]
    pub threads: usize,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Workload {
    /// R rooms × M members: send-to-delivery latency, deliveries/s, loss (open-loop rate).
    Fanout(FanoutArgs),
    /// Closed-loop appends through the edge versus raw JetStream publishing.
    Append(AppendArgs),
    /// N idle joined connections: the edge's resident memory per connection.
    Idle(IdleArgs),
    /// Rebuilding the history view from N events, beside a raw read of the same stream.
    Replay(replay::ReplayArgs),
    /// An edge of N clients restarted under them: resumption time, peaks, API calls, losses.
    Storm(storm::StormArgs),
}

/// What every workload gets.
pub struct Common {
    pub target: Arc<client::Target>,
    pub nats_url: String,
    /// Time zero: send timestamps in message texts are nanoseconds since this instant.
    pub base: std::time::Instant,
    /// The edge's and NATS's processes, when found on this host (for CPU and memory figures).
    pub pids: sys::Pids,
}

/// Runs one workload against the edge at `args.url`. Runs on the caller's tokio runtime (a
/// multi-thread one: connection tasks spread over its workers).
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let started_at = chrono::Utc::now();
    let base = std::time::Instant::now();
    let target = Arc::new(client::Target::resolve(&args.url).await?);
    let pids = sys::Pids::find(args.edge_pid, target.port(), nats_port(&args.nats_url));
    let common = Common {
        target,
        nats_url: args.nats_url.clone(),
        base,
        pids,
    };
    // Every workload starts on a quiet system: the handlers of `chatlog up` run at a low priority
    // and may still be projecting what the workload before loaded.
    quiesce(&common).await;
    let outcome = match args.workload {
        Workload::Fanout(w) => Outcome::Fanout(fanout::run(&common, w).await?),
        Workload::Append(w) => Outcome::Append(append::run(&common, w).await?),
        Workload::Idle(w) => Outcome::Idle(idle::run(&common, w).await?),
        Workload::Replay(w) => Outcome::Replay(replay::run(&common, w).await?),
        Workload::Storm(w) => Outcome::Storm(storm::run(&common, w).await?),
    };
    Ok(Report {
        pids: common.pids,
        started_at,
        url: args.url,
        nats_url: args.nats_url,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seconds: base.elapsed().as_secs_f64(),
        outcome,
    })
}

/// Waits (two minutes at most) until the system under test is quiet, and answers how long that
/// took (`None` when the edge's process is unknown or gone). The handlers of `chatlog up` project in the
/// edge's process, at a low priority: after a load they still have work, and a measurement beside
/// it would share the machine with it. Quiet is the edge's process under 5 % of a core over a
/// second.
pub(crate) async fn quiesce(common: &Common) -> Option<f64> {
    common.pids.edge?;
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(120);
    let mut told = false;
    while std::time::Instant::now() < deadline {
        let from = common.pids.sample();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // No reading (the process is gone) is not quiet: the wait is unknown.
        if common.pids.sample().since(&from).edge_cores? < 0.05 {
            break;
        }
        if !told {
            eprintln!("waiting for the system under test to finish its work (views catching up)");
            told = true;
        }
    }
    // The second of quiet is not part of the wait.
    Some((started.elapsed().as_secs_f64() - 1.0).max(0.0))
}

/// A NATS client of `url` (credentials in the URL honoured).
pub(crate) async fn connect_nats(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let (options, addrs) = chatlog_events::nats::connect_options(url)
        .map_err(|e| anyhow::anyhow!("bad NATS url {url}: {e}"))?;
    options
        .name(name)
        .connect(addrs)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {url}: {e}"))
}

/// The port of `nats://host:port` (4222 when it names none).
fn nats_port(url: &str) -> Option<u16> {
    let rest = url.split("://").last()?;
    let host_port = rest.rsplit('@').next()?.split(['/', ',']).next()?;
    match host_port.rsplit_once(':') {
        Some((_, port)) => port.parse().ok(),
        None => Some(4222),
    }
}

/// `chatlog bench`: runs, prints the report (table or `--json`) and, unless `--no-save`, writes
/// it to `--results`.
pub async fn cli(args: BenchArgs) -> anyhow::Result<Report> {
    let (dir, save, json) = (args.results.clone(), !args.no_save, args.json);
    let report = run(args).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    if save {
        let (json, svg) = write_results(&report, &dir)?;
        eprintln!("wrote {} and {}", json.display(), svg.display());
    }
    Ok(report)
}
