//! The bench's fan-out `--via line` against a real edge and NATS, briefly: line protocol members
//! log in, join rooms that already hold messages (a line `JOIN` starts with the last 20, which
//! the bench must not count), send `MSG` lines and get every acked message once, timed from its
//! send as over WebSocket. The figures are for bench/line.sh; what is checked here is that the
//! workload measures what it says.

mod common;

use chatlog_bench::{FanoutReport, Outcome, fanout::Via};
use chatlog_test_support::{NatsServer, free_port};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 2 rooms × 3 members at 100 msg/s for 1.5 s, `via` with `extra` options.
async fn fanout(url: &str, nats_url: &str, via: &str, extra: &[&str]) -> FanoutReport {
    let mut argv = vec![
        "fanout",
        "--rooms",
        "2",
        "--members",
        "3",
        "--rate",
        "100",
        "--warmup",
        "0.5",
        "--duration",
        "1",
        "--settle",
        "0",
        "--prefix",
        "line",
        "--via",
        via,
    ];
    argv.extend_from_slice(extra);
    match common::bench(url, nats_url, &argv).await {
        Outcome::Fanout(report) => report,
        _ => unreachable!("a fan-out run answers a fan-out report"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn line_members_get_every_message_once_and_time_it_as_websocket_members_do() {
    let nats = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    common::setup(&nats.url());
    let line = format!("127.0.0.1:{}", free_port());
    let mut args = common::lifted("edge");
    args.extend(["--line", &line]);
    let (_edge, client) = common::serve(common::command(&nats.url(), data.path(), &args)).await;
    let url = format!("http://{}", client.addr);

    // Over WebSocket first: the rooms then hold more messages than a line JOIN's backlog.
    let ws = fanout(&url, &nats.url(), "ws", &[]).await;
    assert_eq!(ws.via, Via::Ws);
    let lines = fanout(&url, &nats.url(), "line", &["--line-addr", &line]).await;
    assert_eq!(lines.via, Via::Line);

    for (report, p) in [(&ws, &ws.phases[0]), (&lines, &lines.phases[0])] {
        let via = report.via;
        assert!(p.ok, "{via:?}: {p:?}");
        assert!(p.sent >= 100, "{via:?}: {} sent", p.sent);
        assert_eq!(p.acked, p.sent, "{via:?}: sends not acked");
        assert_eq!(
            p.deliveries,
            p.acked * 3,
            "{via:?}: every member, every message"
        );
        assert_eq!(p.deliveries, p.expected_deliveries, "{via:?}");
        assert_eq!(
            (p.lost, p.duplicates, p.unacked_deliveries),
            (0, 0, 0),
            "{via:?}"
        );
        assert!(
            p.latency.count > 0 && p.latency.p50_ms > 0.0,
            "{via:?}: {:?}",
            p.latency
        );
        assert!(p.ack_latency.count > 0, "{via:?}: no ack timed");
    }
    // Neither the backlog of each line JOIN (the WebSocket run's last messages) nor the joins
    // (a line shows no `chat.member.joined`) counts: nothing but this run's messages was seen.
    assert_eq!(lines.phases[0].other_deliveries, 0);
}
