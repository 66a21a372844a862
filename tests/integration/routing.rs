//! Data-driven routing cases: each `tests/routing/*.test` file holds a configuration and
//! requests, each with the decision expected (the rules of nginx's request processing, one
//! file per rule). `portico route --format json` must give it. The format:
//!
//! ```text
//! config:
//! server { listen 127.0.0.1:8080; location / { return 200 "root"; } }
//! ---
//! request: GET /x
//! header: Host: example.com        (any number; also `to: ADDR:PORT`, `body: N`)
//! location /                       (the expected lines, in order, among the decision's)
//! status 200
//! body root
//! ```
//!
//! Decision lines: `server NAME`, `location MOD NAME` (`location -` for none), `status N`,
//! `body TEXT` (own text, not nginx's built-in pages), `redirect URL`, `proxy UPSTREAM METHOD
//! TARGET VERSION`, `> Name: value` (every header sent upstream, in order, when any is
//! expected), `file PATH`, `uri URI`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support;

struct Case {
    file: String,
    request: String,
    headers: Vec<String>,
    to: Option<String>,
    body: Option<String>,
    expect: Vec<String>,
}

fn parse(path: &Path) -> (String, Vec<Case>) {
    let text = std::fs::read_to_string(path).expect("read case file");
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut parts = text.split("\n---\n");
    let head = parts.next().unwrap_or_default();
    let config = head
        .split_once("config:\n")
        .map(|(_, c)| c.to_string())
        .unwrap_or_else(|| panic!("{file}: no config: section"));
    let mut cases = Vec::new();
    for part in parts {
        let mut case = Case {
            file: file.clone(),
            request: String::new(),
            headers: Vec::new(),
            to: None,
            body: None,
            expect: Vec::new(),
        };
        for line in part
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            if let Some(r) = line.strip_prefix("request: ") {
                case.request = r.to_string();
            } else if let Some(h) = line.strip_prefix("header: ") {
                case.headers.push(h.to_string());
            } else if let Some(t) = line.strip_prefix("to: ") {
                case.to = Some(t.to_string());
            } else if let Some(b) = line.strip_prefix("body: ") {
                case.body = Some(b.to_string());
            } else {
                case.expect.push(line.to_string());
            }
        }
        assert!(!case.request.is_empty(), "{file}: a case without request:");
        cases.push(case);
    }
    (config, cases)
}

/// The decision as lines comparable with a case's expectations.
fn summary(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let names = v["server"]["names"].as_array().cloned().unwrap_or_default();
    out.push(format!(
        "server {}",
        names.first().and_then(Value::as_str).unwrap_or("")
    ));
    match v["location"].as_object() {
        Some(l) => out.push(
            format!(
                "location {} {}",
                l["modifier"].as_str().unwrap_or(""),
                l["match"].as_str().unwrap_or("")
            )
            .replace("location  ", "location "),
        ),
        None => out.push("location -".to_string()),
    }
    out.push(format!("uri {}", v["uri"].as_str().unwrap_or("")));
    let o = &v["outcome"];
    match o["kind"].as_str() {
        Some("return") => {
            let status = o["status"].as_u64().unwrap_or(0);
            out.push(format!("status {status}"));
            for h in o["headers"].as_array().into_iter().flatten() {
                if h[0] == "Location" {
                    out.push(format!("redirect {}", h[1].as_str().unwrap_or("")));
                }
            }
            if let Some(b) = o["body"].as_str()
                && !b.starts_with("<html>")
            {
                out.push(format!("body {b}"));
            }
        }
        Some("proxy") => {
            let r = &o["request"];
            out.push(format!(
                "proxy {} {} {} {}",
                o["upstream"].as_str().unwrap_or(""),
                r["method"].as_str().unwrap_or(""),
                r["target"].as_str().unwrap_or(""),
                r["version"].as_str().unwrap_or("")
            ));
            for h in r["headers"].as_array().into_iter().flatten() {
                out.push(format!(
                    "> {}: {}",
                    h[0].as_str().unwrap_or(""),
                    h[1].as_str().unwrap_or("")
                ));
            }
        }
        Some("file") => out.push(format!("file {}", o["path"].as_str().unwrap_or(""))),
        other => out.push(format!("outcome {other:?}")),
    }
    out
}

/// Whether `expect` holds in `got`: its lines in order, and all `>` lines exactly.
fn holds(expect: &[String], got: &[String]) -> bool {
    let mut it = got.iter();
    let in_order = expect.iter().all(|e| it.any(|g| g == e));
    let want: Vec<&String> = expect.iter().filter(|e| e.starts_with("> ")).collect();
    let have: Vec<&String> = got.iter().filter(|e| e.starts_with("> ")).collect();
    in_order && (want.is_empty() || want == have)
}

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/routing");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/routing")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    v.sort();
    v
}

#[test]
fn routing_decisions() {
    let scratch = support::scratch("routing");
    let (mut total, mut failures) = (0, Vec::new());
    for path in files() {
        let (config, cases) = parse(&path);
        let conf = scratch
            .join(path.file_stem().unwrap())
            .with_extension("conf");
        std::fs::write(&conf, &config).unwrap();
        for case in cases {
            total += 1;
            let mut cmd = support::portico();
            cmd.arg("route")
                .arg("-p")
                .arg(&scratch)
                .arg("-c")
                .arg(&conf)
                .arg("--format")
                .arg("json");
            for h in &case.headers {
                cmd.arg("-H").arg(h);
            }
            if let Some(t) = &case.to {
                cmd.arg("--to").arg(t);
            }
            if let Some(b) = &case.body {
                cmd.arg("--body").arg(b);
            }
            let out = cmd.arg(&case.request).output().expect("run portico route");
            if !out.status.success() {
                failures.push(format!(
                    "{} {}: portico route failed: {}",
                    case.file,
                    case.request,
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
            let v: Value = serde_json::from_slice(&out.stdout).expect("route JSON");
            let got: Vec<String> = summary(&v)
                .into_iter()
                .map(|l| l.trim_end().to_string())
                .collect();
            if !holds(&case.expect, &got) {
                failures.push(format!(
                    "{} {} {:?}\n  expected: {:#?}\n  got: {:#?}",
                    case.file, case.request, case.headers, case.expect, got
                ));
            }
        }
    }
    assert!(total >= 50, "only {total} routing cases");
    assert!(
        failures.is_empty(),
        "{} of {total} routing cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("routing: {total} cases hold");
}
