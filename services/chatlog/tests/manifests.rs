//! The deployment files: every YAML manifest under `infra/` (Kubernetes, Helm values, Compose)
//! parses, the Kubernetes manifests pass kubernetes-validate, every nats-server config is valid
//! (checked by `nats-server -t` itself), and each layout has what an operator needs to trust it:
//! no secret in the repository, state on volumes, probes, no metrics on the Internet, NATS fenced
//! off and its routes authenticated.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;
use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn k8s() -> Vec<Value> {
    documents(&root().join("infra/k8s/chatlog.yaml"))
}

fn nats_values() -> Value {
    documents(&root().join("infra/k8s/nats-values.yaml")).remove(0)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The value after `flag` in `command` (of the service `name`).
fn flag_value<'a>(command: &'a [String], flag: &str, name: &str) -> &'a String {
    command
        .iter()
        .position(|a| a == flag)
        .and_then(|i| command.get(i + 1))
        .unwrap_or_else(|| panic!("{name}: no {flag}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_yaml_manifest_parses() {
    let mut yaml = Vec::new();
    files(&root().join("infra"), "yaml", &mut yaml);
    assert!(yaml.len() >= 3, "{yaml:?}");
    for path in &yaml {
        assert!(!documents(path).is_empty(), "{} is empty", path.display());
    }
}

/// Every document of chatlog.yaml against the Kubernetes API's schemas, strictly (an unknown or
/// misplaced field fails), at the newest version kubernetes-validate knows. `make test` installs
/// it (infra/k8s-validate.sh --install); a missing validator fails here, it is not skipped.
#[test]
fn kubernetes_validate_accepts_every_manifest() {
    let script = root().join("infra/k8s-validate.sh");
    let run = |files: &[&Path]| {
        Command::new(&script)
            .arg("--installed")
            .args(files)
            .current_dir(root())
            .output()
            .expect("running infra/k8s-validate.sh")
    };
    let out = run(&[]);
    assert!(
        out.status.success(),
        "kubernetes-validate on infra/k8s/chatlog.yaml failed (exit {:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It does reject what the API server would: a probe with a field probes do not have.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let bad = dir.path().join("bad.yaml");
    let edge = read(&root().join("infra/k8s/chatlog.yaml"));
    let start = edge.find("apiVersion: apps/v1").expect("a Deployment");
    let end = start + edge[start..].find("\n---").expect("the next document");
    let broken = edge[start..end].replacen("periodSeconds:", "periodSecond:", 1);
    std::fs::write(&bad, broken).expect("writing the broken manifest");
    let out = run(&[&bad]);
    assert!(
        !out.status.success(),
        "a misspelt field passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_kubernetes_layout_has_what_production_needs() {
    let docs = k8s();
    let kinds: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("Job", "chatlog-setup"),
        ("Deployment", "chatlog-edge"),
        ("Service", "chatlog-edge"),
        ("Ingress", "chatlog"),
        ("HorizontalPodAutoscaler", "chatlog-edge"),
        ("Deployment", "chatlog-history"),
        ("Deployment", "chatlog-presence"),
        ("Deployment", "chatlog-notifications"),
        ("NetworkPolicy", "default-deny-ingress"),
        ("NetworkPolicy", "nats"),
        ("NetworkPolicy", "chatlog-edge"),
        ("NetworkPolicy", "chatlog-handlers"),
    ] {
        assert!(
            kinds.iter().any(|(k, n)| k == want.0 && n == want.1),
            "missing {want:?}"
        );
    }
    for doc in docs.iter().filter(|d| d["kind"] == "Deployment") {
        assert!(doc["apiVersion"].is_string());
        let container = &doc["spec"]["template"]["spec"]["containers"][0];
        assert!(
            container["resources"]["requests"].is_mapping(),
            "resource requests"
        );
        if doc["metadata"]["name"] == "chatlog-edge" {
            assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert!(container["startupProbe"].is_mapping(), "a startup probe");
        }
    }
    // The image's build context leaves out what must not ship (the local token secret).
    let ignored = read(&root().join(".dockerignore"));
    for path in ["target/", "data/", ".tools/"] {
        assert!(
            ignored.lines().any(|l| l == path),
            "{path} in .dockerignore"
        );
    }
    let values = nats_values();
    assert_eq!(values["config"]["cluster"]["replicas"], 3);
    assert_eq!(values["config"]["jetstream"]["enabled"], true);
}

/// The paths of the edge's router (services/edge/src/lib.rs `app()`, web.rs's embedded files),
/// with `{param}` segments filled in.
fn edge_routes() -> Vec<String> {
    let mut routes = Vec::new();
    let lib = read(&root().join("services/edge/src/lib.rs"));
    let app = &lib[lib.find("pub fn app(").expect("app() in the edge")..];
    let app = &app[..app.find("\n}\n").expect("the end of app()")];
    for (at, _) in app.match_indices(".route(") {
        let rest = app[at + ".route(".len()..].trim_start();
        let path = rest
            .strip_prefix('"')
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("a route path literal at {rest:.40}"));
        routes.push(path.to_string());
    }
    let web = read(&root().join("services/edge/src/web.rs"));
    let files = &web[web.find("const FILES").expect("web.rs FILES")..];
    let files = &files[..files.find("];").expect("the end of FILES")];
    for literal in files.split('"').skip(1).step_by(2) {
        if literal.starts_with('/') {
            routes.push(literal.to_string());
        }
    }
    assert!(routes.len() >= 10, "{routes:?}");
    routes
        .into_iter()
        .map(|r| {
            r.split('/')
                .map(|s| if s.starts_with('{') { "x" } else { s })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

/// Whether the Ingress's rules send a request for `path` to a backend (Kubernetes' Exact and
/// Prefix semantics; Prefix matches whole path elements).
fn ingress_routes(ingress: &Value, path: &str) -> bool {
    ingress["spec"]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .flat_map(|rule| rule["http"]["paths"].as_sequence().expect("paths"))
        .any(|p| {
            let prefix = p["path"].as_str().expect("a path");
            match p["pathType"].as_str() {
                Some("Exact") => path == prefix,
                Some("Prefix") => {
                    let prefix = prefix.trim_end_matches('/');
                    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
                }
                other => panic!("pathType {other:?}: its matching is up to the controller"),
            }
        })
}

#[test]
fn the_ingress_routes_the_public_paths_with_tls_and_never_metrics() {
    let docs = k8s();
    let ingress = find(&docs, "Ingress", "chatlog");
    assert!(ingress["spec"]["tls"][0]["secretName"].is_string(), "TLS");
    assert!(
        ingress["spec"]["defaultBackend"].is_null(),
        "a default backend"
    );
    let internal = ["/healthz", "/readyz", "/metrics"];
    for path in [
        "/metrics",
        "/metrics/",
        "/metrics?x=1",
        "/healthz",
        "/readyz",
    ] {
        assert!(!ingress_routes(ingress, path), "the Ingress routes {path}");
    }
    for route in edge_routes() {
        let public = !internal.contains(&route.as_str());
        assert_eq!(
            ingress_routes(ingress, &route),
            public,
            "{route}: the Ingress must route the edge's public paths and no internal one"
        );
    }
}

/// The port number a container's port named `name` has.
fn named_port(container: &Value, name: &str) -> i64 {
    container["ports"]
        .as_sequence()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no port named {name}"))
}

#[test]
fn every_handler_has_probes_on_its_http_port() {
    let docs = k8s();
    let code = read(&root().join("services/chatlog/src/handlers.rs"));
    for path in ["\"/livez\"", "\"/readyz\"", "\"/metrics\""] {
        assert!(code.contains(path), "the handlers serve {path}");
    }
    let mut handlers = 0;
    for doc in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let container = &doc["spec"]["template"]["spec"]["containers"][0];
        let args = strings(&container["args"]);
        if args.first().map(String::as_str) != Some("handler") {
            continue;
        }
        handlers += 1;
        let http = args
            .iter()
            .position(|a| a == "--http")
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("{name}: no --http"));
        let port = named_port(container, "http");
        assert!(http.ends_with(&format!(":{port}")), "{name}: --http {http}");
        assert!(
            !http.starts_with("127."),
            "{name}: --http {http} unreachable"
        );
        for (probe, path) in [
            ("startupProbe", "/livez"),
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
        ] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{name} {probe}");
            assert_eq!(get["port"], "http", "{name} {probe}");
        }
        // A rebuild from an empty disk takes minutes: the rollout waits for it.
        let rolling = &doc["spec"]["strategy"]["rollingUpdate"];
        assert_eq!(rolling["maxUnavailable"], 0, "{name}");
        assert!(
            doc["spec"]["progressDeadlineSeconds"]
                .as_i64()
                .is_some_and(|s| s >= 1200),
            "{name}: progressDeadlineSeconds"
        );
        // The views are a cache: an emptyDir (the emission mark is in NATS).
        let volumes = doc["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .unwrap();
        assert!(volumes.iter().any(|v| v["emptyDir"].is_mapping()), "{name}");
    }
    assert_eq!(handlers, 3);
}

#[test]
fn no_deployment_under_an_autoscaler_sets_replicas() {
    let docs = k8s();
    let mut scaled = 0;
    for hpa in docs
        .iter()
        .filter(|d| d["kind"] == "HorizontalPodAutoscaler")
    {
        let target = &hpa["spec"]["scaleTargetRef"];
        assert_eq!(target["kind"], "Deployment");
        let deployment = find(&docs, "Deployment", target["name"].as_str().unwrap());
        assert!(
            deployment["spec"]["replicas"].is_null(),
            "{:?}: the autoscaler owns the count",
            target["name"]
        );
        scaled += 1;
    }
    assert!(scaled >= 1);
}

/// (major, minor, patch) of a version tag like `2.14.6` or `2.14.6-alpine`.
fn version(tag: &str) -> (u64, u64, u64) {
    let numbers: Vec<u64> = tag
        .split(['-', '+'])
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or_else(|_| panic!("version {tag:?}")))
        .collect();
    assert_eq!(numbers.len(), 3, "version {tag:?} is not x.y.z");
    (numbers[0], numbers[1], numbers[2])
}

#[test]
fn the_nats_image_is_pinned_to_a_recent_version() {
    let values = nats_values();
    let image = &values["container"]["image"];
    assert_eq!(image["repository"], "nats");
    let tag = image["tag"].as_str().expect("container.image.tag");
    let pinned = version(tag);
    assert!(pinned >= (2, 12, 3), "nats {tag} is older than 2.12.3");
    // The same server everywhere: compose and the Makefile's (what the tests run).
    let compose = compose();
    let compose_image = compose["services"]["n1"]["image"].as_str().unwrap();
    assert_eq!(
        compose_image
            .strip_prefix("nats:")
            .map(version)
            .expect("compose's nats image"),
        pinned
    );
    let makefile = read(&root().join("Makefile"));
    let make = makefile
        .lines()
        .find_map(|l| l.strip_prefix("export NATS_SERVER_VERSION ?= "))
        .expect("NATS_SERVER_VERSION in the Makefile");
    assert_eq!(version(make.trim()), pinned);
}

/// The Secret keys that infra/k8s/README.md creates (`--from-literal=KEY=`).
fn readme_secret_keys() -> Vec<String> {
    read(&root().join("infra/k8s/README.md"))
        .split("--from-literal=")
        .skip(1)
        .filter_map(|s| s.split('=').next().map(str::to_string))
        .collect()
}

/// Every `secretKeyRef` below `value`.
fn secret_refs(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Mapping(map) => {
            if let Some(r) = map.get("secretKeyRef") {
                out.push((
                    r["name"].as_str().unwrap().to_string(),
                    r["key"].as_str().unwrap().to_string(),
                ));
            }
            map.values().for_each(|v| secret_refs(v, out));
        }
        Value::Sequence(seq) => seq.iter().for_each(|v| secret_refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_secret_key_used_is_one_the_install_creates() {
    let keys = readme_secret_keys();
    let mut refs = Vec::new();
    k8s().iter().for_each(|d| secret_refs(d, &mut refs));
    secret_refs(&nats_values(), &mut refs);
    assert!(refs.len() >= 8, "{refs:?}");
    for (name, key) in refs {
        assert_eq!(name, "chatlog-nats");
        assert!(
            keys.contains(&key),
            "{key} is not created by infra/k8s/README.md"
        );
    }
}

#[test]
fn the_nats_routes_authenticate_and_nats_box_logs_in_as_admin() {
    let values = nats_values();
    let cluster = &values["config"]["cluster"];
    assert_eq!(cluster["merge"]["authorization"]["user"], "route");
    assert_eq!(
        cluster["merge"]["authorization"]["password"],
        "<< $ROUTE_PASSWORD >>"
    );
    assert_eq!(cluster["merge"]["routes"], "<< $ROUTE_URLS >>");
    let env = values["container"]["env"].as_mapping().unwrap();
    // The chart lists env in key order; Kubernetes expands $(VAR) only from earlier ones.
    let names: Vec<&str> = env.keys().filter_map(Value::as_str).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    let position = |n: &str| sorted.iter().position(|k| *k == n).unwrap();
    assert!(position("ROUTE_PASSWORD") < position("ROUTE_URLS"));
    assert_eq!(
        env[&Value::from("ROUTE_PASSWORD")]["valueFrom"]["secretKeyRef"]["key"],
        "route-password"
    );
    let urls = env[&Value::from("ROUTE_URLS")].as_str().unwrap();
    let password = "0123456789abcdef0123456789abcdef";
    let urls = urls.replace("$(ROUTE_PASSWORD)", password);
    // One authenticated route per server, to the chart's pods of the release `nats`.
    let replicas = cluster["replicas"].as_u64().unwrap();
    for i in 0..replicas {
        let route = format!("nats://route:{password}@nats-{i}.nats-headless:6222");
        assert!(urls.contains(&route), "{route} in {urls}");
    }
    assert_eq!(urls.matches("nats://").count() as u64, replicas);
    // nats-server reads the variables as the chart's ConfigMap uses them.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        "cluster { name: nats, port: 6222, routes: $ROUTE_URLS,\n\
         authorization { user: route, password: $ROUTE_PASSWORD } }\n",
    )
    .unwrap();
    assert_config_ok(
        &conf,
        &[("ROUTE_URLS", &urls), ("ROUTE_PASSWORD", password)],
    );
    let nats_box = &values["natsBox"]["container"]["env"];
    assert_eq!(nats_box["NATS_USER"], "admin");
    assert_eq!(
        nats_box["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"],
        "admin-password"
    );
}

fn label_selector(value: &Value) -> BTreeMap<String, String> {
    value["matchLabels"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_string(),
                        v.as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `from` peers of the ingress rules of `policy` that open `port`.
fn peers(policy: &Value, port: i64) -> Vec<Value> {
    policy["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|rule| {
            rule["ports"]
                .as_sequence()
                .is_some_and(|ports| ports.iter().any(|p| p["port"].as_i64() == Some(port)))
        })
        .flat_map(|rule| rule["from"].as_sequence().unwrap().clone())
        .collect()
}

#[test]
fn network_policies_fence_nats_and_the_edges() {
    let docs = k8s();
    let deny = find(&docs, "NetworkPolicy", "default-deny-ingress");
    assert_eq!(
        deny["spec"]["podSelector"],
        Value::Mapping(Default::default())
    );
    assert!(deny["spec"]["ingress"].is_null());
    let nats_pods: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "nats"),
        ("app.kubernetes.io/instance", "nats"),
        ("app.kubernetes.io/component", "nats"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let nats = find(&docs, "NetworkPolicy", "nats");
    assert_eq!(label_selector(&nats["spec"]["podSelector"]), nats_pods);
    // Clients: pods of this namespace only (no namespaceSelector, no ipBlock), chatlog's among
    // them.
    let clients = peers(nats, 4222);
    assert!(!clients.is_empty());
    for peer in &clients {
        assert!(
            peer["namespaceSelector"].is_null() && peer["ipBlock"].is_null(),
            "{peer:?}"
        );
        assert!(peer["podSelector"]["matchLabels"].is_mapping(), "{peer:?}");
    }
    assert!(clients.iter().any(|p| {
        label_selector(&p["podSelector"])
            .get("app")
            .map(String::as_str)
            == Some("chatlog")
    }));
    // Every chatlog pod that talks to NATS carries the label the policy lets in.
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
    {
        assert_eq!(
            doc["spec"]["template"]["metadata"]["labels"]["app"],
            "chatlog"
        );
    }
    // Routes: the NATS servers only.
    let routes = peers(nats, 6222);
    assert_eq!(routes.len(), 1);
    assert_eq!(label_selector(&routes[0]["podSelector"]), nats_pods);
    assert!(routes[0]["namespaceSelector"].is_null());
    // The edges: from the ingress controller's namespace (and monitoring).
    let edge = find(&docs, "NetworkPolicy", "chatlog-edge");
    assert_eq!(
        label_selector(&edge["spec"]["podSelector"]),
        label_selector(&find(&docs, "Deployment", "chatlog-edge")["spec"]["selector"])
    );
    let from = peers(edge, 8080);
    assert!(from.iter().any(|p| {
        label_selector(&p["namespaceSelector"]).get("kubernetes.io/metadata.name")
            == Some(&"ingress-nginx".to_string())
    }));
    assert!(from.iter().all(|p| p["ipBlock"].is_null()));
    // The handlers' policy selects every handler pod.
    let handlers =
        label_selector(&find(&docs, "NetworkPolicy", "chatlog-handlers")["spec"]["podSelector"]);
    for name in [
        "chatlog-history",
        "chatlog-presence",
        "chatlog-notifications",
    ] {
        let labels = &find(&docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"];
        for (k, v) in &handlers {
            assert_eq!(labels[k.as_str()], v.as_str(), "{name}");
        }
    }
}

/// compose.yaml as Compose reads it: `<<` merges applied.
fn compose() -> Value {
    let mut compose = documents(&root().join("infra/compose.yaml")).remove(0);
    compose.apply_merge().unwrap();
    for (_, service) in compose["services"].as_mapping_mut().unwrap() {
        service.apply_merge().unwrap();
    }
    compose
}

/// The (source, target) pairs of a service's `volumes` (short syntax).
fn mounts(service: &Value) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .map(|v| {
            let mut parts = v.split(':');
            (
                parts.next().unwrap().to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn mounted_at(service: &Value, target: &str) -> Option<String> {
    mounts(service)
        .into_iter()
        .find(|(_, t)| t == target)
        .map(|(s, _)| s)
}

/// A named volume (not a path on the host), declared at the top level.
fn assert_named_volume(compose: &Value, source: &str, what: &str) {
    assert!(
        !source.starts_with('.') && !source.starts_with('/') && !source.starts_with('~'),
        "{what}: {source} is a host path"
    );
    assert!(
        compose["volumes"]
            .as_mapping()
            .is_some_and(|v| v.contains_key(source)),
        "{what}: volume {source} is not declared"
    );
}

/// Runs compose's `secrets` service's script (infra/compose-secrets.sh, as compose mounts it) on
/// a temporary directory standing for the container's `/secrets`; returns that directory.
fn run_compose_secrets(compose: &Value, dir: &Path) {
    let secrets = &compose["services"]["secrets"];
    let entrypoint = strings(&secrets["entrypoint"]);
    let script_in_container = entrypoint.last().expect("the secrets script");
    let host = |target: &str| {
        let source = mounted_at(secrets, target).unwrap_or_else(|| panic!("{target} mounted"));
        root().join("infra").join(source)
    };
    let out = Command::new("sh")
        .arg(host(script_in_container))
        .env("SECRETS_ROOT", dir)
        .env("AUTH_CONF", host("/etc/chatlog/nats-auth.conf"))
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The host path, under `dir` (the secrets service's `/secrets`), of what `service` sees at
/// `target` through a volume the secrets service also mounts.
fn secrets_path(compose: &Value, dir: &Path, service: &Value, target: &str) -> PathBuf {
    let volume = mounted_at(service, target).unwrap_or_else(|| panic!("nothing at {target}"));
    let (_, at) = mounts(&compose["services"]["secrets"])
        .into_iter()
        .find(|(s, _)| *s == volume)
        .unwrap_or_else(|| panic!("the secrets service does not write {volume}"));
    let relative = at
        .strip_prefix("/secrets/")
        .unwrap_or_else(|| panic!("{at} not under /secrets"));
    dir.join(relative)
}

/// The variables of a generated `chatlog.env` (NAME='value' lines).
fn env_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// The development passwords of infra/nats-auth.conf.
fn dev_passwords() -> Vec<String> {
    let conf = read(&root().join("infra/nats-auth.conf"));
    let passwords: Vec<String> = conf
        .split("password:")
        .skip(1)
        .filter_map(|s| s.split('"').nth(1).map(str::to_string))
        .collect();
    assert!(passwords.len() >= 3, "{passwords:?}");
    passwords
}

#[test]
fn compose_sets_the_streams_up_as_admin_before_any_component_starts() {
    let compose = compose();
    let dir = tempfile::tempdir().expect("a temporary directory");
    run_compose_secrets(&compose, dir.path());
    let services = compose["services"].as_mapping().unwrap();
    let user_of = |service: &Value| {
        // The wrapper exports the generated environment, then runs chatlog with the command.
        let entrypoint = strings(&service["entrypoint"]).join(" ");
        assert!(
            entrypoint.contains(". /run/chatlog/chatlog.env")
                && entrypoint.contains("exec chatlog"),
            "{entrypoint}"
        );
        assert!(
            service["environment"]["NATS_URL"].is_null(),
            "NATS_URL in compose.yaml"
        );
        let env = env_file(
            &secrets_path(&compose, dir.path(), service, "/run/chatlog").join("chatlog.env"),
        );
        let url = env.get("NATS_URL").expect("NATS_URL generated").clone();
        for server in ["n1", "n2", "n3"] {
            assert!(url.contains(&format!("@{server}:4222")), "{url}");
        }
        let user = url
            .strip_prefix("nats://")
            .and_then(|u| u.split(':').next())
            .unwrap()
            .to_string();
        (user, env)
    };
    let setup = &compose["services"]["setup"];
    assert_eq!(setup["command"][0], "setup");
    assert_eq!(user_of(setup).0, "admin");
    assert_eq!(
        setup["depends_on"]["secrets"]["condition"],
        "service_completed_successfully"
    );
    let mut components = 0;
    for (name, service) in services {
        let Some(command) = service["command"][0].as_str() else {
            continue;
        };
        if command == "edge" || command == "handler" || command == "functions" {
            components += 1;
            assert_eq!(
                service["depends_on"]["setup"]["condition"], "service_completed_successfully",
                "{name:?}"
            );
            let (user, env) = user_of(service);
            let want = match command {
                "handler" => "handlers",
                other => other,
            };
            assert_eq!(user, want, "{name:?}");
            if command == "edge" {
                let secret = env.get("CHATLOG_JWT_SECRET").expect("a token secret");
                assert!(secret.len() >= 32);
            }
        }
    }
    assert!(components >= 10, "{components} components");
}

#[test]
fn compose_keeps_no_secret_and_its_state_in_named_volumes() {
    let text = read(&root().join("infra/compose.yaml"));
    assert!(
        !text.contains("CHATLOG_DEV"),
        "compose runs with development secrets"
    );
    for secret in dev_passwords().iter().map(String::as_str).chain([
        "change-me",
        "dev-secret",
        "-dev-password",
    ]) {
        assert!(!text.contains(secret), "compose.yaml contains {secret:?}");
    }
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let mut servers = 0;
    let mut handlers = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let image = service["image"].as_str().unwrap_or_default();
        let command = strings(&service["command"]);
        if image.starts_with("nats:") {
            servers += 1;
            let store = flag_value(&command, "--sd", name);
            let volume = mounted_at(service, store).unwrap_or_else(|| panic!("{name}: {store}"));
            assert_named_volume(&compose, &volume, name);
            assert!(
                !strings(&service["volumes"])
                    .iter()
                    .any(|v| v.contains("nats-auth.conf"))
            );
        }
        if command.first().map(String::as_str) == Some("handler") {
            handlers += 1;
            let views = flag_value(&command, "--views-dir", name);
            let volume = mounted_at(service, views).unwrap_or_else(|| panic!("{name}: {views}"));
            assert_named_volume(&compose, &volume, name);
            // Replicas sharing the volume need their own directories in it.
            assert!(command.iter().any(|a| a == "--replica"), "{name}");
        }
        if command.first().map(String::as_str) == Some("edge") {
            for port in strings(&service["ports"]) {
                assert!(
                    port.starts_with("127.0.0.1:"),
                    "{name} publishes {port} beyond loopback"
                );
            }
        }
    }
    assert_eq!(servers, 3);
    assert_eq!(handlers, 6);
}

#[test]
fn compose_secrets_are_random_kept_and_valid() {
    let compose = compose();
    let dir = tempfile::tempdir().expect("a temporary directory");
    run_compose_secrets(&compose, dir.path());
    let keep = dir.path().join("keep/passwords.env");
    let first = read(&keep);
    run_compose_secrets(&compose, dir.path());
    assert_eq!(read(&keep), first, "a second run keeps the passwords");
    let other = tempfile::tempdir().expect("a temporary directory");
    run_compose_secrets(&compose, other.path());
    let dev = dev_passwords();
    let generated = env_file(&keep);
    let other = env_file(&other.path().join("keep/passwords.env"));
    assert!(generated.len() >= 5, "{generated:?}");
    for (name, value) in &generated {
        assert!(value.len() >= 32, "{name}");
        assert_ne!(other.get(name), Some(value), "{name} is not random");
        assert!(!dev.contains(value), "{name}");
    }
    // Each NATS server's config, as it reads it.
    let n1 = &compose["services"]["n1"];
    let command = strings(&n1["command"]);
    let config = command
        .iter()
        .position(|a| a == "-c")
        .and_then(|i| command.get(i + 1))
        .expect("n1 -c");
    let (mount, file) = config.rsplit_once('/').unwrap();
    let conf = secrets_path(&compose, dir.path(), n1, mount).join(file);
    assert_config_ok(&conf, &[]);
    let text = read(&conf) + &read(&conf.with_file_name("auth.conf"));
    for password in &dev {
        assert!(
            !text.contains(password.as_str()),
            "{password} in the NATS config"
        );
    }
    for user in ["admin", "edge", "handlers"] {
        let password = &generated[&format!("{user}_password")];
        assert!(
            text.contains(&format!("user: {user}, password: \"{password}\"")),
            "{user}'s password"
        );
    }
    let route = &generated["route_password"];
    assert!(text.contains(&format!(
        "authorization {{ user: route, password: \"{route}\" }}"
    )));
    assert_eq!(text.matches(&format!("nats://route:{route}@")).count(), 3);
    // Readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    for file in [conf.clone(), keep.clone()] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400, "{}", file.display());
    }
}

/// The quoted strings of the first `<key> = [ ... ]` after `from` in a nats-server config.
fn conf_list(conf: &str, from: usize, key: &str) -> Vec<String> {
    let start = from + conf[from..].find(&format!("{key} = [")).unwrap();
    let end = start + conf[start..].find(']').unwrap();
    conf[start..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_helm_values_grant_what_nats_auth_conf_grants() {
    let conf = read(&root().join("infra/nats-auth.conf"));
    let values = nats_values();
    let users = values["config"]["merge"]["authorization"]["users"]
        .as_sequence()
        .unwrap();
    for (block, user) in [
        ("EDGE = {", "edge"),
        ("HANDLERS = {", "handlers"),
        ("FUNCTIONS = {", "functions"),
    ] {
        let at = conf.find(block).unwrap();
        let helm = users.iter().find(|u| u["user"] == user).unwrap();
        for (key, list) in [("allow", "allow"), ("deny", "deny")] {
            let want = conf_list(&conf, at, key);
            let have: Vec<String> = helm["permissions"]["publish"][list]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            assert_eq!(have, want, "{user} publish {list}");
        }
        let subscribe = conf[at..].find("subscribe = {").unwrap() + at;
        let have: Vec<String> = helm["permissions"]["subscribe"]["allow"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            have,
            conf_list(&conf, subscribe, "allow"),
            "{user} subscribe"
        );
    }
}

#[test]
fn every_nats_config_is_valid() {
    let mut confs = vec![root().join("nats.conf")];
    files(&root().join("infra/cluster"), "conf", &mut confs);
    for conf in confs {
        assert_config_ok(&conf, &[]);
    }
}

/// `nats-server -t -c conf` passes, run from the repository root (where includes and store dirs
/// resolve) with `env` set.
fn assert_config_ok(conf: &Path, env: &[(&str, &str)]) {
    let out = Command::new(chatlog_test_support::binary())
        .args(["-t", "-c"])
        .arg(conf)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        conf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
