//! The `chatlog` binary: reads the command line, starts telemetry and runs a component.
//! Every component's logic lives in its library crate.

mod cli;
mod events;
mod files;
mod functions;
mod handlers;
mod telemetry;
mod views;

use std::sync::Arc;

use anyhow::Context;

/// sled's copy-on-write nodes and the edge's per-frame buffers allocate a lot; mimalloc spends
/// far less time in it than the system allocator (which was the top of the rebuild profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;
use tokio::sync::watch;

/// Where `chatlog up` serves the line protocol unless told otherwise.
const DEFAULT_LINE: &str = "127.0.0.1:5000";

fn main() -> anyhow::Result<()> {
    no_transparent_huge_pages();
    let cli = cli::Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let cli::Command::Bench(args) = &cli.command {
        runtime.worker_threads(args.threads.max(1));
    }
    runtime
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(cli))
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    telemetry::init();
    match cli.command {
        cli::Command::Up {
            edge,
            handlers,
            functions,
        } => {
            for url in [&handlers.handlers_nats_url, &functions.functions_nats_url]
                .into_iter()
                .flatten()
            {
                edge.dev.check_nats_url(url)?;
            }
            let (mut config, http) = edge.into_config(Some(DEFAULT_LINE))?;
            let signals = stop_on_signal()?;
            let listener = bind(&http).await?;
            let (stop, stopped) = watch::channel(false);
            // The streams first (`chatlog setup` made them), then the handlers, each component
            // with its own NATS user.
            let (edge_client, _) = chatlog_edge::connect(&config.nats_url, "chatlog-up").await?;
            let streams = chatlog_edge::await_streams(
                &edge_client,
                &config.streams,
                chatlog_edge::STREAMS_PATIENCE,
            );
            tokio::select! {
                () = until_true(signals.clone()) => return Ok(()),
                found = streams => found.map_err(|e| anyhow::anyhow!(e))?,
            }
            let handlers_url = handlers
                .handlers_nats_url
                .clone()
                .unwrap_or_else(|| config.nats_url.clone());
            let hosted = handlers::ViewStats::of(&handlers::HandlerName::ALL);
            let shown = hosted.clone();
            config
                .extra_metrics
                .0
                .push(Arc::new(move || shown.render_prometheus()));
            // Ready when the views answer too: `make up` returns once a client's reads work.
            let answering = hosted.clone();
            config
                .extra_ready
                .0
                .push(Arc::new(move || answering.not_ready().is_empty()));
            let mut tasks = tokio::task::JoinSet::new();
            tasks.spawn(handlers_thread(
                handlers_url,
                handlers,
                hosted,
                stopped.clone(),
            ));
            if functions.enabled {
                let function_stats = chatlog_functions::stats::Stats::default();
                let shown = function_stats.clone();
                config
                    .extra_metrics
                    .0
                    .push(Arc::new(move || shown.render_prometheus()));
                let url = functions
                    .functions_nats_url
                    .clone()
                    .unwrap_or_else(|| config.nats_url.clone());
                let stopped = until_true(stopped.clone());
                tasks.spawn(async move {
                    let (client, _) = chatlog_edge::connect(&url, "chatlog-functions").await?;
                    functions::runtime(client, &functions.runtime, function_stats, stopped).await
                });
            }
            let edge_stopped = until_true(stopped.clone());
            tasks.spawn(async move {
                chatlog_edge::run(config, listener, edge_stopped)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))
                    .context("the edge")
            });
            let stop = std::sync::Arc::new(stop);
            let on_signal = stop.clone();
            tokio::spawn(async move {
                until_true(signals).await;
                on_signal.send_replace(true);
            });
            // The first component to stop (on a signal, or failing) stops the others.
            let mut result = Ok(());
            while let Some(done) = tasks.join_next().await {
                let done = done.context("a component panicked").and_then(|r| r);
                if let Err(e) = &done {
                    tracing::error!(error = format!("{e:#}"), "component failed");
                }
                if result.is_ok() {
                    result = done;
                }
                stop.send_replace(true);
            }
            result?;
        }
        cli::Command::Setup(args) => {
            let (client, _) = chatlog_edge::connect(&args.nats.nats_url, "chatlog-setup").await?;
            let done = chatlog_edge::ensure_streams(
                &client,
                &args.streams(),
                std::time::Duration::from_secs(args.wait),
            )
            .await
            .context("setting up the streams (may this NATS user create streams?)")?;
            for (stream, what) in done {
                let what = match what {
                    chatlog_events::streams::Ensured::Created => "created",
                    chatlog_events::streams::Ensured::Updated => "updated",
                    chatlog_events::streams::Ensured::Unchanged => "up to date",
                };
                println!("{stream} {what}");
            }
        }
        cli::Command::Edge(args) => {
            let (config, http) = args.into_config(None)?;
            let signals = stop_on_signal()?;
            let listener = bind(&http).await?;
            chatlog_edge::run(config, listener, until_true(signals))
                .await
                .map_err(|e| anyhow::anyhow!(e))
                .context("running the edge")?;
        }
        cli::Command::Handler {
            name,
            dev,
            nats,
            handler,
            http,
        } => {
            dev.check_nats_url(&nats.nats_url)?;
            let signals = stop_on_signal()?;
            let stats = handlers::ViewStats::of(&[name]);
            if let Some(addr) = http {
                let listener = bind(&addr).await?;
                let routes = handlers::health_routes(stats.clone());
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, routes).await {
                        tracing::error!(error = %e, "the handler's HTTP listener failed");
                    }
                });
            }
            let (client, _) = chatlog_edge::connect(&nats.nats_url, name.as_str()).await?;
            let shared = chatlog_runtime::SharedReaders::default();
            handlers::run(name, client, &handler, &shared, &stats, until_true(signals)).await?;
        }
        cli::Command::Events { command, nats } => {
            events::run(command, connect_once(&nats.nats_url).await?).await?;
        }
        cli::Command::Files { command, nats } => {
            files::run(command, connect_once(&nats.nats_url).await?).await?;
        }
        cli::Command::Bench(args) => {
            chatlog_bench::cli(args).await?;
        }
        cli::Command::Views { command, nats } => {
            views::run(command, connect_once(&nats.nats_url).await?).await?;
        }
        cli::Command::Functions {
            command: functions::FunctionsCommand::Run { dev, runtime, http },
            nats,
        } => {
            dev.check_nats_url(&nats.nats_url)?;
            let signals = stop_on_signal()?;
            let stats = chatlog_functions::stats::Stats::default();
            if let Some(addr) = http {
                let listener = bind(&addr).await?;
                let routes = functions::health_routes(stats.clone());
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, routes).await {
                        tracing::error!(error = %e, "the runtime's HTTP listener failed");
                    }
                });
            }
            let (client, _) = chatlog_edge::connect(&nats.nats_url, "chatlog-functions").await?;
            functions::runtime(client, &runtime, stats, until_true(signals)).await?;
        }
        cli::Command::Functions { command, nats } => {
            functions::run(command, connect_once(&nats.nats_url).await?).await?;
        }
    }
    Ok(())
}

/// One connection for a command-line tool: fails at once when NATS is not there.
async fn connect_once(url: &str) -> anyhow::Result<async_nats::Client> {
    let (options, addrs) =
        chatlog_edge::connect_options(url).map_err(|e| anyhow::anyhow!("bad NATS url: {e}"))?;
    options.connect(addrs).await.context("connecting to NATS")
}

async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Runs the handlers of `chatlog up` on a thread and runtime of their own, at a lower priority,
/// until `stopped` (or the first of them fails). On the edge's runtime, a view's batch commit
/// (sled, up to tens of milliseconds of CPU) held a worker the edge's connections were waiting
/// for, and live delivery's p99 tripled. Views may lag a little under overload; live delivery
/// does not.
fn handlers_thread(
    url: String,
    args: handlers::HandlerArgs,
    hosted: handlers::ViewStats,
    stopped: watch::Receiver<bool>,
) -> impl std::future::Future<Output = anyhow::Result<()>> {
    let (done, result) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("chatlog-handlers".into())
        .spawn(move || {
            lower_thread_priority();
            let run = || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the handlers' runtime")?;
                runtime.block_on(async move {
                    let (client, _) = chatlog_edge::connect(&url, "chatlog-handlers").await?;
                    let mut tasks = tokio::task::JoinSet::new();
                    // History and mentions both read CHAT_ROOMS: once, for both.
                    let shared = chatlog_runtime::SharedReaders::default();
                    for name in handlers::HandlerName::ALL {
                        let stats = hosted.clone();
                        let client = client.clone();
                        let args = args.clone();
                        let shared = shared.clone();
                        let stopped = until_true(stopped.clone());
                        tasks.spawn(async move {
                            handlers::run(name, client, &args, &shared, &stats, stopped)
                                .await
                                .with_context(|| format!("the {} handler", name.as_str()))
                        });
                    }
                    while let Some(finished) = tasks.join_next().await {
                        finished.context("a handler panicked")??;
                    }
                    Ok(())
                })
            };
            let _ = done.send(run());
        });
    async move {
        spawned.context("starting the handlers' thread")?;
        result.await.context("the handlers' thread ended")?
    }
}

/// `SCHED_IDLE` for the calling thread and the threads it starts (nice 19 where that is refused):
/// when the machine is short of CPU the edge's workers go first, and a waking worker preempts a
/// view's thread at once.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread (0 and its own id); `param` outlives the
    // call that reads it.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::gettid();
            if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) != 0 {
                tracing::debug!("could not lower the handlers' thread priority");
            }
        }
    }
}

/// Transparent huge pages off for this process (`PR_SET_THP_DISABLE`): sled allocates each log
/// buffer afresh, and a huge page per buffer is memory the kernel must clear on the views' time.
/// Where the call fails (not Linux, an old kernel) nothing else changes.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call about the calling process, with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Resolves when the flag turns true.
async fn until_true(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

/// How long a process may take to stop once asked. Every component stops well within it (each
/// wait on NATS gives up when asked to stop); past it, the process exits anyway, saying so.
const STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(15);

/// A flag set on Ctrl-C or SIGTERM, whose handlers are installed now, before anything can block
/// (a signal that came before would have ended the process with no goodbye). After the first
/// signal the process has [`STOP_BOUND`] to end; a second one ends it at once.
fn stop_on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (stop, stopping) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!(bound = ?STOP_BOUND, "shutting down");
        stop.send_replace(true);
        std::thread::spawn(|| {
            std::thread::sleep(STOP_BOUND);
            tracing::error!(
                bound = ?STOP_BOUND,
                "not stopped within the bound: exiting now (what was not committed is redone by the next start)"
            );
            std::process::exit(0);
        });
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::warn!("asked to stop again: exiting now");
        std::process::exit(0);
    });
    Ok(stopping)
}
