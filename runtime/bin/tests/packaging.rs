//! The container image and the Helm chart, kept true: the Dockerfile's build and start
//! commands run here outside a container, and the chart is linted and rendered by a real Helm
//! (scripts/helm.sh), its manifests checked and the config a pod would start with started.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                let (op, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
                out.push((op.to_uppercase(), rest.trim().to_owned()));
                cur.clear();
            }
        }
    }
    out
}

fn json_words(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not a JSON array ({e}): {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dockerfile_builds_evmesh_and_starts_it_as_a_non_root_user_on_its_volume() {
    let steps = dockerfile();
    let stages: Vec<&String> = steps
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(stages.len(), 2, "multi-stage: a build and a runtime stage");
    assert!(stages[1].contains("slim"), "{}", stages[1]);
    let runtime_at = steps.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let (build, runtime) = steps.split_at(runtime_at);

    // The build command: the package and binary it names exist, and the lock file is current
    // (`--locked` would refuse otherwise). The release build itself (20 minutes here) is the
    // one the bench and the README's first command run.
    let build_cmd = build
        .iter()
        .find(|(op, a)| op == "RUN" && a.starts_with("cargo build"))
        .map(|(_, a)| a.clone())
        .expect("a RUN cargo build line in the build stage");
    let words: Vec<&str> = build_cmd.split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        assert!(words.contains(&flag), "{build_cmd}");
    }
    let after = |f: &str| words.iter().position(|w| *w == f).map(|i| words[i + 1]);
    let (package, bin) = (after("-p").unwrap(), after("--bin").unwrap());
    let meta = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--no-deps",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        meta.status.success(),
        "cargo metadata --locked: {}",
        String::from_utf8_lossy(&meta.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("no package {package}"));
    assert!(
        pkg["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == bin && t["kind"][0] == "bin"),
        "package {package} has no binary {bin}"
    );
    let copy = runtime
        .iter()
        .find(|(op, _)| op == "COPY")
        .map(|(_, a)| a.clone())
        .unwrap();
    assert!(
        copy.contains(&format!("target/release/{bin} ")),
        "the runtime stage copies the built binary: {copy}"
    );

    // The runtime stage: non-root, a volume, the ports exposed are the ones listened on.
    let one = |op: &str| {
        runtime
            .iter()
            .find(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {op} in the runtime stage"))
    };
    let user = one("USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    let volume = one("VOLUME");
    assert_eq!(one("WORKDIR"), volume);
    let env: Vec<(String, String)> = one("ENV")
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let mut exposed: Vec<String> = one("EXPOSE")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut listened: Vec<String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("EVMESH_SERVER__"))
        .map(|(_, v)| {
            assert!(v.starts_with("0.0.0.0:"), "{v}");
            v.rsplit(':').next().unwrap().to_owned()
        })
        .collect();
    exposed.sort();
    listened.sort();
    assert_eq!(exposed, listened);

    // Start it as the image would: ENTRYPOINT + CMD, its environment, its working directory
    // the volume (here a temporary folder), ports moved to free ones for the test.
    let entry = json_words(&one("ENTRYPOINT"));
    assert_eq!(entry, vec![bin.to_owned()]);
    let vol = tempfile::tempdir().unwrap();
    let vol_path = vol.path().to_str().unwrap().to_owned();
    let args: Vec<String> = json_words(&one("CMD"))
        .into_iter()
        .map(|a| a.replace(&volume, &vol_path))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, _)| (k.as_str(), "127.0.0.1:0"))
        .collect();
    let ev = Evmesh::start_in(vol.path(), &args, &env);
    let c = client();
    let (st, body) = send(&c, "GET", &ev.admin_url("/readyz"), &[], "").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(publish(&c, &ev, "t", "d1", &[]).await, 202);
    assert!(
        vol.path().join("topics").join("t").is_dir(),
        "the event log lives on the volume"
    );
}

fn helm() -> PathBuf {
    cached_tool("HELM_BIN", "helm.sh")
}

fn helm_run(args: &[&str]) -> std::process::Output {
    Command::new(helm())
        .args(args)
        .current_dir(repo())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("evmesh-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("evmesh-helm-config"),
        )
        .output()
        .unwrap()
}

/// `helm template` of the chart with `sets`, as manifests.
fn render(sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "demo", "helm/evmesh"];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    let out = helm_run(&args);
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    k.sort();
    k
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap()
}

fn evmesh_container(pod: &Value) -> &Value {
    pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "evmesh")
        .expect("an evmesh container")
}

/// Checks the container's ports, probes and mounts; returns its args.
fn check_container(c: &Value) -> Vec<String> {
    let ports: Vec<(String, u64)> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("http".to_owned(), 10105),
            ("admin".to_owned(), 10106),
            ("tcp".to_owned(), 10000)
        ]
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["mountPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(mounts.contains(&("data".to_owned(), "/var/lib/evmesh".to_owned())));
    assert!(mounts.contains(&("config".to_owned(), "/etc/evmesh".to_owned())));
    c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// Writes the ConfigMap's config where the pod mounts it (here a temporary folder), checks it
/// with `evmesh validate`, and starts evmesh with the container's args (paths moved to the
/// temporary folder, listeners to free ports); returns the config.
async fn start_like_the_pod(docs: &[Value], args: &[String]) -> Value {
    let text = of_kind(docs, "ConfigMap")["data"]["evmesh.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&etc).unwrap();
    let file = etc.join("evmesh.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(evmesh_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "evmesh validate refused the chart's config:\n{text}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (etc_s, data_s) = (
        etc.to_str().unwrap().to_owned(),
        data.to_str().unwrap().to_owned(),
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("/etc/evmesh", &etc_s)
                .replace("/var/lib/evmesh", &data_s)
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ev = Evmesh::start_in(
        dir.path(),
        &args,
        &[
            ("EVMESH_SERVER__HTTP", "127.0.0.1:0"),
            ("EVMESH_SERVER__ADMIN", "127.0.0.1:0"),
            ("EVMESH_SERVER__TCP", "127.0.0.1:0"),
        ],
    );
    let (st, body) = send(&client(), "GET", &ev.admin_url("/readyz"), &[], "").await;
    assert_eq!(st, 200, "{body}");
    assert!(data.is_dir(), "the data directory is the mounted volume");
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn the_chart_lints_in_both_modes() {
    for set in ["mode=standalone", "mode=sidecar"] {
        let out = helm_run(&["lint", "helm/evmesh", "--strict", "--set", set]);
        assert!(
            out.status.success(),
            "helm lint --set {set}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = helm_run(&["template", "demo", "helm/evmesh", "--set", "mode=sidecarr"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mode must be standalone or sidecar"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_chart_renders_a_statefulset_with_a_volume_probes_and_a_valid_config() {
    let docs = render(&[
        "config.subscriptions[0].name=audit",
        "config.subscriptions[0].topic=orders",
        "config.subscriptions[0].sink.type=webhook",
        "config.subscriptions[0].sink.url=http://audit:8080/hook",
        "config.server.maxBodyBytes=65536",
    ]);
    assert_eq!(
        kinds(&docs),
        vec!["ConfigMap", "Service", "Service", "StatefulSet"]
    );
    let sts = of_kind(&docs, "StatefulSet");
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let args = check_container(evmesh_container(pod));
    let claims = sts["spec"]["volumeClaimTemplates"].as_sequence().unwrap();
    assert_eq!(claims[0]["metadata"]["name"], "data");
    assert_eq!(
        claims[0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    let cfg = start_like_the_pod(&docs, &args).await;
    assert_eq!(cfg["server"]["http"], "0.0.0.0:10105");
    assert_eq!(cfg["server"]["admin"], "0.0.0.0:10106");
    assert_eq!(cfg["server"]["maxBodyBytes"], 65536);
    assert_eq!(cfg["subscriptions"][0]["name"], "audit");

    // Optional: a ServiceMonitor on the admin port's /metrics; no PVC without persistence.
    let docs = render(&["serviceMonitor.enabled=true", "persistence.enabled=false"]);
    let sm = of_kind(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let sts = of_kind(&docs, "StatefulSet");
    assert!(sts["spec"]["volumeClaimTemplates"].is_null());
    let vols = sts["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(vols
        .iter()
        .any(|v| v["name"] == "data" && !v["emptyDir"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_chart_puts_evmesh_beside_the_application_on_loopback() {
    let docs = render(&["mode=sidecar"]);
    assert_eq!(kinds(&docs), vec!["ConfigMap", "Deployment"]);
    let pod = &of_kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let names: Vec<&str> = pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["app", "evmesh"]);
    let app = &pod["containers"][0];
    assert!(app["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "EVMESH_URL" && e["value"] == "http://127.0.0.1:10105"));
    let args = check_container(evmesh_container(pod));
    let at = args.iter().position(|a| a == "--profile").unwrap();
    assert_eq!(args[at + 1], "sidecar");
    let at = args.iter().position(|a| a == "--upstream").unwrap();
    assert_eq!(args[at + 1], "http://evmesh:10105");
    let cfg = start_like_the_pod(&docs, &args).await;
    assert_eq!(cfg["server"]["http"], "127.0.0.1:10105");
    assert_eq!(cfg["server"]["tcp"], "127.0.0.1:10000");
    // The kubelet probes the admin port on the pod's address.
    assert_eq!(cfg["server"]["admin"], "0.0.0.0:10106");
}
