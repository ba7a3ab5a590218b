//! The command line (README.md, "Configuration"). Every option also reads an environment variable.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use chatlog_edge::{Config, Limits};
use chatlog_events::{RoomId, streams::StreamSettings};
use clap::{Args, Parser, Subcommand};

use crate::{
    events::EventsCommand,
    functions::FunctionsCommand,
    handlers::{HandlerArgs, HandlerName},
    views::ViewsCommand,
};

#[derive(Parser)]
#[command(
    name = "chatlog",
    version,
    about = "event-sourced chat on NATS JetStream"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create the streams, or update them to this version's configuration (with a NATS user
    /// that may: admin). `make up`, `make cluster-up`, compose and the Kubernetes Job run it
    /// before the edges and handlers, whose users may not.
    Setup(SetupArgs),
    /// Run every component in one process: the edge and every handler (what `make up` runs).
    Up {
        #[command(flatten)]
        edge: EdgeArgs,
        #[command(flatten)]
        handlers: HandlerArgs,
        #[command(flatten)]
        functions: crate::functions::UpArgs,
    },
    /// Run the WebSocket and HTTP edge alone (for scaling out).
    Edge(EdgeArgs),
    /// Run one handler (for scaling out: replicas share the queries in a queue group).
    Handler {
        name: HandlerName,
        #[command(flatten)]
        dev: DevArgs,
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        handler: HandlerArgs,
        /// Where to serve `/livez`, `/readyz` (200 once every view answers queries: caught up
        /// to the stream's head as of the start) and `/metrics`, e.g. `0.0.0.0:9090` for
        /// Kubernetes probes. No listener when unset.
        #[arg(long, env = "CHATLOG_HANDLER_HTTP")]
        http: Option<String>,
    },
    /// Inspect the log.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Load a running system and measure it (see bench/README.md).
    Bench(chatlog_bench::BenchArgs),
    /// Repair the views.
    Views {
        #[command(subcommand)]
        command: ViewsCommand,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// The files clients uploaded (docs/protocol.md §10).
    Files {
        #[command(subcommand)]
        command: crate::files::FilesCommand,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Functions: HTTP hooks called with the log's events (docs/protocol.md §9).
    Functions {
        #[command(subcommand)]
        command: FunctionsCommand,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

#[derive(Args, Clone)]
pub struct NatsArgs {
    /// NATS server to use.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
}

#[derive(Args, Clone, Copy)]
pub struct DevArgs {
    /// Accept the development credentials of this repository (`make up`, `make cluster-up` and
    /// compose pass it); without it a placeholder or development secret or password is refused.
    #[arg(long, env = "CHATLOG_DEV", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dev: bool,
}

impl DevArgs {
    /// Refuses NATS URLs with the repository's passwords, unless `--dev`.
    pub fn check_nats_url(self, urls: &str) -> anyhow::Result<()> {
        if self.dev {
            return Ok(());
        }
        refuse_placeholder_passwords(urls)
    }
}

#[derive(Args)]
pub struct SetupArgs {
    /// As a NATS user that may create and update streams (admin).
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Stream replicas; 0 (the default) picks 3 when the server is in a cluster, else 1.
    #[arg(long, env = "CHATLOG_REPLICAS", default_value_t = 0)]
    pub replicas: usize,
    /// Largest WebSocket frame the edges accept, in bytes: the streams' largest message.
    #[arg(long, env = "CHATLOG_MAX_FRAME", default_value_t = Limits::default().max_frame_bytes)]
    pub max_frame: usize,
    /// Seconds to wait for NATS to be reachable.
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
}

impl SetupArgs {
    pub fn streams(&self) -> StreamSettings {
        stream_settings(self.max_frame, self.replicas)
    }
}

/// The streams' settings for edges that accept frames up to `max_frame` bytes.
fn stream_settings(max_frame: usize, replicas: usize) -> StreamSettings {
    StreamSettings {
        // The stream must hold any event an accepted frame can become.
        max_msg_size: i32::try_from(max_frame).unwrap_or(i32::MAX),
        replicas,
        ..StreamSettings::default()
    }
}

#[derive(Args)]
pub struct EdgeArgs {
    /// NATS server to use.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "CHATLOG_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Address to serve the line protocol on (`nc 127.0.0.1 5000`), or `off`. `chatlog up`
    /// serves it on 127.0.0.1:5000 unless told otherwise; `chatlog edge` only when given one.
    #[arg(long, env = "CHATLOG_LINE")]
    pub line: Option<String>,
    /// Where local state (the generated token secret) is kept.
    #[arg(long, env = "CHATLOG_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub dev: DevArgs,
    /// HS256 token secret (at least 32 characters); generated under the data dir when unset.
    #[arg(long, env = "CHATLOG_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Token lifetime in seconds.
    #[arg(long, env = "CHATLOG_TOKEN_TTL", default_value_t = 24 * 3600)]
    pub token_ttl: u64,
    /// Allow guest logins (`POST /api/auth/guest`).
    #[arg(long, env = "CHATLOG_ALLOW_GUESTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_guests: bool,
    /// Ids nobody may take as a guest or an account, beside chatlog, admin, system, root, edge
    /// and handlers (comma-separated).
    #[arg(long, env = "CHATLOG_RESERVED_IDS", value_delimiter = ',')]
    pub reserved_ids: Vec<String>,
    /// Public rooms to create at start when missing (comma-separated).
    #[arg(
        long,
        env = "CHATLOG_DEFAULT_ROOMS",
        default_value = "lobby",
        value_delimiter = ','
    )]
    pub default_rooms: Vec<String>,
    /// Longest message text, in characters.
    #[arg(long, env = "CHATLOG_MAX_TEXT", default_value_t = Limits::default().max_text_chars)]
    pub max_text: usize,
    /// Largest WebSocket frame, in bytes.
    #[arg(long, env = "CHATLOG_MAX_FRAME", default_value_t = Limits::default().max_frame_bytes)]
    pub max_frame: usize,
    /// Appends per user per second (send, edit, delete, react, read, member changes; WebSocket
    /// and HTTP together, across the user's connections on this edge).
    #[arg(long, env = "CHATLOG_SEND_RATE", default_value_t = Limits::default().sends_per_second)]
    pub send_rate: f64,
    /// Appends per user in a burst.
    #[arg(long, env = "CHATLOG_SEND_BURST", default_value_t = Limits::default().send_burst)]
    pub send_burst: f64,
    /// `typing`, `join` and `leave` frames per user per second.
    #[arg(long, env = "CHATLOG_SIGNAL_RATE", default_value_t = Limits::default().signals_per_second)]
    pub signal_rate: f64,
    /// `typing`, `join` and `leave` frames per user in a burst.
    #[arg(long, env = "CHATLOG_SIGNAL_BURST", default_value_t = Limits::default().signal_burst)]
    pub signal_burst: f64,
    /// Rooms one user may create per minute.
    #[arg(long, env = "CHATLOG_ROOMS_PER_MINUTE", default_value_t = Limits::default().rooms_per_minute)]
    pub rooms_per_minute: f64,
    /// Failed logins per account per minute before its logins wait.
    #[arg(long, env = "CHATLOG_LOGIN_FAILURES_PER_MINUTE", default_value_t = Limits::default().login_failures_per_minute)]
    pub login_failures_per_minute: f64,
    /// Password hashes computed at once (argon2 is memory-hard); more logins wait their turn.
    #[arg(long, env = "CHATLOG_CONCURRENT_HASHES", default_value_t = Limits::default().concurrent_hashes)]
    pub concurrent_hashes: usize,
    /// Largest file one upload may store, in bytes (25 MiB).
    #[arg(long, env = "CHATLOG_MAX_FILE_BYTES", default_value_t = Limits::default().max_file_bytes)]
    pub max_file_bytes: u64,
    /// File bytes one user may upload per UTC day on this edge (200 MiB).
    #[arg(long, env = "CHATLOG_FILE_QUOTA_BYTES", default_value_t = Limits::default().file_quota_bytes)]
    pub file_quota_bytes: u64,
    /// Seconds between this edge's sweeps of the files bucket (give or take a quarter; 0: none):
    /// files no live message names are removed once older than `--files-unattached-secs`.
    #[arg(long, env = "CHATLOG_FILES_SWEEP_SECS", default_value_t = 3600)]
    pub files_sweep_secs: u64,
    /// Seconds a file no live message names is kept after its last upload.
    #[arg(long, env = "CHATLOG_FILES_UNATTACHED_SECS", default_value_t = 86_400)]
    pub files_unattached_secs: u64,
    /// Rooms one connection may join.
    #[arg(long, env = "CHATLOG_MAX_ROOMS", default_value_t = Limits::default().max_rooms_per_connection)]
    pub max_rooms: usize,
    /// Room events queued per connection before it is closed as a slow consumer.
    #[arg(long, env = "CHATLOG_OUTBOUND_QUEUE", default_value_t = Limits::default().outbound_queue)]
    pub outbound_queue: usize,
    /// Connections one user may hold on this edge.
    #[arg(long, env = "CHATLOG_MAX_CONNECTIONS_PER_USER", default_value_t = Limits::default().max_connections_per_user)]
    pub max_connections_per_user: usize,
    /// WebSocket connections from one client address on this edge.
    #[arg(long, env = "CHATLOG_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = Limits::default().max_connections_per_address)]
    pub max_connections_per_address: usize,
    /// Guest logins, registrations and logins per client address per minute.
    #[arg(long, env = "CHATLOG_AUTH_PER_MINUTE", default_value_t = Limits::default().auth_per_minute)]
    pub auth_per_minute: f64,
    /// Guest logins, registrations and logins per client address in a burst.
    #[arg(long, env = "CHATLOG_AUTH_BURST", default_value_t = Limits::default().auth_burst)]
    pub auth_burst: f64,
    /// Seconds a client may take to send a request's head (or to start the next one on a
    /// kept-alive connection).
    #[arg(long, env = "CHATLOG_REQUEST_HEAD_SECS", default_value_t = Limits::default().request_head.as_secs())]
    pub request_head_secs: u64,
    /// Seconds a request's body may take to arrive.
    #[arg(long, env = "CHATLOG_REQUEST_BODY_SECS", default_value_t = Limits::default().request_body.as_secs())]
    pub request_body_secs: u64,
    /// Proxies whose X-Forwarded-For names the client (comma-separated CIDRs or addresses).
    #[arg(long, env = "CHATLOG_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Client addresses exempt from the per-address limits, e.g. load generators
    /// (comma-separated CIDRs); per-user limits still apply.
    #[arg(long, env = "CHATLOG_LIMITS_EXEMPT", value_delimiter = ',')]
    pub limits_exempt: Vec<String>,
    /// Origins of browser pages hosted elsewhere (comma-separated, e.g.
    /// https://chat.example.com): answered with CORS headers, and let open WebSockets (as the
    /// edge's own origin and localhost are). Empty by default: no CORS.
    #[arg(long, env = "CHATLOG_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// The former name of --cors-origins, still read (the two lists are one).
    #[arg(
        long,
        env = "CHATLOG_ALLOWED_ORIGINS",
        value_delimiter = ',',
        hide = true
    )]
    pub allowed_origins: Vec<String>,
    /// Milliseconds between a connection's presence heartbeats (offline after 35 s without).
    #[arg(long, env = "CHATLOG_HEARTBEAT_MS", default_value_t = 15_000)]
    pub heartbeat_ms: u64,
    /// The stream replicas `chatlog setup` was given (0: 3 when the server is in a cluster,
    /// else 1); a stream configured otherwise is logged at start.
    #[arg(long, env = "CHATLOG_REPLICAS", default_value_t = 0)]
    pub replicas: usize,
}

impl EdgeArgs {
    /// The edge's configuration and its HTTP address; the line protocol on `default_line` when
    /// `--line` is not given.
    pub fn into_config(self, default_line: Option<&str>) -> anyhow::Result<(Config, String)> {
        if let Some(secret) = &self.jwt_secret {
            anyhow::ensure!(
                secret.len() >= 32,
                "the token secret must be at least 32 characters"
            );
            if !self.dev.dev {
                refuse_placeholder("the token secret (CHATLOG_JWT_SECRET)", secret)?;
            }
        }
        self.dev.check_nats_url(&self.nats_url)?;
        let default_rooms = self
            .default_rooms
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| RoomId::parse(r.as_str()).with_context(|| format!("default room {r:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let limits = Limits {
            max_text_chars: self.max_text,
            max_frame_bytes: self.max_frame,
            sends_per_second: self.send_rate,
            send_burst: self.send_burst,
            signals_per_second: self.signal_rate,
            signal_burst: self.signal_burst,
            rooms_per_minute: self.rooms_per_minute,
            login_failures_per_minute: self.login_failures_per_minute,
            concurrent_hashes: self.concurrent_hashes.max(1),
            max_rooms_per_connection: self.max_rooms,
            outbound_queue: self.outbound_queue.max(1),
            heartbeat: Duration::from_millis(self.heartbeat_ms.max(100)),
            max_connections_per_user: self.max_connections_per_user.max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            auth_per_minute: self.auth_per_minute,
            auth_burst: self.auth_burst,
            request_head: Duration::from_secs(self.request_head_secs.max(1)),
            request_body: Duration::from_secs(self.request_body_secs.max(1)),
            max_file_bytes: self.max_file_bytes,
            file_quota_bytes: self.file_quota_bytes,
            ..Limits::default()
        };
        let streams = stream_settings(self.max_frame, self.replicas);
        let config = Config {
            nats_url: self.nats_url,
            data_dir: self.data_dir,
            jwt_secret: self.jwt_secret,
            token_ttl: Duration::from_secs(self.token_ttl),
            allow_guests: self.allow_guests,
            reserved_ids: self
                .reserved_ids
                .into_iter()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect(),
            default_rooms,
            limits,
            streams,
            extra_metrics: Default::default(),
            extra_ready: Default::default(),
            cors_origins: chatlog_edge::cors::parse_origins(
                &[self.cors_origins, self.allowed_origins].concat(),
            )
            .map_err(|e| anyhow::anyhow!("--cors-origins: {e}"))?,
            trusted_proxies: cidrs("trusted proxy", &self.trusted_proxies)?,
            limits_exempt: cidrs("exempt address", &self.limits_exempt)?,
            line: match self.line.as_deref().or(default_line) {
                None | Some("" | "off") => None,
                Some(addr) => Some(addr.to_string()),
            },
            files_sweep: Duration::from_secs(self.files_sweep_secs),
            files_unattached: Duration::from_secs(self.files_unattached_secs),
        };
        Ok((config, self.http))
    }
}

/// Address blocks from a flag's comma-separated list (empty entries skipped).
fn cidrs(what: &str, list: &[String]) -> anyhow::Result<Vec<chatlog_edge::limits::Cidr>> {
    list.iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            c.parse()
                .map_err(|e: String| anyhow::anyhow!("{what} {c:?}: {e}"))
        })
        .collect()
}

/// Secrets that ship in this repository (`infra/`, the Makefile): known to everyone who can read
/// it, so accepted only with `--dev`.
const PLACEHOLDER_MARKS: [&str; 3] = [
    "change-me",
    "-dev-password",
    "dev-secret-shared-by-every-edge",
];

/// Refuses `value` when it is one of the repository's placeholder or development secrets.
fn refuse_placeholder(what: &str, value: &str) -> anyhow::Result<()> {
    if let Some(mark) = PLACEHOLDER_MARKS.iter().find(|m| value.contains(*m)) {
        anyhow::bail!(
            "{what} contains {mark:?}: it is a placeholder or development value from the \
             repository, which anyone can read; set a random one (e.g. `openssl rand -hex 32`), \
             or pass --dev (CHATLOG_DEV=true) on a development machine"
        );
    }
    Ok(())
}

/// Refuses NATS URLs (comma-separated) whose password is a placeholder or development one.
fn refuse_placeholder_passwords(urls: &str) -> anyhow::Result<()> {
    for url in urls.split(',') {
        let Some((before_host, _)) = url.rsplit_once('@') else {
            continue;
        };
        let credentials = before_host.rsplit("//").next().unwrap_or(before_host);
        if let Some((_, password)) = credentials.split_once(':') {
            refuse_placeholder("a NATS password", password)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_and_their_former_name_make_one_list() {
        let cli = Cli::try_parse_from([
            "chatlog",
            "edge",
            "--cors-origins",
            "https://a.example/, https://b.example",
            "--allowed-origins",
            "https://c.example",
        ])
        .unwrap();
        let Command::Edge(edge) = cli.command else {
            panic!("edge");
        };
        let (config, _) = edge.into_config(None).unwrap();
        assert_eq!(
            config.cors_origins,
            [
                "https://a.example",
                "https://b.example",
                "https://c.example"
            ]
        );
        let cli = Cli::try_parse_from(["chatlog", "edge", "--cors-origins", "*"]).unwrap();
        let Command::Edge(edge) = cli.command else {
            panic!("edge");
        };
        assert!(edge.into_config(None).is_err(), "a wildcard is no origin");
    }

    #[test]
    fn the_repository_s_placeholder_secrets_are_refused_and_random_ones_accepted() {
        for refused in [
            "change-me-to-a-long-random-token-secret-of-64-characters-or-more",
            "compose-dev-secret-shared-by-every-edge-0123",
            "cluster-dev-secret-shared-by-every-edge",
        ] {
            assert!(refuse_placeholder("secret", refused).is_err(), "{refused}");
        }
        assert!(refuse_placeholder("secret", "9f2c1e7a5b3d48e6a0c4f1b2d3e4f5a6").is_ok());
        for refused in [
            "nats://edge:edge-dev-password@127.0.0.1:4222",
            "nats://a:b@n1:4222,nats://edge:change-me-edge@nats.chatlog.svc:4222",
        ] {
            assert!(refuse_placeholder_passwords(refused).is_err(), "{refused}");
        }
        for accepted in [
            "nats://127.0.0.1:4222",
            "nats://edge:Xq81hT0pLr@n1:4222,nats://edge:Xq81hT0pLr@n2:4222",
        ] {
            assert!(refuse_placeholder_passwords(accepted).is_ok(), "{accepted}");
        }
    }
}
