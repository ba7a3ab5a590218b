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

/// The example, on a free port: the process (killed on drop) and its URL.
struct Bot(std::process::Child);

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_bot() -> Option<(Bot, String)> {
    let mut child = Command::new("python3")
        .arg(root().join("examples/functions/echo_bot.py"))
        .args(["--port", "0"])
        .env("CHATLOG_FUNCTION_SECRET", SECRET)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    let url = line.trim().rsplit(' ').next()?.to_string();
    Some((Bot(child), url))
}

fn admin(nats: &NatsServer, data: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = common::command(&nats.url_as(ADMIN.0, ADMIN.1), data, args);
    cmd.env("CHATLOG_DEV", "true");
    common::stdout_of(cmd)
}

#[tokio::test]
async fn the_echo_bot_answers_in_the_room_through_chatlog_up() {
    let Some((_bot, url)) = start_bot() else {
        eprintln!("skipped: python3 is not available");
        return;
    };
    let auth = std::fs::read_to_string(root().join("infra/nats-auth.conf")).unwrap();
    let nats = NatsServer::start_with_auth(&auth, Some(ADMIN)).await;
    common::setup(&nats.url_as(ADMIN.0, ADMIN.1));
    let data = tempfile::tempdir().unwrap();
    let out = admin(
        &nats,
        data.path(),
        &[
            "functions",
            "add",
            "echo",
            "--url",
            &url,
            "--secret",
            SECRET,
            "--type",
            "chat.message.posted",
        ],
    );
    assert!(out.contains("echo registered"), "{out}");
    let listed = admin(&nats, data.path(), &["functions", "ls"]);
    assert!(listed.contains("echo") && listed.contains(&url), "{listed}");
    assert!(!listed.contains(SECRET), "ls shows the secret: {listed}");

    let mut up = common::command(
        &nats.url_as("edge", "edge-dev-password"),
        data.path(),
        &["up"],
    );
    up.env("CHATLOG_DEV", "true")
        .env(
            "CHATLOG_HANDLERS_NATS_URL",
            nats.url_as("handlers", "handlers-dev-password"),
        )
        .env("CHATLOG_FUNCTIONS", "true")
        .env(
            "CHATLOG_FUNCTIONS_NATS_URL",
            nats.url_as("functions", "functions-dev-password"),
        );
    let (_up, app) = common::serve(up).await;
    let token = app.token("ada").await;
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
    assert!(roll.starts_with("2d6: "), "{roll}");
    let total: u32 = roll.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((2..=12).contains(&total), "{roll}");

    // function delivered failed dead skipped answers rejected lag in-hand p99: the three posts
    // delivered; skipped, the room's creation (not a post) and its two answers (its own).
    let want = ["3", "0", "0", "3", "2", "0", "0", "0"];
    // The counters settle once the answers' own deliveries were skipped: the last shown when
    // they do not.
    let stats =
        chatlog_test_support::eventually_ok("the stats", Duration::from_secs(10), async || {
            let stats = admin(&nats, data.path(), &["functions", "stats", "echo"]);
            let columns: Vec<String> = stats
                .lines()
                .find(|l| l.starts_with("echo "))
                .map(|l| l.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
            if columns.get(1..9).is_some_and(|c| c == want) {
                Ok(stats)
            } else {
                Err(stats)
            }
        })
        .await;
    assert!(stats.contains("1 runtime replica(s) answered"), "{stats}");
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
