//! The monitoring files of `infra/monitoring/`: the Grafana dashboard parses and each of its
//! panels queries only known metrics; the alert rules parse, pass `promtool check rules` and their
//! unit tests (`promtool test rules`); every chatlog metric they name is served by a real
//! `chatlog up` and `chatlog handler --http` on a real nats-server; every NATS metric they name is
//! one prometheus-nats-exporter makes.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::{Command, Stdio},
};

use chatlog_test_support::{NatsServer, client::Client, free_port};
use serde::Deserialize;
use serde_json::Value;

/// chatlog's metrics, as sample names: `services/edge/src/metrics.rs` (`Metrics::render`, served
/// by `chatlog edge` and `chatlog up`) and `services/runtime/src/host.rs`
/// (`HostStats::render_prometheus`, a line per view labelled `handler`, served by `chatlog handler
/// --http` and `chatlog up`). The live test checks that each is served.
const EXPORTED: &[&str] = &[
    "chatlog_edge_connections",
    "chatlog_edge_connections_total",
    "chatlog_edge_appends_total",
    "chatlog_edge_rooms_live",
    "chatlog_edge_nats_connected",
    "chatlog_edge_deliveries_total",
    "chatlog_edge_slow_consumer_kicks_total",
    "chatlog_edge_rate_limited_total",
    "chatlog_edge_catch_ups_in_flight",
    "chatlog_edge_catch_ups_total",
    "chatlog_edge_direct_gets_total",
    "chatlog_edge_append_seconds_bucket",
    "chatlog_edge_append_seconds_sum",
    "chatlog_edge_append_seconds_count",
    "chatlog_handler_checkpoint",
    "chatlog_handler_lag",
    "chatlog_handler_applied_total",
    "chatlog_handler_reads_total",
    "chatlog_handler_skipped_total",
    "chatlog_handler_ready",
    "chatlog_function_delivered_total",
    "chatlog_function_failed_calls_total",
    "chatlog_function_dead_total",
    "chatlog_function_skipped_total",
    "chatlog_function_answers_total",
    "chatlog_function_rejected_total",
    "chatlog_function_lag",
    "chatlog_function_call_seconds_count",
];

/// Series Prometheus itself makes for every target.
const PROMETHEUS: &[&str] = &["up"];

/// prometheus-nats-exporter's JetStream metrics (`-jsz=...`), every name its
/// `collector/jsz.go` builds (`prometheus.BuildFQName("jetstream", subsystem, name)`), at its
/// v0.20.1 (unchanged up to commit 2fdbfd7 of 2026-06-10). `stream_limit_bytes` and
/// `stream_limit_messages` exist since v0.17.0 and are sent only with `-jsz=all` (or
/// `consumers`): the other filters ask /jsz without the streams' config.
const EXPORTER_JSZ: &[&str] = &[
    "jetstream_server_jetstream_disabled",
    "jetstream_server_total_streams",
    "jetstream_server_total_consumers",
    "jetstream_server_total_messages",
    "jetstream_server_total_message_bytes",
    "jetstream_server_max_memory",
    "jetstream_server_max_storage",
    "jetstream_account_max_memory",
    "jetstream_account_max_storage",
    "jetstream_account_storage_used",
    "jetstream_account_memory_used",
    "jetstream_stream_total_messages",
    "jetstream_stream_limit_messages",
    "jetstream_stream_total_bytes",
    "jetstream_stream_limit_bytes",
    "jetstream_stream_first_seq",
    "jetstream_stream_last_seq",
    "jetstream_stream_consumer_count",
    "jetstream_stream_subject_count",
    "jetstream_consumer_delivered_consumer_seq",
    "jetstream_consumer_delivered_stream_seq",
    "jetstream_consumer_last_delivery_seconds",
    "jetstream_consumer_last_ack_seconds",
    "jetstream_consumer_num_ack_pending",
    "jetstream_consumer_num_redelivered",
    "jetstream_consumer_num_waiting",
    "jetstream_consumer_num_pending",
    "jetstream_consumer_ack_floor_stream_seq",
    "jetstream_consumer_ack_floor_consumer_seq",
    "jetstream_stream_source_lag",
    "jetstream_stream_source_active_duration_ns",
    "jetstream_stream_mirror_lag",
    "jetstream_stream_mirror_active_duration_ns",
];

/// The exporter's `-varz` metrics the dashboard and rules use. The exporter has no fixed list:
/// `collector/collector.go` (v0.20.1; `objectToMetrics`, `fqName`) makes a gauge of every numeric
/// field of the server's /varz, named `gnatsd_varz_` + the field's JSON path joined with `_`.
/// [`varz_metrics_are_what_the_exporter_makes_of_a_real_servers_varz`] derives them so from the
/// pinned nats-server's /varz.
const EXPORTER_VARZ: &[&str] = &[
    "gnatsd_varz_connections",
    "gnatsd_varz_in_msgs",
    "gnatsd_varz_out_msgs",
    "gnatsd_varz_slow_consumers",
    "gnatsd_varz_jetstream_stats_storage",
    "gnatsd_varz_jetstream_config_max_storage",
];

/// The alerts the rules must have (README.md says what each means).
const ALERTS: &[&str] = &[
    "ChatlogEdgeDown",
    "ChatlogHandlerDown",
    "ChatlogEdgeWithoutNats",
    "ChatlogNatsExporterDown",
    "ChatlogViewBehind",
    "ChatlogViewNotReady",
    "ChatlogViewStalled",
    "ChatlogStreamNearLimit",
    "ChatlogJetStreamStorageNearFull",
    "ChatlogFunctionDeadLetters",
    "ChatlogFunctionBehind",
];

/// What the dashboard must show, by the metric each panel is about.
const DASHBOARD_MUST_NAME: &[&str] = &[
    "up",
    "chatlog_edge_connections",
    "chatlog_edge_appends_total",
    "chatlog_edge_deliveries_total",
    "chatlog_edge_append_seconds_bucket",
    "chatlog_edge_catch_ups_in_flight",
    "chatlog_edge_nats_connected",
    "chatlog_edge_slow_consumer_kicks_total",
    "chatlog_edge_rate_limited_total",
    "chatlog_handler_lag",
    "chatlog_handler_ready",
    "gnatsd_varz_connections",
    "gnatsd_varz_in_msgs",
    "gnatsd_varz_out_msgs",
    "jetstream_stream_total_bytes",
    "jetstream_stream_limit_bytes",
    "jetstream_stream_total_messages",
    "jetstream_stream_limit_messages",
    "gnatsd_varz_jetstream_stats_storage",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn known() -> BTreeSet<&'static str> {
    EXPORTED
        .iter()
        .copied()
        .chain(PROMETHEUS.iter().copied())
        .chain(EXPORTER_JSZ.iter().copied())
        .chain(EXPORTER_VARZ.iter().copied())
        .collect()
}

/// A metric a PromQL expression selects, with the function it is directly inside (`rate`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Selected {
    name: String,
    function: Option<String>,
}

/// The metrics `expr` selects: its identifiers that are not functions, aggregations, keywords,
/// label names (in `{...}`, or grouping after `by`, `on`, ...), durations, numbers, strings or
/// Grafana variables.
fn selected(expr: &str) -> Vec<Selected> {
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Past the closing `close` of what opens at `i`, skipping quoted strings.
    let past = |mut i: usize, close: char| {
        i += 1;
        while i < chars.len() && chars[i] != close {
            if matches!(chars[i], '"' | '\'' | '`') {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let mut out = Vec::new();
    let mut calls: Vec<Option<String>> = Vec::new();
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = past(i, c);
        } else if c == '{' {
            i = past(i, '}');
        } else if c == '[' {
            i = past(i, ']');
        } else if c == '(' {
            calls.push(pending.take());
            i += 1;
        } else if c == ')' {
            calls.pop();
            i += 1;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable, or a number (1e9, 0.99).
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = past(next, ')'); // label names
                }
            } else if AGGREGATIONS.contains(&lower.as_str()) || chars.get(next) == Some(&'(') {
                pending = Some(word);
            } else if !KEYWORDS.contains(&lower.as_str()) {
                out.push(Selected {
                    name: word,
                    function: calls.last().cloned().flatten(),
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_promql_reader_finds_metrics_and_nothing_else() {
    let names = |expr: &str| -> Vec<(String, Option<String>)> {
        selected(expr)
            .into_iter()
            .map(|s| (s.name, s.function))
            .collect()
    };
    let rate = Some("rate".to_string());
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=\"x\", le!=\"1\"}[$__rate_interval])))"
        ),
        [("a_bucket".to_string(), rate.clone())]
    );
    assert_eq!(
        names(
            "max by (stream_name) (b) / max by (stream_name) (c > 0) > 0.8\nor\nsum without (x) (d) and on (y) group_left (z) e offset 5m"
        ),
        [
            ("b", Some("max")),
            ("c", Some("max")),
            ("d", Some("sum")),
            ("e", None)
        ]
        .map(|(n, f)| (n.to_string(), f.map(str::to_string)))
    );
    assert_eq!(
        names("x > 0 and changes(y[10m]) == 0 or increase(z_total[5m]) / 1e9"),
        [
            ("x".to_string(), None),
            ("y".to_string(), Some("changes".to_string())),
            ("z_total".to_string(), Some("increase".to_string())),
        ]
    );
}

/// Every PromQL expression of the dashboard, with the title of its panel.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            out.push((
                title,
                target["expr"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read("infra/monitoring/chatlog-dashboard.json"))
        .expect("chatlog-dashboard.json is JSON")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn rules() -> RuleFile {
    serde_yaml::from_str(&read("infra/monitoring/chatlog-alerts.yaml"))
        .expect("chatlog-alerts.yaml is a rule file")
}

/// Every metric the dashboard and the rules name, with where.
fn named() -> Vec<(Selected, String)> {
    let mut out = Vec::new();
    for (title, expr) in dashboard_exprs(&dashboard()) {
        out.extend(
            selected(&expr)
                .into_iter()
                .map(|s| (s, format!("panel {title:?}"))),
        );
    }
    for rule in rules().groups.into_iter().flat_map(|g| g.rules) {
        let alert = rule.alert;
        out.extend(
            selected(&rule.expr)
                .into_iter()
                .map(|s| (s, format!("alert {alert}"))),
        );
    }
    out
}

/// (a) The dashboard is an importable Grafana 10 dashboard over a Prometheus data source
/// variable, and its panels query only known metrics.
#[test]
fn the_dashboard_parses_and_queries_only_known_metrics() {
    let dashboard = dashboard();
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable named datasource"
    );

    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "id of {title:?} twice"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{title:?}: {grid}"
        );
        if panel["type"] == "row" {
            panels.extend(panel["panels"].as_array().into_iter().flatten());
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title:?}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title:?} queries nothing");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title:?}");
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !selected(expr).is_empty(),
                "{title:?}: no metric in {expr:?}"
            );
        }
    }

    let known = known();
    let mut in_dashboard = BTreeSet::new();
    for (title, expr) in dashboard_exprs(&dashboard) {
        for s in selected(&expr) {
            assert!(
                known.contains(s.name.as_str()),
                "panel {title:?} queries {}, which no one exports: {expr}",
                s.name
            );
            in_dashboard.insert(s.name);
        }
    }
    for name in DASHBOARD_MUST_NAME {
        assert!(in_dashboard.contains(*name), "no panel shows {name}");
    }
}

/// (b) The rules file: the expected alerts, each with a severity, a summary and a description,
/// over known metrics only; `promtool check rules` accepts it and `promtool test
/// rules` runs its unit tests, which make every alert fire. `make test` installs promtool
/// (infra/monitoring/promtool.sh --install); a missing promtool fails here, it is not skipped.
#[test]
fn the_alert_rules_parse_pass_promtool_and_their_unit_tests() {
    let file = rules();
    let mut alerts = BTreeSet::new();
    let known = known();
    for group in &file.groups {
        assert!(!group.name.is_empty() && !group.rules.is_empty());
        assert_eq!(
            group.interval, None,
            "{}: the global evaluation interval",
            group.name
        );
        for rule in &group.rules {
            let alert = &rule.alert;
            assert!(alerts.insert(alert.clone()), "{alert} twice");
            let severity = rule.labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{alert}: severity {severity:?}"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    rule.annotations
                        .get(annotation)
                        .is_some_and(|a| !a.is_empty()),
                    "{alert}: no {annotation}"
                );
            }
            let (number, unit) = rule.for_.split_at(rule.for_.len() - 1);
            assert!(
                number.parse::<u32>().is_ok() && matches!(unit, "s" | "m" | "h"),
                "{alert}: for {:?}",
                rule.for_
            );
            for s in selected(&rule.expr) {
                assert!(
                    known.contains(s.name.as_str()),
                    "{alert}: unknown {}",
                    s.name
                );
            }
        }
    }
    assert_eq!(
        alerts,
        ALERTS
            .iter()
            .map(|a| a.to_string())
            .collect::<BTreeSet<_>>()
    );

    // The unit tests see every alert fire.
    let tests: serde_yaml::Value =
        serde_yaml::from_str(&read("infra/monitoring/chatlog-alerts.test.yaml")).unwrap();
    let fired: BTreeSet<&str> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        .filter(|t| t["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()))
        .filter_map(|t| t["alertname"].as_str())
        .collect();
    for alert in ALERTS {
        assert!(fired.contains(alert), "no unit test makes {alert} fire");
    }

    for args in [
        ["check", "rules", "infra/monitoring/chatlog-alerts.yaml"],
        ["test", "rules", "infra/monitoring/chatlog-alerts.test.yaml"],
    ] {
        let out = Command::new(root().join("infra/monitoring/promtool.sh"))
            .arg("--installed")
            .args(args)
            .current_dir(root())
            .output()
            .expect("running infra/monitoring/promtool.sh");
        assert!(
            out.status.success(),
            "promtool {} failed (exit {:?}):\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A scrape of /metrics: sample names, and each metric's TYPE.
struct Scrape {
    text: String,
    samples: BTreeSet<String>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    async fn of(http: &Client) -> Scrape {
        let answer = http.request("GET", "/metrics", None, None).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let mut samples = BTreeSet::new();
        let mut types = BTreeMap::new();
        for line in answer.text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let name = line.split(['{', ' ']).next().unwrap();
                samples.insert(name.to_string());
            }
        }
        Scrape {
            text: answer.text,
            samples,
            types,
        }
    }

    /// The TYPE of the metric a sample name belongs to (a histogram's `_bucket`, ...).
    fn type_of(&self, sample: &str) -> Option<&str> {
        if let Some(kind) = self.types.get(sample) {
            return Some(kind);
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| sample.strip_suffix(suffix))
            .find_map(|base| self.types.get(base))
            .map(String::as_str)
    }
}

/// `chatlog handler <name> --http <free port>` with its views under `views`, once /readyz says
/// 200: the process and a client of its port.
async fn handler_with_http(
    nats: &NatsServer,
    name: &str,
    views: &std::path::Path,
) -> (common::Proc, Client) {
    let mut cmd = common::command(&nats.url(), views, &["handler", name]);
    cmd.stdout(Stdio::null());
    let (proc, http) = common::spawn_http(cmd);
    common::ready(&http).await;
    (proc, http)
}

/// (c) Every chatlog metric the dashboard and the rules name is served by a real `chatlog up`
/// (the edge with every handler), the handlers' ones by a real `chatlog handler --http` too, a
/// line per view labelled `handler`; what they take a rate of is a counter; [`EXPORTED`] is all
/// served.
#[tokio::test]
async fn every_chatlog_metric_named_is_served_by_a_running_chatlog() {
    let nats = NatsServer::start().await;
    common::setup(&nats.url());
    let data = tempfile::tempdir().unwrap();
    // A function registered (never called: no event of its type comes), so that the runtime of
    // `up --functions` has its lines.
    let mut add = common::command(
        &nats.url(),
        data.path(),
        &[
            "functions",
            "add",
            "probe",
            "--url",
            "http://127.0.0.1:9/",
            "--secret",
            "a secret of sixteen bytes",
            "--type",
            "chat.reaction.removed",
        ],
    );
    add.env("CHATLOG_DEV", "true");
    common::stdout_of(add);
    let mut up = common::command(&nats.url(), data.path(), &["up", "--functions"]);
    up.env("CHATLOG_DEV", "true");
    let (_up, up_http) = common::serve(up).await;
    let up = Scrape::of(&up_http).await;
    let views = tempfile::tempdir().unwrap();
    let (_handler, handler_http) = handler_with_http(&nats, "history", views.path()).await;
    let handler = Scrape::of(&handler_http).await;

    for name in EXPORTED {
        assert!(
            up.samples.contains(*name),
            "`chatlog up` does not serve {name}:\n{}",
            up.text
        );
    }
    for (s, place) in named() {
        if !s.name.starts_with("chatlog_") {
            continue;
        }
        assert!(
            up.samples.contains(&s.name),
            "{place}: `chatlog up` does not serve {}",
            s.name
        );
        let kind = up.type_of(&s.name);
        if let Some(function) = s.function.as_deref()
            && matches!(function, "rate" | "irate" | "increase")
        {
            let bucket = s.name.ends_with("_bucket")
                || s.name.ends_with("_sum")
                || s.name.ends_with("_count");
            assert!(
                kind == Some("counter") || (bucket && kind == Some("histogram")),
                "{place}: {function}() of {}, a {kind:?}",
                s.name
            );
        }
        if s.name.starts_with("chatlog_handler_") {
            assert!(
                handler.samples.contains(&s.name),
                "{place}: `chatlog handler --http` does not serve {}:\n{}",
                s.name,
                handler.text
            );
            let line = format!("{}{{handler=\"history\"}} ", s.name);
            assert!(
                handler.text.contains(&line),
                "no {line:?} in:\n{}",
                handler.text
            );
            for view in ["history", "presence", "mentions", "notifications"] {
                let line = format!("{}{{handler=\"{view}\"}} ", s.name);
                assert!(up.text.contains(&line), "no {line:?} in:\n{}", up.text);
            }
        }
    }
}

/// The names prometheus-nats-exporter gives the numeric fields of a /varz answer
/// (`collector/collector.go`, v0.20.1: `objectToMetrics` recurses into objects; `fqName` joins
/// the JSON path with `_`, turns `/` into `_`, trims `_` and squeezes `__`; the collector's
/// namespace `gnatsd` and subsystem `varz` go in front).
fn exporter_varz_names(varz: &Value) -> BTreeSet<String> {
    fn walk(value: &Value, path: &mut Vec<String>, out: &mut BTreeSet<String>) {
        let Some(object) = value.as_object() else {
            return;
        };
        for (key, value) in object {
            path.push(key.clone());
            if value.is_number() {
                let mut fqn = path.join("_").replace('/', "_");
                while fqn.contains("__") {
                    fqn = fqn.replace("__", "_");
                }
                out.insert(format!("gnatsd_varz_{}", fqn.trim_matches('_')));
            } else if value.is_object() {
                walk(value, path, out);
            }
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(varz, &mut Vec::new(), &mut out);
    out
}

/// (d) Every NATS metric the dashboard and the rules name is one the exporter makes: a JetStream
/// one from its jsz.go list, a /varz one from a field of the pinned nats-server's /varz (with
/// JetStream on, as chatlog runs it).
#[tokio::test]
async fn varz_metrics_are_what_the_exporter_makes_of_a_real_servers_varz() {
    let port = free_port();
    let nats = NatsServer::start_with_config(&format!("http_port: {port}")).await;
    let monitor = Client {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    let varz = monitor.request("GET", "/varz", None, None).await;
    assert_eq!(varz.status, 200, "{}", varz.text);
    let derived = exporter_varz_names(&varz.body);
    assert!(derived.contains("gnatsd_varz_mem"), "{derived:?}");
    for name in EXPORTER_VARZ {
        assert!(
            derived.contains(*name),
            "nats-server's /varz has no field for {name}: {derived:?}"
        );
    }
    drop(nats);

    for (s, place) in named() {
        if s.name.starts_with("gnatsd_") {
            assert!(
                EXPORTER_VARZ.contains(&s.name.as_str()),
                "{place}: {} is not in EXPORTER_VARZ",
                s.name
            );
        } else if s.name.starts_with("jetstream_") {
            assert!(
                EXPORTER_JSZ.contains(&s.name.as_str()),
                "{place}: the exporter has no {}",
                s.name
            );
        } else {
            assert!(
                s.name.starts_with("chatlog_") || PROMETHEUS.contains(&s.name.as_str()),
                "{place}: {} is neither chatlog's, the exporter's nor Prometheus's",
                s.name
            );
        }
    }
    // The README tells how to run the exporter so that these exist.
    let readme = read("infra/monitoring/README.md");
    for flag in ["-varz", "-jsz=all"] {
        assert!(readme.contains(flag), "README.md does not say {flag}");
    }
}
