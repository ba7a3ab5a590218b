//! Running handlers: `chatlog handler <name>`, and the handlers `chatlog up` runs beside the edge.

use std::{path::PathBuf, sync::Arc};

use chatlog_runtime::{HostConfig, HostStats, Projection};
use clap::{Args, ValueEnum};

/// The handlers chatlog has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HandlerName {
    History,
}

impl HandlerName {
    pub const ALL: [HandlerName; 1] = [HandlerName::History];

    pub fn as_str(self) -> &'static str {
        match self {
            HandlerName::History => chatlog_history::History.name(),
        }
    }
}

#[derive(Args, Clone)]
pub struct HandlerArgs {
    /// Where the handlers keep their views (one sled directory each).
    #[arg(long, env = "CHATLOG_VIEWS_DIR", default_value = "data/views")]
    pub views_dir: PathBuf,
    /// A replica name: the view lives in `<views-dir>/<handler>-<replica>`, so several replicas
    /// of one handler can run side by side, each with its own view.
    #[arg(long, env = "CHATLOG_REPLICA")]
    pub replica: Option<String>,
}

impl HandlerArgs {
    pub fn view_dir(&self, name: HandlerName) -> PathBuf {
        match &self.replica {
            Some(r) => self.views_dir.join(format!("{}-{r}", name.as_str())),
            None => self.views_dir.join(name.as_str()),
        }
    }
}

/// Runs one handler until `shutdown`, reporting into `stats`.
pub async fn run(
    name: HandlerName,
    client: async_nats::Client,
    args: &HandlerArgs,
    stats: Arc<HostStats>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = HostConfig::new(args.view_dir(name));
    match name {
        HandlerName::History => {
            chatlog_runtime::run(chatlog_history::History, client, config, stats, shutdown).await?
        }
    }
    Ok(())
}
