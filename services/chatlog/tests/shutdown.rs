//! Every component stops when asked, whatever NATS is doing: SIGTERM to `chatlog up`, `edge` and
//! each `handler` with NATS gone (one of them still starting, waiting for it), and to a presence
//! handler in the middle of retrying a derived event, ends each within the bound with status 0.
//! `make cluster-down` stops the edges, then the handlers, then NATS, and leaves no process and
//! no pid file; `infra/stop.sh` escalates to SIGKILL, saying so, for a process that ignores
//! SIGTERM, and never signals a process that is not one of ours.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use chatlog_test_support::{NatsServer, client::Client, eventually};
use common::Proc;

/// How long a component may take to stop (the processes' own last resort is 15 s).
const BOUND: Duration = Duration::from_secs(10);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -TERM {}", child.id());
}

/// Waits for `child` to end, at most `bound`.
async fn ends_within(child: &mut Child, bound: Duration, what: &str) -> ExitStatus {
    let asked = Instant::now();
    let status = eventually(format!("{what} ending after SIGTERM"), bound, async || {
        child.try_wait().expect("waiting for a child")
    })
    .await;
    println!("{what}: ended {:?} after SIGTERM", asked.elapsed());
    status
}

/// `chatlog <args> --http <free port>`, once it listens (its signal handlers are installed
/// before it binds).
async fn listening(cmd: Command) -> (Proc, Client) {
    let (proc, client) = common::spawn_http(cmd);
    common::listening(&client).await;
    (proc, client)
}

#[tokio::test]
async fn every_component_stops_on_sigterm_within_the_bound_while_nats_is_down() {
    let mut nats = NatsServer::start().await;
    common::setup(&nats.url());
    let data = tempfile::tempdir().unwrap();
    let (edge, _) = common::serve(common::command(
        &nats.url(),
        &data.path().join("edge"),
        &["edge"],
    ))
    .await;
    let (up, _) = common::serve(common::command(
        &nats.url(),
        &data.path().join("up"),
        &["up"],
    ))
    .await;
    let mut running = vec![
        ("chatlog edge".to_string(), edge),
        ("chatlog up".into(), up),
    ];
    for name in ["history", "presence", "notifications"] {
        let cmd = common::command(&nats.url(), &data.path().join(name), &["handler", name]);
        let (handler, http) = listening(cmd).await;
        common::ready(&http).await;
        running.push((format!("chatlog handler {name}"), handler));
    }

    nats.kill();
    // And one still starting: it waits for NATS, which is gone.
    let (starting, _) = listening(common::command(
        &nats.url(),
        &data.path().join("late"),
        &["edge"],
    ))
    .await;
    running.push(("an edge still starting".into(), starting));

    for (_, proc) in &running {
        sigterm(&proc.0);
    }
    for (what, proc) in &mut running {
        let status = ends_within(&mut proc.0, BOUND, what).await;
        assert!(status.success(), "{what} ended with {status}");
    }
}

#[tokio::test]
async fn a_presence_handler_retrying_a_derived_event_stops_on_sigterm() {
    let mut nats = NatsServer::start().await;
    common::setup(&nats.url());
    let data = tempfile::tempdir().unwrap();
    let mut edge = common::command(&nats.url(), &data.path().join("edge"), &["edge"]);
    edge.env("CHATLOG_HEARTBEAT_MS", "200");
    let (mut edge, app) = common::serve(edge).await;
    let mut presence = common::command(&nats.url(), data.path(), &["handler", "presence"]);
    presence
        .env("CHATLOG_OFFLINE_AFTER", "1")
        .env("CHATLOG_TICK_MS", "50")
        .env("RUST_LOG", "warn,chatlog_runtime=info")
        .stderr(Stdio::piped());
    let (mut handler, http) = listening(presence).await;
    common::ready(&http).await;
    let stderr = handler.0.stderr.take().expect("piped stderr");
    let (lines, logged) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });

    // Ada online (the view has her), then her edge and NATS gone: her timeout is due, and the
    // handler retries appending her `offline` to a server that is not there.
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    ada.presence_until("lobby", |online, _| online == ["ada"])
        .await;
    edge.kill9();
    nats.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = logged
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no retry logged: {seen:#?}"));
        if line.contains("emitting a derived event failed, retrying") {
            break;
        }
        seen.push(line);
    }

    sigterm(&handler.0);
    let status = ends_within(&mut handler.0, BOUND, "the presence handler").await;
    assert!(status.success(), "ended with {status}");
    let said: Vec<String> = logged.try_iter().collect();
    assert!(
        said.iter()
            .any(|l| l.contains("stopped with work left for the next start")),
        "the log says what was left: {said:#?}"
    );
}

/// A pid file in `dir` for `pid`.
fn pid_file(dir: &Path, name: &str, pid: u32) {
    std::fs::write(dir.join(format!("{name}.pid")), pid.to_string()).unwrap();
}

fn alive(pid: u32) -> bool {
    // A zombie (ended, not yet reaped by its parent, the test) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn cluster_down_stops_edges_then_handlers_then_nats_and_leaves_nothing() {
    let nats = NatsServer::start().await;
    common::setup(&nats.url());
    let data = tempfile::tempdir().unwrap();
    let cluster = data.path().join("cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    let mut started: Vec<(String, Proc)> = Vec::new();
    for edge in ["edge1", "edge2"] {
        let (proc, _) = common::serve(common::command(
            &nats.url(),
            &data.path().join(edge),
            &["edge"],
        ))
        .await;
        started.push((edge.into(), proc));
    }
    for (handler, replica) in [("history", "a"), ("presence", "a"), ("notifications", "b")] {
        let cmd = common::command(
            &nats.url(),
            &data.path().join(handler),
            &["handler", handler, "--replica", replica],
        );
        let (proc, http) = listening(cmd).await;
        common::ready(&http).await;
        started.push((format!("{handler}-{replica}"), proc));
    }
    for (name, proc) in &started {
        pid_file(&cluster, name, proc.0.id());
    }
    let nats_pid = nats.pid().expect("nats-server runs");
    pid_file(&cluster, "n1", nats_pid);
    // A pid file left by a crash, whose process is long gone.
    pid_file(&cluster, "n2", 999_999_999);

    let out = Command::new("make")
        .args(["-s", "cluster-down"])
        .arg(format!("CLUSTER={}", cluster.display()))
        .current_dir(repository())
        .output()
        .expect("running make cluster-down");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line_of = |name: &str| {
        said.lines()
            .position(|l| l.starts_with(&format!("stopped {name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {said}"))
    };
    let edges = line_of("edge1").max(line_of("edge2"));
    let handlers = ["history-a", "presence-a", "notifications-b"].map(line_of);
    assert!(
        handlers.iter().all(|&h| h > edges) && handlers.iter().all(|&h| h < line_of("n1")),
        "edges, then handlers, then NATS: {said}"
    );
    assert!(!said.contains("SIGKILL"), "all stopped on SIGTERM: {said}");
    for (name, proc) in &mut started {
        let status = ends_within(&mut proc.0, Duration::from_secs(1), name).await;
        assert!(status.success(), "{name} ended with {status}");
    }
    assert!(!alive(nats_pid), "nats-server stopped");
    let left: Vec<_> = std::fs::read_dir(&cluster).unwrap().collect();
    assert!(left.is_empty(), "pid files left: {left:?}");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_saying_so_and_leaves_strangers_alone() {
    let dir = tempfile::tempdir().unwrap();
    // Ignores SIGTERM (an ignored signal stays ignored across exec), named like one of ours.
    let mut stubborn = Command::new("bash")
        .args(["-c", "trap '' TERM; exec -a chatlog-stubborn sleep 600"])
        .spawn()
        .unwrap();
    // A process that is not ours, whose pid a stale pid file happens to hold.
    let mut stranger = Command::new("sleep").arg("600").spawn().unwrap();
    let cmdline = format!("/proc/{}/cmdline", stubborn.id());
    eventually(
        "the stubborn process started",
        Duration::from_secs(5),
        async || {
            let named = std::fs::read_to_string(&cmdline).unwrap_or_default();
            named.starts_with("chatlog-stubborn").then_some(())
        },
    )
    .await;
    pid_file(dir.path(), "stubborn", stubborn.id());
    pid_file(dir.path(), "reused", stranger.id());

    let out = Command::new(repository().join("infra/stop.sh"))
        .args(["--grace", "1"])
        .arg(dir.path().join("stubborn.pid"))
        .arg("--")
        .arg(dir.path().join("reused.pid"))
        .output()
        .expect("running infra/stop.sh");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "stubborn (pid {}) did not stop within 1 s of SIGTERM: SIGKILL",
            stubborn.id()
        )),
        "{said}"
    );
    let status = ends_within(
        &mut stubborn,
        Duration::from_secs(1),
        "the stubborn process",
    )
    .await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status}");
    assert!(alive(stranger.id()), "a process not ours was signalled");
    assert!(!said.contains("reused"), "{said}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "pid files left: {left:?}");
    let _ = stranger.kill();
    let _ = stranger.wait();
}
