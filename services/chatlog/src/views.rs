//! `chatlog views rebuild <name>`: wipe a view and rebuild it from the log, with a progress bar,
//! then print its checksum (the same for every rebuild, and for a live view that caught up).

use std::time::Instant;

use anyhow::Context;
use chatlog_runtime::HostConfig;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::handlers::{HandlerArgs, HandlerName};

#[derive(Subcommand)]
pub enum ViewsCommand {
    /// Wipe the view and rebuild it from the log (stop the handler that uses it first).
    Rebuild {
        name: HandlerName,
        #[command(flatten)]
        handler: HandlerArgs,
        /// Events per sled batch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

pub async fn run(command: ViewsCommand, client: async_nats::Client) -> anyhow::Result<()> {
    match command {
        ViewsCommand::Rebuild {
            name,
            handler,
            batch,
        } => {
            for &view in name.views() {
                rebuild_one(&client, &handler, view, batch).await?;
            }
        }
    }
    Ok(())
}

async fn rebuild_one(
    client: &async_nats::Client,
    handler: &HandlerArgs,
    view: chatlog_views::View,
    batch: usize,
) -> anyhow::Result<()> {
    let view_name = view.name();
    let mut config = HostConfig::new(handler.view_dir(view_name));
    config.batch = batch.max(1);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} seq  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("rebuilding {view_name}"));
    let started = Instant::now();
    let mut applied = 0u64;
    let mut first: Option<u64> = None;
    let progress = |seq: u64, last: u64| {
        let start = *first.get_or_insert(seq);
        applied = seq - start + 1;
        bar.set_length(last.saturating_sub(start) + 1);
        bar.set_position(applied);
    };
    let answer = view
        .rebuild(handler.presence(), client.clone(), &config, progress)
        .await
        .with_context(|| format!("rebuilding the {view_name} view"))?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "rebuilt {view_name} to seq {} in {:.2}s ({:.0} stream messages/s)",
        answer.checkpoint,
        elapsed,
        answer.checkpoint as f64 / elapsed.max(1e-9),
    );
    println!("checksum {}", answer.checksum);
    Ok(())
}
