//! The bench's `append` workload against a real edge and NATS, briefly: every phase runs to its
//! end with every send acked, the open loops send the rate they were given, and the scratch
//! stream of the raw phases is gone afterwards. Its figures are for `make bench`; what is checked
//! here is that the workload measures what it says (an open loop that wedged, or sent at another
//! rate than it reports, would fail).

mod common;

use chatlog_bench::{AppendReport, Outcome, append::AppendPhase, append::RAW_STREAM};
use chatlog_test_support::NatsServer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WARMUP: f64 = 0.3;
const DURATION: f64 = 1.0;

async fn append(url: &str, nats_url: &str, extra: &[&str]) -> AppendReport {
    let (warmup, duration) = (WARMUP.to_string(), DURATION.to_string());
    let mut argv = vec![
        "append",
        "--connections",
        "4",
        "--window",
        "4",
        "--rooms",
        "2",
        "--warmup",
        &warmup,
        "--duration",
        &duration,
    ];
    argv.extend_from_slice(extra);
    match common::bench(url, nats_url, &argv).await {
        Outcome::Append(report) => report,
        _ => unreachable!("an append run answers an append report"),
    }
}

/// Every send acked, no error.
fn assert_clean(p: &AppendPhase) {
    assert!(p.sent > 0, "{}: nothing sent", p.label);
    assert_eq!(
        p.errors, 0,
        "{}: errors, first: {:?}",
        p.label, p.first_error
    );
    assert_eq!(p.acked, p.sent, "{}: sends not acked", p.label);
    // The 100 ms slices hold every measured ack, and no more slow ones than acks.
    let s = &p.slices;
    let measured = (p.per_s * p.measured_seconds).round() as u64;
    assert_eq!(s.acks.iter().sum::<u64>(), measured, "{}: slices", p.label);
    assert_eq!(s.acks.len(), (p.measured_seconds * 10.0).ceil() as usize);
    assert!(s.acks.iter().zip(&s.slow).all(|(a, slow)| slow <= a));
    assert_eq!(s.slow.iter().sum::<u64>(), s.slow_total);
}

/// An open loop at `rate` sent what the rate makes over its warm-up and measured seconds.
fn assert_sent_at(p: &AppendPhase, rate: f64) {
    let expected = rate * (WARMUP + DURATION);
    let sent = p.sent as f64;
    assert!(
        (sent - expected).abs() <= expected * 0.1 + 4.0,
        "{}: {sent} sends at {rate}/s over {} s, expected {expected:.0}",
        p.label,
        WARMUP + DURATION
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_append_workload_measures_every_phase_and_paces_its_open_loops() {
    let nats = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let (_edge, url) = common::edge_for_bench(&nats.url(), data.path()).await;

    // Closed loops (raw, edge), then the half phase and raw JetStream at its rate.
    let report = append(&url, &nats.url(), &[]).await;
    let raw = report.raw.as_ref().expect("the raw phase");
    let half = report.half.as_ref().expect("the half phase");
    let raw_half = report.raw_half.as_ref().expect("raw JetStream at half");
    for p in [&report.edge, raw, half, raw_half] {
        assert_clean(p);
    }
    assert!(report.ratio.is_some_and(|r| r > 0.0));
    let rate = report.edge.per_s / 2.0;
    assert_sent_at(half, rate);
    assert_sent_at(raw_half, half.per_s);

    // `--rate`: both loops open at that rate, no half phase.
    let report = append(&url, &nats.url(), &["--rate", "400"]).await;
    assert_eq!(report.edge.label, "open");
    assert!(report.half.is_none() && report.raw_half.is_none());
    let raw = report.raw.as_ref().expect("the raw phase");
    for p in [&report.edge, raw] {
        assert_clean(p);
        assert_sent_at(p, 400.0);
    }

    let nats_client = async_nats::connect(nats.url()).await.expect("NATS");
    let js = async_nats::jetstream::new(nats_client);
    assert!(
        js.get_stream(RAW_STREAM).await.is_err(),
        "the raw phases' scratch stream was left behind"
    );
}
