//! The report of a run: a human table ([`std::fmt::Display`]), JSON ([`serde`]), and
//! [`write_results`], which files both the JSON and an SVG latency chart.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use serde::Serialize;

use crate::{
    append::AppendReport,
    fanout::{FanoutReport, Via},
    idle::IdleReport,
    stats::Latency,
};

/// What a bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_at: DateTime<Utc>,
    pub url: String,
    pub nats_url: String,
    /// Cores of the machine (generator, edge and NATS share them when run on one host).
    pub cores: usize,
    pub seconds: f64,
    /// The edge's and NATS's process ids, when found (their CPU use is reported).
    pub pids: crate::sys::Pids,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The workload's own figures; `"workload"` in the JSON says which.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "workload", rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)] // one per run
pub enum Outcome {
    Fanout(FanoutReport),
    Append(AppendReport),
    Idle(IdleReport),
    Replay(crate::replay::ReplayReport),
    Storm(crate::storm::StormReport),
}

impl Report {
    pub fn workload(&self) -> &'static str {
        match self.outcome {
            Outcome::Fanout(_) => "fanout",
            Outcome::Append(_) => "append",
            Outcome::Idle(_) => "idle",
            Outcome::Replay(_) => "replay",
            Outcome::Storm(_) => "storm",
        }
    }

    /// Latency curves for the chart: a name and its `[percentile, ms]` points.
    fn curves(&self) -> Vec<(String, &Latency)> {
        match &self.outcome {
            Outcome::Fanout(f) => f
                .phases
                .iter()
                .filter(|p| p.latency.count > 0)
                .map(|p| {
                    (
                        format!("{} · {:.0} msg/s", p.label, p.target_rate),
                        &p.latency,
                    )
                })
                .collect(),
            Outcome::Append(a) => {
                let mut v = vec![("edge ack".to_string(), &a.edge.latency)];
                if let Some(raw) = &a.raw {
                    v.push(("raw JetStream ack".to_string(), &raw.latency));
                }
                if let Some(half) = &a.half {
                    v.push((
                        format!("edge ack at {:.0}/s (half)", half.per_s),
                        &half.latency,
                    ));
                }
                if let Some(raw) = &a.raw_half {
                    v.push((
                        format!("raw JetStream ack at {:.0}/s", raw.per_s),
                        &raw.latency,
                    ));
                }
                v
            }
            Outcome::Idle(i) => vec![("connect + join".to_string(), &i.connect_latency)],
            Outcome::Replay(_) | Outcome::Storm(_) => Vec::new(),
        }
    }

    fn headline(&self) -> String {
        match &self.outcome {
            Outcome::Fanout(f) => match (&f.saturation, f.phases.last()) {
                (Some(s), _) => format!(
                    "fanout {}×{}{}: saturation {:.0} deliveries/s at {:.0} msg/s{}",
                    f.rooms,
                    f.members,
                    via_note(f.via),
                    s.deliveries_per_s,
                    s.send_rate,
                    f.ceiling
                        .as_ref()
                        .map(|c| format!(", ceiling {:.0}/s", c.deliveries_per_s))
                        .unwrap_or_default()
                ),
                (None, Some(p)) => format!(
                    "fanout {}×{}{} at {:.0} msg/s: p99 {:.2} ms, {:.0} deliveries/s, lost {}",
                    f.rooms,
                    f.members,
                    via_note(f.via),
                    p.target_rate,
                    p.latency.p99_ms,
                    p.deliveries_per_s,
                    p.lost
                ),
                (None, None) => format!("fanout {}×{}", f.rooms, f.members),
            },
            Outcome::Append(a) => format!(
                "append {}×{}: edge {:.0}/s{}{}",
                a.connections,
                a.window,
                a.edge.per_s,
                match (&a.raw, a.ratio) {
                    (Some(r), Some(ratio)) => format!(", raw {:.0}/s, ratio {ratio:.2}", r.per_s),
                    _ => String::new(),
                },
                a.half
                    .as_ref()
                    .map(|h| format!(", ack p99 {:.2} ms at {:.0}/s", h.latency.p99_ms, h.per_s))
                    .unwrap_or_default()
            ),
            Outcome::Idle(i) => format!(
                "idle {} connections: {:.0} B of edge RSS each",
                i.connections, i.rss_bytes_per_connection
            ),
            Outcome::Replay(r) => format!(
                "replay {} events: rebuild {:.0}/s, raw read {:.0}/s, ratio {:.2}",
                r.stream_messages, r.rebuild_per_s, r.raw_per_s, r.ratio
            ),
            Outcome::Storm(r) => format!(
                "storm {} clients in {} rooms: resumed in {}; missed {}, twice {}",
                r.clients,
                r.rooms,
                r.restarts
                    .iter()
                    .map(|x| format!("{:.2} s ({:?})", x.resumed_seconds, x.how))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.missed,
                r.duplicates
            ),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chatlog bench {} — {} — edge {} — {} cores — {:.0} s",
            self.workload(),
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.url,
            self.cores,
            self.seconds
        )?;
        match &self.outcome {
            Outcome::Fanout(r) => fanout_table(f, r),
            Outcome::Append(r) => append_table(f, r),
            Outcome::Idle(r) => idle_table(f, r),
            Outcome::Replay(r) => replay_table(f, r),
            Outcome::Storm(r) => storm_table(f, r),
        }
    }
}

/// How a headline names the line protocol (WebSocket, the default, goes unsaid).
fn via_note(via: Via) -> &'static str {
    match via {
        Via::Ws => "",
        Via::Line => " via line",
    }
}

fn fanout_table(f: &mut fmt::Formatter<'_>, r: &FanoutReport) -> fmt::Result {
    writeln!(
        f,
        "{} rooms × {} members = {} connections ({}), text {} B, setup {:.1} s",
        r.rooms, r.members, r.connections, r.via, r.text_bytes, r.setup_seconds
    )?;
    writeln!(f)?;
    writeln!(
        f,
        "{:<9} {:>8} {:>8} {:>8} {:>10} {:>7} {:>7} {:>7} {:>8} {:>6} {:>5} {:>6} {:>7} {:>4}",
        "phase",
        "target/s",
        "sent/s",
        "acked",
        "deliv/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "lost",
        "dup",
        "closed",
        "lag p99",
        "ok"
    )?;
    for p in &r.phases {
        writeln!(
            f,
            "{:<9} {:>8.0} {:>8.0} {:>8} {:>10.0} {:>7.2} {:>7.2} {:>7.2} {:>8.1} {:>6} {:>5} {:>6} {:>7.2} {:>4}",
            p.label,
            p.target_rate,
            p.send_rate,
            p.acked,
            p.deliveries_per_s,
            p.latency.p50_ms,
            p.latency.p90_ms,
            p.latency.p99_ms,
            p.latency.max_ms,
            p.lost,
            p.duplicates,
            p.closed_connections,
            p.schedule_lag.p99_ms,
            if p.ok { "yes" } else { "NO" }
        )?;
    }
    writeln!(f)?;
    writeln!(
        f,
        "{:<9} {:>10} {:>10} {:>10} {:>13} {:>14}",
        "cpu", "edge cores", "nats cores", "gen cores", "machine cores", "edge µs/deliv"
    )?;
    for p in &r.phases {
        writeln!(
            f,
            "{:<9} {:>10} {:>10} {:>10} {:>13} {:>14}",
            p.label,
            opt(p.cpu.edge_cores, 2),
            opt(p.cpu.nats_cores, 2),
            opt(p.cpu.generator_cores, 2),
            opt(p.cpu.machine_cores, 2),
            opt(p.edge_us_per_delivery, 1)
        )?;
    }
    for p in &r.phases {
        let mut notes = Vec::new();
        if let (Some(start), Some(peak)) = (p.edge_rss_start_kib, p.edge_rss_peak_kib) {
            notes.push(format!(
                "edge RSS {:.1} MiB at the start, {:.1} MiB at the peak",
                start as f64 / 1024.0,
                peak as f64 / 1024.0
            ));
        }
        if p.rate_limited > 0 {
            notes.push(format!(
                "{} sends rate-limited (run the edge with --send-rate 1000000 --send-burst 1000000)",
                p.rate_limited
            ));
        }
        if p.errors > 0 {
            notes.push(format!(
                "{} send errors, first: {}",
                p.errors,
                p.first_error.as_deref().unwrap_or("?")
            ));
        }
        if p.unacked_deliveries > 0 {
            notes.push(format!("{} unacked deliveries", p.unacked_deliveries));
        }
        if p.other_deliveries > 0 {
            notes.push(format!(
                "{} deliveries of events not sent in this phase",
                p.other_deliveries
            ));
        }
        if p.expected_deliveries != p.deliveries {
            notes.push(format!(
                "{} of {} expected deliveries",
                p.deliveries, p.expected_deliveries
            ));
        }
        if !notes.is_empty() {
            writeln!(f, "  {}: {}", p.label, notes.join("; "))?;
        }
    }
    if let Some(s) = &r.saturation {
        writeln!(
            f,
            "\nsaturation: {:.0} deliveries/s ({:.0} msg/s, p99 {:.2} ms); stopped: {}",
            s.deliveries_per_s, s.send_rate, s.p99_ms, s.stopped_because
        )?;
    }
    if let Some(c) = &r.ceiling {
        writeln!(
            f,
            "ceiling: {:.0} deliveries/s kept up with ({:.0} msg/s, p99 {:.2} ms, nothing lost); stopped: {}",
            c.deliveries_per_s, c.send_rate, c.p99_ms, c.stopped_because
        )?;
    }
    Ok(())
}

fn append_table(f: &mut fmt::Formatter<'_>, r: &AppendReport) -> fmt::Result {
    writeln!(
        f,
        "{} connections × window {}, {} rooms, text {} B, stored event {} B",
        r.connections, r.window, r.rooms, r.text_bytes, r.event_bytes
    )?;
    writeln!(f)?;
    writeln!(
        f,
        "{:<6} {:>10} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>6}",
        "path",
        "appends/s",
        "sent",
        "acked",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "errors"
    )?;
    for p in r.phases() {
        writeln!(
            f,
            "{:<6} {:>10.0} {:>9} {:>9} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8.1} {:>6}",
            p.label,
            p.per_s,
            p.sent,
            p.acked,
            p.latency.p50_ms,
            p.latency.p90_ms,
            p.latency.p99_ms,
            p.latency.p999_ms,
            p.latency.max_ms,
            p.errors
        )?;
        if let Some(e) = &p.first_error {
            writeln!(f, "  {}: first error: {e}", p.label)?;
        }
    }
    writeln!(f)?;
    writeln!(
        f,
        "{:<6} {:>10} {:>10} {:>10} {:>13} {:>15}",
        "cpu", "edge cores", "nats cores", "gen cores", "machine cores", "edge µs/append"
    )?;
    for p in r.phases() {
        writeln!(
            f,
            "{:<6} {:>10} {:>10} {:>10} {:>13} {:>15}",
            p.label,
            opt(p.cpu.edge_cores, 2),
            opt(p.cpu.nats_cores, 2),
            opt(p.cpu.generator_cores, 2),
            opt(p.cpu.machine_cores, 2),
            opt(p.edge_us_per_append, 1)
        )?;
    }
    writeln!(f)?;
    for p in r.phases() {
        let s = &p.slices;
        write!(
            f,
            "{:<6} acks over {} ms: {}",
            p.label, s.slow_ms, s.slow_total
        )?;
        if s.slow_total > 0 {
            write!(
                f,
                ", half of them in {} of the {} slices of {} ms",
                s.slices_for_half_of_slow,
                s.acks.len(),
                s.slice_ms
            )?;
        }
        writeln!(f)?;
    }
    if let Some(ratio) = r.ratio {
        writeln!(
            f,
            "\nedge / raw JetStream: {ratio:.2} ({:.0}% of the ceiling)",
            ratio * 100.0
        )?;
    }
    if let Some(s) = r.views_caught_up_s {
        writeln!(
            f,
            "the system under test was quiet (views caught up) {s:.1} s after the edge phase"
        )?;
    }
    if let Some(h) = &r.half {
        writeln!(
            f,
            "half of saturation: {:.0} appends/s sent paced (half the edge phase's), ack p99 {:.2} ms{}",
            h.per_s,
            h.latency.p99_ms,
            r.raw_half
                .as_ref()
                .map(|raw| format!(
                    " (raw JetStream at the same rate: {:.2} ms)",
                    raw.latency.p99_ms
                ))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

fn replay_table(f: &mut fmt::Formatter<'_>, r: &crate::replay::ReplayReport) -> fmt::Result {
    if let Some(rate) = r.load_per_s {
        writeln!(
            f,
            "loaded {} events into {} at {rate:.0}/s",
            r.loaded, r.room
        )?;
    }
    writeln!(
        f,
        "{:<34} {:>12} {:>10}",
        "CHAT_ROOMS, whole stream", "events/s", "seconds"
    )?;
    writeln!(
        f,
        "{:<34} {:>12.0} {:>10.2}",
        "raw ordered-consumer read", r.raw_per_s, r.raw_seconds
    )?;
    writeln!(
        f,
        "{:<34} {:>12.0} {:>10.2}",
        "rebuild of the history view", r.rebuild_per_s, r.rebuild_seconds
    )?;
    writeln!(
        f,
        "{} events; rebuild / raw = {:.2}; checksum {}",
        r.stream_messages, r.ratio, r.checksum
    )
}

fn storm_table(f: &mut fmt::Formatter<'_>, r: &crate::storm::StormReport) -> fmt::Result {
    writeln!(
        f,
        "{} clients in {} rooms on a storm edge of the bench's own (setup {:.1} s); {} messages \
         through the edge under test meanwhile",
        r.clients, r.rooms, r.setup_seconds, r.messages
    )?;
    writeln!(f)?;
    writeln!(
        f,
        "{:<10} {:>16} {:>16} {:>12}",
        "restart", "all resumed s", "edge ready s", "connects"
    )?;
    for x in &r.restarts {
        writeln!(
            f,
            "{:<10} {:>16.2} {:>16.2} {:>12}",
            format!("{:?}", x.how).to_lowercase(),
            x.resumed_seconds,
            x.edge_start_seconds,
            x.connects
        )?;
    }
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    writeln!(f)?;
    writeln!(
        f,
        "peaks: storm edge {} cores, {} MiB; nats {} cores, {} MiB",
        show(r.edge_peak_cores),
        show(r.edge_peak_rss_mib),
        show(r.nats_peak_cores),
        show(r.nats_peak_rss_mib)
    )?;
    writeln!(
        f,
        "JetStream API requests over the storms: {} ({} errors)",
        r.js_api_requests.map_or("-".into(), |n| n.to_string()),
        r.js_api_errors.map_or("-".into(), |n| n.to_string())
    )?;
    writeln!(
        f,
        "storm edge: {} catch-ups, {} direct get requests",
        r.edge_catch_ups.map_or("-".into(), |n| n.to_string()),
        r.edge_direct_gets.map_or("-".into(), |n| n.to_string())
    )?;
    writeln!(
        f,
        "events missed: {}, received twice: {}",
        r.missed, r.duplicates
    )
}

fn idle_table(f: &mut fmt::Formatter<'_>, r: &IdleReport) -> fmt::Result {
    writeln!(
        f,
        "{} idle connections over {} rooms ({} measured, after one per room); edge pid {}{}",
        r.connections,
        r.rooms,
        r.measured_connections,
        r.edge_pid,
        r.edge_nofile
            .map(|n| format!(" (open files limit {n})"))
            .unwrap_or_default()
    )?;
    writeln!(f)?;
    writeln!(
        f,
        "{:<22} {:>12} {:>12} {:>12} {:>8}",
        "edge", "VmRSS KiB", "RssAnon KiB", "VmHWM KiB", "threads"
    )?;
    for (name, m) in [
        ("before", &r.before),
        ("connected", &r.after),
        ("after close", &r.after_close),
    ] {
        writeln!(
            f,
            "{:<22} {:>12} {:>12} {:>12} {:>8}",
            name, m.rss_kib, m.rss_anon_kib, m.hwm_kib, m.threads
        )?;
    }
    writeln!(
        f,
        "\nper connection: {:.0} B RSS ({:.2} KiB), {:.0} B anonymous",
        r.rss_bytes_per_connection,
        r.rss_bytes_per_connection / 1024.0,
        r.anon_bytes_per_connection
    )?;
    writeln!(
        f,
        "held {:.0} s: edge {} cores, nats {} cores; {} frames received, {} connections closed by the edge",
        r.hold_seconds,
        opt(r.idle_cpu.edge_cores, 3),
        opt(r.idle_cpu.nats_cores, 3),
        r.frames_received,
        r.closed_by_edge
    )?;
    writeln!(
        f,
        "connected in {:.1} s ({:.0}/s); connect+join p50 {:.2} ms p99 {:.2} ms max {:.1} ms",
        r.connect_seconds,
        r.measured_connections as f64 / r.connect_seconds.max(1e-9),
        r.connect_latency.p50_ms,
        r.connect_latency.p99_ms,
        r.connect_latency.max_ms
    )
}

/// Writes `<dir>/<workload>-<UTC timestamp>.json` and the `.svg` chart beside it; answers both
/// paths.
pub fn write_results(report: &Report, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = format!(
        "{}-{}",
        report.workload(),
        report.started_at.format("%Y%m%dT%H%M%SZ")
    );
    let json = dir.join(format!("{stem}.json"));
    let svg = dir.join(format!("{stem}.svg"));
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    std::fs::write(&json, text).with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(&svg, chart(report)?).with_context(|| format!("writing {}", svg.display()))?;
    Ok((json, svg))
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];
const GREY: RGBColor = RGBColor(0x44, 0x44, 0x44);

/// The percentiles the x axis marks, at their 1/(1-p) (see [`chart`]).
const PERCENTILES: [(f64, &str); 7] = [
    (1.0, "0%"),
    (2.0, "50%"),
    (10.0, "90%"),
    (100.0, "99%"),
    (1e3, "99.9%"),
    (1e4, "99.99%"),
    (1e5, "max"),
];

/// The latency-by-percentile chart (HdrHistogram style): x is the percentile on a log scale of
/// 1/(1-p) (50, 90, 99, 99.9, …), y the latency in ms on a log scale.
pub fn chart(report: &Report) -> anyhow::Result<String> {
    draw_chart(
        &format!("chatlog bench {}", report.workload()),
        &format!(
            "{} — {}",
            report.headline(),
            report.started_at.format("%Y-%m-%d %H:%M UTC")
        ),
        &report.curves(),
    )
}

fn draw_chart(
    title: &str,
    subtitle: &str,
    curves: &[(String, &Latency)],
) -> anyhow::Result<String> {
    // 100 % is drawn at 99.999 %.
    let x_of = |p: f64| (1.0 / (1.0 - p.min(99.999) / 100.0)).min(1e5);
    let values = curves
        .iter()
        .flat_map(|(_, l)| l.curve.iter().map(|pt| pt[1]))
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y_lo, y_hi) = if hi > 0.0 {
        let lo = lo.log10().floor();
        (lo, hi.log10().ceil().max(lo + 1.0))
    } else {
        (-1.0, 1.0)
    };
    // Ticks at 1, 2 and 5 of every decade.
    let y_ticks: Vec<f64> = (y_lo as i32..=y_hi as i32)
        .flat_map(|d| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(d)))
        .filter(|v| v.log10() <= y_hi + 1e-9)
        .collect();
    let (y_min, y_max) = (10f64.powf(y_lo), 10f64.powf(y_hi));

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        root.draw(&Text::new(
            title,
            (70, 10),
            font(16.0).style(FontStyle::Bold),
        ))?;
        root.draw(&Text::new(subtitle, (70, 32), font(12.0).color(&GREY)))?;
        let (plot, legend) = root.split_horizontally(640);
        let mut chart = ChartBuilder::on(&plot)
            .margin_top(60)
            .margin_left(4)
            .x_label_area_size(50)
            .y_label_area_size(76)
            .build_cartesian_2d(
                (1.0..1e5)
                    .log_scale()
                    .with_key_points(PERCENTILES.map(|(x, _)| x).to_vec()),
                (y_min..y_max).log_scale().with_key_points(y_ticks),
            )?;
        let x_label = |x: &f64| {
            let at = PERCENTILES
                .iter()
                .find(|(px, _)| (px / x - 1.0).abs() < 1e-9);
            at.map_or_else(String::new, |(_, label)| label.to_string())
        };
        let y_label = |ms: &f64| fmt_ms(*ms);
        chart
            .configure_mesh()
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .axis_style(RGBColor(0x88, 0x88, 0x88))
            .label_style(font(12.0).color(&GREY))
            .axis_desc_style(font(12.0).color(&GREY))
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .x_desc("percentile")
            .y_desc("latency (ms, log)")
            .draw()?;
        let left = Pos::new(HPos::Left, VPos::Center);
        for (i, (name, lat)) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points = lat.curve.iter().map(|pt| (x_of(pt[0]), pt[1].max(y_min)));
            chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
            // The legend beside the plot: the curve's name, and its p50, p99 and max.
            let y = 70 + 34 * i as i32;
            legend.draw(&PathElement::new([(16, y), (34, y)], color.stroke_width(3)))?;
            legend.draw(&Text::new(
                name.as_str(),
                (40, y),
                font(12.0).color(&BLACK).pos(left),
            ))?;
            let figures = format!(
                "p50 {} · p99 {} · max {} ms",
                short(lat.p50_ms),
                short(lat.p99_ms),
                short(lat.max_ms)
            );
            let style = font(11.0).color(&RGBColor(0x55, 0x55, 0x55)).pos(left);
            legend.draw(&Text::new(figures, (40, y + 14), style))?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// A sans-serif font of `px` pixels (plotters' SVG backend writes its size divided by 1.24).
fn font(px: f64) -> FontDesc<'static> {
    ("sans-serif", px * 1.24).into_font()
}

/// A number with `digits` decimals, or `-`.
fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        let digits = format!("{v:.3}");
        format!("{} ms", digits.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Three significant digits or so.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_each_curve_with_its_legend_and_the_axes() {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for us in 1..=10_000 {
            h.record(us).unwrap();
        }
        let fast = Latency::of(&h);
        let slow = Latency {
            curve: fast.curve.iter().map(|&[p, ms]| [p, ms * 10.0]).collect(),
            ..fast.clone()
        };
        let curves = [
            ("edge ack".to_string(), &fast),
            ("raw <ack>".to_string(), &slow),
        ];
        let svg = draw_chart("chatlog bench append", "append 1×1 — now", &curves).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        // plotters writes each text on a line of its own.
        for text in [
            "chatlog bench append",
            "append 1×1 — now",
            "percentile",
            "latency (ms, log)",
            "50%",
            "99.9%",
            "max",
            "1 ms",
            "edge ack",
            "raw &lt;ack&gt;",
            "p50 5.00 · p99 9.90 · max 10.0 ms",
        ] {
            assert!(
                svg.contains(&format!(">\n{text}\n</text>")),
                "no {text} in {svg}"
            );
        }
        for color in ["#1F77B4", "#D62728"] {
            let curve = format!(r#"stroke="{color}" stroke-width="2""#);
            assert_eq!(svg.matches(&curve).count(), 1, "{svg}");
        }
        // Workloads without latencies (replay, storm) still get their axes.
        let empty = draw_chart("chatlog bench replay", "replay", &[]).unwrap();
        assert!(empty.contains(">\npercentile\n</text>"), "{empty}");
    }
}
