//! The README's tour, run as written: every `sh` block of the "Five-minute tour" section goes
//! through `bash` unchanged, against `evmesh serve` started with no flags in an empty folder on
//! the default ports (the first block is that command; the test runs the binary it built).
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
}

/// The `sh` blocks of the section headed `heading`, in order.
fn blocks(text: &str, heading: &str) -> Vec<String> {
    blocks_of(text, heading, "sh")
}

/// The code blocks of language `lang` of the section headed `heading`, in order.
fn blocks_of(text: &str, heading: &str, lang: &str) -> Vec<String> {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &text[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut out = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("```{lang}") {
            let mut block = String::new();
            for l in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                block.push_str(l);
                block.push('\n');
            }
            out.push(block);
        }
    }
    out
}

fn bash(script: &str, cwd: &std::path::Path) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "block failed: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tour_runs_as_written_on_default_ports() {
    let text = readme();
    let tour = blocks(&text, "## Five-minute tour");
    assert_eq!(tour.len(), 5, "the tour has five steps");
    assert!(tour[0].contains("cargo run --release -p evmesh -- serve"));
    let first_command = blocks(&text, "## The two commands");
    assert!(first_command[0].contains("cargo run --release -p evmesh -- serve   # 1."));
    assert!(first_command[0].contains("scripts/test.sh"));

    let cwd = tempfile::tempdir().unwrap();
    let mut ev = Evmesh::start_in(cwd.path(), &["serve"], &[]);

    // Step 2: the webhook, in the background, its prints collected.
    use std::os::unix::process::CommandExt;
    let mut hook = Command::new("bash")
        .arg("-c")
        .arg(&tour[1])
        .current_dir(cwd.path())
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let printed = Arc::new(Mutex::new(String::new()));
    let p2 = printed.clone();
    let out = hook.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut p = p2.lock().unwrap();
            p.push_str(&line);
            p.push('\n');
        }
    });
    // The webhook is up once its port answers.
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
            "127.0.0.1:8080"
        )
        .is_ok())
        .await
    );

    let subscribed = bash(&tour[2], cwd.path());
    assert!(subscribed.contains("\"name\":\"audit\""), "{subscribed}");
    let published = bash(&tour[3], cwd.path());
    assert!(published.contains("HTTP/1.1 202"), "{published}");
    assert_eq!(
        published.matches("\"accepted\":1").count(),
        3,
        "{published}"
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            let p = printed.lock().unwrap();
            p.contains("'ce-id': '1'") && p.contains("'ce-id': '2'")
        })
        .await,
        "the webhook printed:\n{}\nlog:\n{}",
        printed.lock().unwrap(),
        ev.log()
    );
    let looked = bash(&tour[4], cwd.path());
    assert!(looked.contains("\"origin\":\"api\""), "{looked}");
    assert!(
        looked.contains(
            r#"{"attribute":"id","error":"id: must be a non-empty string","rule":"must be a non-empty string"}"#
        ),
        "{looked}"
    );
    assert!(
        looked.contains(
            r#"{"matches":false,"reason":"filters[1].prefix.source: \"web/x\" does not start with \"shop/\"","transformed":null}"#
        ),
        "{looked}"
    );
    assert!(
        looked.contains(r#"evmesh_deliveries_total{subscription="audit",outcome="delivered"} 2"#),
        "{looked}"
    );
    let p = printed.lock().unwrap().clone();
    assert!(!p.contains("'ce-id': '3'"), "event 3 must not match: {p}");
    assert!(
        p.contains("{\"order\": 42}") || p.contains("{\"order\":42}"),
        "{p}"
    );
    // The webhook's whole process group (bash and python).
    let _ = Command::new("kill")
        .arg("--")
        .arg(format!("-{}", hook.id()))
        .status();
    let _ = hook.wait();
    // Ctrl-C: a clean exit.
    assert!(ev.terminate().success());
}

/// Every YAML block of the configuration reference is a configuration `evmesh validate` takes
/// (the reference shows real keys, not a sketch of them).
#[test]
fn configuration_reference_blocks_validate() {
    let text = readme();
    let yaml = blocks_of(&text, "## Configuration reference", "yaml");
    assert!(yaml.len() >= 3, "the reference has its YAML blocks");
    // The reference's plugins are the examples, named relative to the repository.
    example_plugins();
    let dir = tempfile::tempdir().unwrap();
    for (i, block) in yaml.iter().enumerate() {
        let path = dir.path().join(format!("block{i}.yaml"));
        std::fs::write(&path, block).unwrap();
        let out = Command::new(evmesh_bin())
            .arg("validate")
            .arg(&path)
            .current_dir(repo_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README configuration block {i} does not validate:\n{}{}\n{block}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
