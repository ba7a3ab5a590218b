//! Functions end to end with the binary: `chatlog functions add | ls | stats | rm` as admin,
//! `chatlog up --functions` with least-privilege users, and the Python example
//! (examples/functions/echo_bot.py) answering in a room.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use chatlog_test_support::NatsServer;
use serde_json::json;

const ADMIN: (&str, &str) = ("admin", "admin-dev-password");
const SECRET: &str = "the echo bot's secret";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An example function, on a free port: the process (killed on drop) and its URL.
struct Example(std::process::Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `examples/functions/<script>` with `args`; python3 is on every machine the tests run on.
fn start_example(script: &str, args: &[&str]) -> (Example, String) {
    let mut child = Command::new("python3")
        .arg(root().join("examples/functions").join(script))
        .args(["--port", "0"])
        .args(args)
        .env("CHATLOG_FUNCTION_SECRET", SECRET)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the example");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the example's first line");
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("listening on <url>")
        .to_string();
    assert!(url.starts_with("http://"), "{line}");
    (Example(child), url)
}

fn admin(nats: &NatsServer, data: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = common::command(&nats.url_as(ADMIN.0, ADMIN.1), data, args);
    cmd.env("CHATLOG_DEV", "true");
    common::stdout_of(cmd)
}

/// `chatlog functions add <name> --url <url> --secret SECRET <more>` as admin; its output.
fn add(nats: &NatsServer, data: &std::path::Path, name: &str, url: &str, more: &[&str]) -> String {
    let mut args = vec!["functions", "add", name, "--url", url, "--secret", SECRET];
    args.extend_from_slice(more);
    admin(nats, data, &args)
}

/// NATS with `infra/nats-auth.conf`'s users, its streams set up by admin.
async fn nats() -> NatsServer {
    let auth = std::fs::read_to_string(root().join("infra/nats-auth.conf")).unwrap();
    let nats = NatsServer::start_with_auth(&auth, Some(ADMIN)).await;
    common::setup(&nats.url_as(ADMIN.0, ADMIN.1));
    nats
}

/// `chatlog up --functions`, each part as its own least-privilege user.
async fn up(
    nats: &NatsServer,
    data: &std::path::Path,
) -> (common::Proc, chatlog_test_support::client::Client) {
    up_with(nats, data, &[]).await
}

/// [`up`] with more environment.
async fn up_with(
    nats: &NatsServer,
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> (common::Proc, chatlog_test_support::client::Client) {
    let mut up = common::command(&nats.url_as("edge", "edge-dev-password"), data, &["up"]);
    up.env("CHATLOG_DEV", "true")
        .env(
            "CHATLOG_HANDLERS_NATS_URL",
            nats.url_as("handlers", "handlers-dev-password"),
        )
        .env("CHATLOG_FUNCTIONS", "true")
        .env(
            "CHATLOG_FUNCTIONS_NATS_URL",
            nats.url_as("functions", "functions-dev-password"),
        )
        .envs(env.iter().copied());
    common::serve(up).await
}

/// The counters of `chatlog functions stats <name>` (delivered failed dead skipped answers
/// rejected lag in-hand p99), once `settled` says they are what they should be; the last shown
/// when they never are.
async fn stats_when(
    nats: &NatsServer,
    data: &std::path::Path,
    name: &str,
    settled: impl Fn(&[String]) -> bool,
) -> String {
    chatlog_test_support::eventually_ok("the stats", Duration::from_secs(10), async || {
        let stats = admin(nats, data, &["functions", "stats", name]);
        let columns: Vec<String> = stats
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        if columns.get(1..9).is_some_and(&settled) {
            Ok(stats)
        } else {
            Err(stats)
        }
    })
    .await
}

#[tokio::test]
async fn the_echo_bot_answers_in_the_room_through_chatlog_up() {
    let (_bot, url) = start_example("echo_bot.py", &[]);
    let nats = nats().await;
    let data = tempfile::tempdir().unwrap();
    let out = add(
        &nats,
        data.path(),
        "echo",
        &url,
        &["--type", "chat.message.posted"],
    );
    assert!(out.contains("echo registered"), "{out}");
    let listed = admin(&nats, data.path(), &["functions", "ls"]);
    assert!(listed.contains("echo") && listed.contains(&url), "{listed}");
    assert!(!listed.contains(SECRET), "ls shows the secret: {listed}");

    let (_up, app) = up(&nats, data.path()).await;
    let token = app.token("ada").await;
    // A member of the room, so that a mention of her notifies her.
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    for text in ["@echo hello from ada", "/roll 2d6", "just chatting"] {
        let posted = app
            .post("/api/rooms/lobby/messages", &token, json!({ "text": text }))
            .await;
        assert_eq!(posted.status, 201, "{posted:?}");
    }
    let page = app
        .get_until("/api/rooms/lobby/messages", &token, |b| {
            b["messages"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|m| m["user"] == "echo").count() >= 2)
        })
        .await;
    let messages = page["messages"].as_array().unwrap();
    let by = |user: &str| -> Vec<&serde_json::Value> {
        messages.iter().filter(|m| m["user"] == user).collect()
    };
    let echo = by("echo");
    assert_eq!(echo.len(), 2, "{messages:?}");
    assert_eq!(echo[0]["text"], "hello from ada");
    assert_eq!(echo[0]["reply_to"], by("ada")[0]["id"]);
    let roll = echo[1]["text"].as_str().unwrap();
    assert!(roll.starts_with("@ada rolled 2d6: "), "{roll}");
    // The answer mentions the author of the message it answers: ada is notified.
    assert_eq!(echo[1]["mentions"], json!(["ada"]));
    let notified = app
        .get_until("/api/notifications", &token, |b| {
            b["notifications"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["by"] == "echo"))
        })
        .await;
    let n = &notified["notifications"][0];
    assert_eq!((&n["by"], &n["text"]), (&json!("echo"), &echo[1]["text"]));
    let total: u32 = roll.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((2..=12).contains(&total), "{roll}");

    // function delivered failed dead skipped answers rejected lag in-hand p99: the three posts
    // delivered; skipped, the room's creation and ada's join (not posts) and its two answers (its
    // own).
    let want = ["3", "0", "0", "4", "2", "0", "0", "0"];
    // The counters settle once the answers' own deliveries were skipped.
    let stats = stats_when(&nats, data.path(), "echo", |c| c == want).await;
    assert!(stats.contains("1 runtime replica(s) answered"), "{stats}");
    // The same counters in the process's Prometheus text.
    let metrics = app.get("/metrics", &token).await.text;
    for line in [
        "chatlog_function_delivered_total{function=\"echo\"} 3",
        "chatlog_function_answers_total{function=\"echo\"} 2",
        "chatlog_function_call_seconds_count{function=\"echo\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in {metrics}"
        );
    }
    let line = stats.lines().find(|l| l.starts_with("echo ")).unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>()[1..9],
        want,
        "{stats}"
    );

    let out = admin(&nats, data.path(), &["functions", "rm", "echo"]);
    assert!(out.contains("echo removed"), "{out}");
    let listed = admin(&nats, data.path(), &["functions", "ls"]);
    assert!(!listed.contains(&url), "{listed}");
    // Refused: a bad name, a URL that is not http, a short secret, a name registered twice.
    for args in [
        &[
            "functions",
            "add",
            "Echo!",
            "--url",
            &url,
            "--secret",
            SECRET,
        ][..],
        &[
            "functions",
            "add",
            "bot",
            "--url",
            "ftp://x/",
            "--secret",
            SECRET,
        ],
        &[
            "functions",
            "add",
            "bot",
            "--url",
            &url,
            "--secret",
            "short",
        ],
        &[
            "functions",
            "add",
            "bot",
            "--url",
            &url,
            "--secret",
            SECRET,
            "--subject",
            "chat.user.>",
        ],
    ] {
        let mut cmd = common::command(&nats.url_as(ADMIN.0, ADMIN.1), data.path(), args);
        cmd.stderr(Stdio::piped());
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
    }
}

#[tokio::test]
async fn the_moderator_removes_a_message_only_where_it_was_granted_moderation() {
    let (_moderator, url) = start_example("moderator.py", &["--words", "spam,scam"]);
    let nats = nats().await;
    let data = tempfile::tempdir().unwrap();
    let (_up, app) = up(&nats, data.path()).await;
    // The name a function's answers are signed with is nobody else's: a guest holding it before
    // the registration keeps it, and the function cannot have it.
    let held = app.token("mallory").await;
    let mut taken = common::command(
        &nats.url_as(ADMIN.0, ADMIN.1),
        data.path(),
        &[
            "functions",
            "add",
            "mallory",
            "--url",
            &url,
            "--secret",
            SECRET,
        ],
    );
    taken.stderr(Stdio::piped());
    let out = taken.output().unwrap();
    assert!(
        !out.status.success(),
        "a guest's name was given to a function"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a user's name"),
        "{out:?}"
    );
    assert_eq!(
        app.get("/api/rooms", &held).await.status,
        200,
        "the guest still holds it"
    );

    let out = add(
        &nats,
        data.path(),
        "moderator",
        &url,
        &["--type", "chat.message.posted", "--moderates", "lobby"],
    );
    assert!(out.contains("moderator registered"), "{out}");
    let listed = admin(&nats, data.path(), &["functions", "ls"]);
    assert!(listed.contains("lobby"), "{listed}");
    // ... and no guest takes the function's name once it is registered.
    let claim = app
        .request(
            "POST",
            "/api/auth/guest",
            None,
            Some(json!({ "user": "moderator" })),
        )
        .await;
    assert_eq!(claim.status, 400, "{claim:?}");

    let ada = app.token("ada").await;
    let created = app
        .post("/api/rooms", &ada, json!({ "id": "offtopic" }))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let mut posted = Vec::new();
    for (room, text) in [
        ("offtopic", "SPAM outside the moderated room"),
        ("lobby", "hello, all"),
        ("lobby", "cheap Spam, click here"),
        ("lobby", "spammy is not a listed word"),
    ] {
        let answer = app
            .post(
                &format!("/api/rooms/{room}/messages"),
                &ada,
                json!({ "text": text }),
            )
            .await;
        assert_eq!(answer.status, 201, "{answer:?}");
        posted.push(answer.body["id"].as_str().unwrap().to_string());
    }
    let started = std::time::Instant::now();
    let page = app
        .get_until("/api/rooms/lobby/messages", &ada, |b| {
            b["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["deleted"] == true))
        })
        .await;
    eprintln!(
        "removed by moderation {:?} after the post was acknowledged",
        started.elapsed()
    );
    let messages = page["messages"].as_array().unwrap();
    let by_id = |id: &str| messages.iter().find(|m| m["id"] == id).unwrap();
    let removed = by_id(&posted[2]);
    assert_eq!(
        (&removed["deleted"], &removed["moderated"], &removed["text"]),
        (&json!(true), &json!(true), &json!("")),
        "{messages:?}"
    );
    for kept in [&posted[1], &posted[3]] {
        let m = by_id(kept);
        assert!(m["deleted"] == false && m.get("moderated").is_none(), "{m}");
    }
    // Every path serves the removed message redacted, saying it was moderation.
    let events = app.get("/api/rooms/lobby/events?since=0", &ada).await;
    let served = events.body.as_array().unwrap();
    let post = served
        .iter()
        .find(|e| e["event"]["id"] == posted[2].as_str())
        .unwrap();
    assert_eq!(
        post["event"]["data"],
        json!({"deleted": true, "moderated": true})
    );
    assert!(!events.text.contains("click here"), "{}", events.text);
    let delete = served
        .iter()
        .find(|e| e["event"]["type"] == "chat.message.deleted")
        .unwrap();
    assert_eq!(delete["event"]["source"], "/chatlog/function/moderator");
    assert_eq!(delete["event"]["data"]["message_id"], posted[2].as_str());

    // In the room it was not granted, its delete is refused and counted, and the message stays:
    // delivered = the four posts; answers = the one stored; rejected = the one refused.
    stats_when(&nats, data.path(), "moderator", |c| {
        c[0] == "4" && c[4] == "1" && c[5] == "1"
    })
    .await;
    let elsewhere = app.get("/api/rooms/offtopic/messages", &ada).await;
    let m = &elsewhere.body["messages"][0];
    assert_eq!(
        (&m["id"], &m["deleted"]),
        (&json!(posted[0]), &json!(false)),
        "{elsewhere:?}"
    );
}

#[tokio::test]
async fn a_bot_down_for_ten_seconds_misses_nothing_and_answers_each_message_once() {
    let (bot, url) = start_example("echo_bot.py", &[]);
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let nats = nats().await;
    let data = tempfile::tempdir().unwrap();
    add(
        &nats,
        data.path(),
        "echo",
        &url,
        &["--type", "chat.message.posted"],
    );
    // Retries at most 2 s apart, so the bot is called again soon after it is back; the default
    // tries (10) outlast the outage either way.
    let (_up, app) = up_with(
        &nats,
        data.path(),
        &[("CHATLOG_FUNCTION_MAX_BACKOFF_MS", "2000")],
    )
    .await;
    let token = app.token("ada").await;
    let post = async |n: usize| {
        let answer = app
            .post(
                "/api/rooms/lobby/messages",
                &token,
                json!({ "text": format!("@echo number {n}") }),
            )
            .await;
        assert_eq!(answer.status, 201, "{answer:?}");
    };
    let echoes = |body: &serde_json::Value| -> Vec<String> {
        body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["user"] == "echo")
                    .map(|m| m["text"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    for n in 0..3 {
        post(n).await;
    }
    app.get_until("/api/rooms/lobby/messages", &token, |b| {
        echoes(b).len() == 3
    })
    .await;

    drop(bot);
    for n in 3..8 {
        post(n).await;
    }
    // The outage the issue names: the bot stays away this long while its events wait.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_bot, again) = start_example("echo_bot.py", &["--port", &port]);
    assert_eq!(again, url);
    for n in 8..10 {
        post(n).await;
    }
    let page = app
        .get_until("/api/rooms/lobby/messages", &token, |b| {
            echoes(b).len() >= 10
        })
        .await;
    // Every message answered once, in the order written.
    let want: Vec<String> = (0..10).map(|n| format!("number {n}")).collect();
    assert_eq!(echoes(&page), want);
    let stats = stats_when(&nats, data.path(), "echo", |c| c[0] == "10" && c[4] == "10").await;
    let line = stats.lines().find(|l| l.starts_with("echo ")).unwrap();
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[3], "0", "nothing dead: {stats}");
    assert_ne!(columns[2], "0", "the calls while down failed: {stats}");
}

#[tokio::test]
async fn the_runtime_alone_is_ready_once_it_started_the_registry_and_serves_its_metrics() {
    let (_bot, url) = start_example("echo_bot.py", &[]);
    let nats = nats().await;
    let data = tempfile::tempdir().unwrap();
    add(&nats, data.path(), "echo", &url, &[]);
    let mut run = common::command(
        &nats.url_as("functions", "functions-dev-password"),
        data.path(),
        &["functions", "run"],
    );
    run.env("CHATLOG_DEV", "true");
    // Ready (`/readyz` 200) once the registry is read: its function has its counters then.
    let (_run, runtime) = common::serve(run).await;
    let metrics = runtime.request("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    for line in [
        "# TYPE chatlog_function_delivered_total counter",
        "chatlog_function_delivered_total{function=\"echo\"} 0",
        "chatlog_function_lag{function=\"echo\"} 0",
    ] {
        assert!(
            metrics.text.lines().any(|l| l == line),
            "{line} not in {}",
            metrics.text
        );
    }
}
