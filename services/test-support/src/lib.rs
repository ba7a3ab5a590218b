//! Test support: a real `nats-server` per test.
//!
//! [`NatsServer::start`] runs `nats-server` with JetStream on a free loopback port and a
//! temporary store, waits (asynchronously, with a real timeout) until JetStream answers, and
//! kills it and removes the store on `Drop`. [`NatsServer::kill`] and [`NatsServer::restart`] are
//! for fault tests: the restarted server keeps its port and its store.
//!
//! The binary is `$NATS_SERVER_BIN`, else the one `make` installed under `.tools/`, else
//! `nats-server` on `PATH`; a missing binary panics with a message saying how to get one.
//!
//! [`eventually`] (and [`eventually_ok`], which says why not yet) is the polling loop of tests
//! that have no event to await. [`fixtures`] builds deterministic events for the projections'
//! given/when/then tests.

pub mod client;
pub mod fixtures;

/// Asks `attempt` again every 10 ms until it answers `Some`, for at most `within`, and answers
/// that; panics saying `what` otherwise. For what a test cannot await (a process's port, a
/// view's state over NATS); where an event can be awaited, await it.
pub async fn eventually<T>(
    what: impl std::fmt::Display,
    within: Duration,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(AGAIN_AFTER).await;
    }
}

/// Like [`eventually`], for an attempt that says why it is not done yet: `Err(why)`. The panic
/// shows the last `why`.
pub async fn eventually_ok<T, E: std::fmt::Debug>(
    what: impl std::fmt::Display,
    within: Duration,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let why = match attempt().await {
            Ok(done) => return done,
            Err(why) => why,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}; the last attempt: {why:?}"
        );
        tokio::time::sleep(AGAIN_AFTER).await;
    }
}

/// The pause between two attempts of [`eventually`].
const AGAIN_AFTER: Duration = Duration::from_millis(10);

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `nats-server` owned by one test.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    extra_config: String,
    /// User and password readiness checks connect with, when the config requires them.
    credentials: Option<(String, String)>,
}

impl NatsServer {
    /// Starts a JetStream server on a free port with a fresh store, and waits until it is ready.
    pub async fn start() -> Self {
        Self::start_with_config("").await
    }

    /// Like [`NatsServer::start`], with extra lines appended to the server's config file.
    pub async fn start_with_config(extra_config: &str) -> Self {
        Self::start_with_auth(extra_config, None).await
    }

    /// Like [`NatsServer::start_with_config`] for a config that requires a login: readiness is
    /// checked as `credentials` (user, password).
    pub async fn start_with_auth(extra_config: &str, credentials: Option<(&str, &str)>) -> Self {
        let mut server = Self::unstarted(free_port(), extra_config, credentials);
        server.spawn();
        server.wait_ready().await;
        server
    }

    fn unstarted(port: u16, extra_config: &str, credentials: Option<(&str, &str)>) -> Self {
        Self {
            child: None,
            port,
            store: tempfile::tempdir().expect("creating a temporary store directory"),
            extra_config: extra_config.to_string(),
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `nats://<user>:<password>@127.0.0.1:<port>`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: the server gets no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open and nothing answers, as with a
    /// server stuck in a long pause. [`NatsServer::resume`] lets it go on; `Drop` kills it
    /// either way.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: a plain system call on the server's own process id, which this value owns
        // (its child is not waited for until `kill`, so the id is not reused meanwhile).
        let done = unsafe { libc::kill(pid, signal) };
        assert_eq!(done, 0, "signal {signal} to nats-server {pid} failed");
    }

    /// Starts the server again on the same port with the same store, and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    fn spawn(&mut self) {
        let config_path = self.store.path().join("nats.conf");
        let jetstream_dir = self.store.path().join("jetstream");
        let config = format!(
            "listen: 127.0.0.1:{port}\nserver_name: n{port}\njetstream {{\n  store_dir: {dir:?}\n}}\n{extra}\n",
            port = self.port,
            dir = jetstream_dir.display().to_string(),
            extra = self.extra_config,
        );
        std::fs::write(&config_path, config).expect("writing the nats-server config");
        let binary = binary();
        let stderr = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let url = match &self.credentials {
            Some((user, password)) => self.url_as(user, password),
            None => self.url(),
        };
        let child = &mut self.child;
        let what = format!("nats-server on {url} ready");
        eventually(what, READY_TIMEOUT, async || {
            if let Some(child) = child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("nats-server exited while starting: {status}");
            }
            jetstream_ready(&url).await.then_some(())
        })
        .await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client of `url`, with the user and password the URL embeds (async-nats ignores them).
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    options(url).connect(url).await
}

fn options(url: &str) -> async_nats::ConnectOptions {
    chatlog_events::nats::connect_options(url)
        .map(|(options, _)| options)
        .unwrap_or_default()
}

async fn jetstream_ready(url: &str) -> bool {
    let connect = options(url)
        .connection_timeout(Duration::from_millis(500))
        .connect(url);
    let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
        return false;
    };
    let js = async_nats::jetstream::new(client);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), js.query_account()).await,
        Ok(Ok(_))
    )
}

/// A JetStream cluster of real nats-servers on this machine (own ports, own stores), for fault
/// tests: kill a node, restart it.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes routed to each other and waits until JetStream answers on each.
    pub async fn start(size: usize) -> Self {
        Self::start_with(size, "").await
    }

    /// Like [`NatsCluster::start`], with `extra` inside each node's `cluster { }` block (e.g.
    /// `no_advertise: true`, as the official Helm chart runs it).
    pub async fn start_with(size: usize, extra: &str) -> Self {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let urls = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes: Vec<NatsServer> = routes
            .iter()
            .map(|route| {
                let cluster = format!(
                    "cluster {{\n  name: test\n  listen: 127.0.0.1:{route}\n  routes: [{urls}]\n  {extra}\n}}\n"
                );
                NatsServer::unstarted(free_port(), &cluster, None)
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_ready().await;
        }
        Self { nodes }
    }

    /// Every node's client URL, comma-separated (what chatlog's `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose server name is `name` (as stream info names a leader).
    pub fn node_named(&mut self, name: &str) -> Option<&mut NatsServer> {
        self.nodes
            .iter_mut()
            .find(|n| format!("n{}", n.port()) == name)
    }

    /// The name of the node leading `stream` now.
    pub async fn leader_of(&self, stream: &str) -> String {
        let nodes: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("a node's url"))
            .collect();
        let client = async_nats::connect(nodes)
            .await
            .expect("connecting to the cluster");
        async_nats::jetstream::new(client)
            .get_stream(stream)
            .await
            .expect("the stream")
            .info()
            .await
            .expect("its info")
            .cluster
            .clone()
            .and_then(|c| c.leader)
            .expect("a leader")
    }

    /// Kills (SIGKILL) the node leading `stream`; its name.
    pub async fn kill_leader_of(&mut self, stream: &str) -> String {
        let leader = self.leader_of(stream).await;
        self.node_named(&leader).expect("the leader's node").kill();
        leader
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free loopback port")
}

/// The `nats-server` binary the tests use.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    // The Makefile installs a pinned server into `<workspace>/.tools/nats-server-<version>/`.
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let tools = d.join(".tools");
        if let Ok(entries) = std::fs::read_dir(&tools) {
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path().join("bin/nats-server"))
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            if let Some(path) = found.pop() {
                return path;
            }
        }
        dir = d.parent();
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for p in std::env::split_paths(&paths) {
            let candidate = p.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "nats-server not found: run the tests with `make test` (it installs a pinned server into \
         .tools/), or set NATS_SERVER_BIN"
    );
}
