//! Running the `chatlog` binary in tests: one process per component, killed with SIGKILL on
//! `Drop` (or on purpose, with [`Proc::kill9`]).

#![allow(dead_code)]

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use chatlog_events::{ChatEvent, Payload, RoomId, UserId, event::MessagePosted};
use chatlog_test_support::{client::Client, eventually, free_port};

/// A running `chatlog` process.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL: no goodbye, no last commit.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `chatlog <args>` on `nats_url`, with its data and views under `data` and the token secret
/// every edge of a test shares.
pub fn command(nats_url: &str, data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatlog"));
    cmd.args(args)
        .env("NATS_URL", nats_url)
        .env("CHATLOG_DATA_DIR", data)
        .env("CHATLOG_VIEWS_DIR", data.join("views"))
        .env("CHATLOG_JWT_SECRET", "a-shared-secret-for-every-edge-0123")
        // `chatlog up` would serve the line protocol on 127.0.0.1:5000: tests run side by side.
        .env("CHATLOG_LINE", "127.0.0.1:0")
        // Every test client is on the loopback: the per-address limits would count them as one.
        .env("CHATLOG_LIMITS_EXEMPT", "127.0.0.0/8")
        // CHATLOG_TEST_RUST_LOG=info shows the processes' logs when a test needs looking into.
        .env(
            "RUST_LOG",
            std::env::var("CHATLOG_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// `chatlog setup` on `nats_url`: creates the streams, as `make up` does before the components
/// start (their NATS users may not).
pub fn setup(nats_url: &str) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatlog"));
    cmd.args(["setup", "--nats-url", nats_url])
        .env_remove("NATS_URL")
        .stdin(Stdio::null());
    let out = stdout_of(cmd);
    assert!(out.contains("CHAT_ROOMS"), "{out}");
}

/// Runs `cmd` to its end, asserts it succeeded (showing its stderr if not), answers its stdout.
pub fn stdout_of(mut cmd: Command) -> String {
    let out = cmd
        .stdout(Stdio::piped())
        .output()
        .expect("running chatlog");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cmd --http <a free port>` started: the process, and a client of that port.
pub fn spawn_http(mut cmd: Command) -> (Proc, Client) {
    let addr = format!("127.0.0.1:{}", free_port());
    let proc = Proc(
        cmd.args(["--http", &addr])
            .spawn()
            .expect("starting chatlog"),
    );
    let client = Client {
        addr: addr.parse().unwrap(),
    };
    (proc, client)
}

/// Waits until something listens on `client`'s address (a process started with `--http`
/// installs its signal handlers before it binds).
pub async fn listening(client: &Client) {
    let what = format!("a listener on {}", client.addr);
    eventually(what, Duration::from_secs(30), async || {
        tokio::net::TcpStream::connect(client.addr)
            .await
            .ok()
            .map(drop)
    })
    .await;
}

/// Waits until `client`'s `/readyz` answers 200.
pub async fn ready(client: &Client) {
    listening(client).await;
    let what = format!("chatlog ready on {}", client.addr);
    eventually(what, Duration::from_secs(30), async || {
        (client.request("GET", "/readyz", None, None).await.status == 200).then_some(())
    })
    .await;
}

/// Starts `cmd` (an `up` or `edge`) on a free port and waits until it answers /readyz.
pub async fn serve(cmd: Command) -> (Proc, Client) {
    let (proc, client) = spawn_http(cmd);
    ready(&client).await;
    (proc, client)
}

/// `chatlog bench --url <url> --nats-url <nats_url> --no-save <args>` as a library: parsed as the
/// CLI would parse it, then run; its outcome. `args` may start with more global options.
pub async fn bench(url: &str, nats_url: &str, args: &[&str]) -> chatlog_bench::Outcome {
    #[derive(clap::Parser)]
    struct Bench {
        #[command(flatten)]
        args: chatlog_bench::BenchArgs,
    }
    let argv = ["bench", "--url", url, "--nats-url", nats_url, "--no-save"]
        .into_iter()
        .chain(args.iter().copied());
    let args = <Bench as clap::Parser>::try_parse_from(argv)
        .expect("valid bench arguments")
        .args;
    chatlog_bench::run(args)
        .await
        .expect("the bench run")
        .outcome
}

/// The per-user limits lifted (the bench's list): `chatlog <what>` arguments.
pub use chatlog_bench::LIMITS_LIFTED;

/// `chatlog <what>` with [`LIMITS_LIFTED`].
pub fn lifted(what: &str) -> Vec<&str> {
    let mut args = vec![what];
    args.extend_from_slice(LIMITS_LIFTED);
    args
}

/// A `chatlog edge` on `nats_url` with its per-user limits lifted, as the bench's workloads need
/// (its data under `data`): the process and its address as a URL.
pub async fn edge_for_bench(nats_url: &str, data: &Path) -> (Proc, String) {
    setup(nats_url);
    let (edge, client) = serve(command(nats_url, data, &lifted("edge"))).await;
    (edge, format!("http://{}", client.addr))
}

/// `user`'s `n`th message in `room` ("message n").
pub fn message(room: &RoomId, user: &str, n: usize) -> ChatEvent {
    ChatEvent::in_room(
        room,
        UserId::parse(user).expect("a valid user id"),
        "test",
        Payload::MessagePosted(MessagePosted {
            text: format!("message {n}"),
            mentions: vec![],
            reply_to: None,
            attachments: Vec::new(),
        }),
    )
}
