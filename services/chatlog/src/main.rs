//! The `chatlog` binary: reads the command line, starts telemetry and runs a component.
//! Every component's logic lives in its library crate.

mod cli;
mod telemetry;

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    telemetry::init();
    match cli.command {
        cli::Command::Up(args) | cli::Command::Edge(args) => {
            let config = args.into_config()?;
            let listener = tokio::net::TcpListener::bind(&config.1)
                .await
                .with_context(|| format!("binding {}", config.1))?;
            chatlog_edge::run(config.0, listener, shutdown_signal())
                .await
                .map_err(|e| anyhow::anyhow!(e))
                .context("running the edge")?;
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
