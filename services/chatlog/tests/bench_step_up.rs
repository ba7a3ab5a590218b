//! The bench's fan-out `--step-up` against a real edge and NATS, briefly: the first step over the
//! latency limit (and over it only: nothing lost, nothing behind) runs once more at the same rate
//! and counts as over only when it is over again; no other step runs twice. The figures are for
//! `make bench`; what is checked here is how the step-up decides.

mod common;

use chatlog_bench::{FanoutReport, Outcome};
use chatlog_test_support::NatsServer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A small step-up (2 rooms × 3 members, 2 steps of 2 s from 200 msg/s) with `max_p99_ms` as
/// the latency limit.
async fn step_up(url: &str, nats_url: &str, prefix: &str, max_p99_ms: &str) -> FanoutReport {
    let argv = [
        "fanout",
        "--rooms",
        "2",
        "--members",
        "3",
        "--rate",
        "200",
        "--step-up",
        "--warmup",
        "0.5",
        "--step-duration",
        "2",
        "--max-steps",
        "2",
        "--settle",
        "0",
        "--prefix",
        prefix,
        "--max-p99-ms",
        max_p99_ms,
    ];
    match common::bench(url, nats_url, &argv).await {
        Outcome::Fanout(report) => report,
        _ => unreachable!("a fan-out run answers a fan-out report"),
    }
}

fn labels(report: &FanoutReport) -> Vec<&str> {
    report.phases.iter().map(|p| p.label.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_step_over_the_latency_limit_alone_runs_once_more() {
    let nats = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let (_edge, url) = common::edge_for_bench(&nats.url(), data.path()).await;

    // A limit no delivery can meet: every step is over it, and only the first runs twice.
    let over = step_up(&url, &nats.url(), "over", "0.000001").await;
    assert_eq!(
        labels(&over),
        ["warm-up", "step 1", "step 1 again", "step 2"]
    );
    for p in &over.phases {
        assert_eq!((p.lost, p.duplicates, p.errors), (0, 0, 0), "{}", p.label);
    }
    assert!(over.phases[1..].iter().all(|p| !p.ok));
    assert!(over.saturation.is_none(), "no step was under the limit");
    let stopped = &over
        .ceiling
        .as_ref()
        .expect("the steps kept up")
        .stopped_because;
    assert!(stopped.contains("max-steps"), "{stopped}");

    // A limit every step meets: no step runs twice, and the best step is the saturation.
    let under = step_up(&url, &nats.url(), "under", "60000").await;
    assert_eq!(labels(&under), ["warm-up", "step 1", "step 2"]);
    assert!(under.phases.iter().all(|p| p.ok || p.label == "warm-up"));
    let saturation = under.saturation.as_ref().expect("a saturation");
    assert!(saturation.deliveries_per_s > 0.0);
}
