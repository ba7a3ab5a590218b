//! The deployment files parse: every YAML manifest under `infra/` (Kubernetes, Helm values,
//! Compose) and every nats-server config (checked by `nats-server -t` itself).

use std::path::{Path, PathBuf};

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

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
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

#[test]
fn the_kubernetes_layout_has_what_production_needs() {
    let docs = documents(&root().join("infra/k8s/chatlog.yaml"));
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
            assert!(
                doc["spec"]["replicas"].is_null(),
                "the autoscaler owns the edges' count"
            );
        }
    }
    let ingress = docs.iter().find(|d| d["kind"] == "Ingress").unwrap();
    assert!(ingress["spec"]["tls"][0]["secretName"].is_string(), "TLS");
    // The image's build context leaves out what must not ship (the local token secret).
    let ignored = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for path in ["target/", "data/", ".tools/"] {
        assert!(
            ignored.lines().any(|l| l == path),
            "{path} in .dockerignore"
        );
    }
    let values = &documents(&root().join("infra/k8s/nats-values.yaml"))[0];
    assert_eq!(values["config"]["cluster"]["replicas"], 3);
    assert_eq!(values["config"]["jetstream"]["enabled"], true);
}

#[test]
fn compose_sets_the_streams_up_as_admin_before_any_component_starts() {
    let mut compose = documents(&root().join("infra/compose.yaml")).remove(0);
    // `<<: *chatlog` as Compose reads it.
    compose.apply_merge().unwrap();
    for (_, service) in compose["services"].as_mapping_mut().unwrap() {
        service.apply_merge().unwrap();
    }
    let compose = &compose;
    let services = compose["services"].as_mapping().unwrap();
    let setup = &compose["services"]["setup"];
    assert_eq!(setup["command"][0], "setup");
    assert!(
        setup["environment"]["NATS_URL"]
            .as_str()
            .unwrap()
            .starts_with("nats://admin:")
    );
    let mut components = 0;
    for (name, service) in services {
        let Some(command) = service["command"][0].as_str() else {
            continue;
        };
        if command == "edge" || command == "handler" {
            components += 1;
            assert_eq!(
                service["depends_on"]["setup"]["condition"], "service_completed_successfully",
                "{name:?}"
            );
            let url = service["environment"]["NATS_URL"].as_str().unwrap();
            assert!(!url.contains("admin:"), "{name:?} runs as admin");
        }
    }
    assert!(components >= 8, "{components} components");
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
    let conf = std::fs::read_to_string(root().join("infra/nats-auth.conf")).unwrap();
    let values = &documents(&root().join("infra/k8s/nats-values.yaml"))[0];
    let users = values["config"]["merge"]["authorization"]["users"]
        .as_sequence()
        .unwrap();
    for (block, user) in [("EDGE = {", "edge"), ("HANDLERS = {", "handlers")] {
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
    let binary = chatlog_test_support::binary();
    for conf in confs {
        // nats-server resolves includes and store dirs from where it runs: the repository root.
        let out = std::process::Command::new(&binary)
            .arg("-t")
            .arg("-c")
            .arg(&conf)
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
}
