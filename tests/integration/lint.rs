//! `portico check` as a linter and `portico fmt`, through the real binary, on the data in
//! `tests/lint/` (see its README): every rule triggered and not, gixy's documented cases,
//! every output format (golden; the SARIF validated against the 2.1.0 schema), exit codes,
//! suppression, `--map`, `--expect`, and no side effects.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lint")
}

fn confs(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data().join(dir))
        .expect("tests/lint dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    files
}

/// `portico check --format json --fail-on info FILE` (plus `extra`): exit code and document.
fn check_json(file: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let fail_on: &[&str] = if extra.contains(&"--fail-on") {
        &[]
    } else {
        &["--fail-on", "info"]
    };
    let out = support::portico()
        .args(["check", "--format", "json"])
        .args(fail_on)
        .args(extra)
        .arg(file)
        .output()
        .expect("run portico check");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: not JSON ({e}):\n{}\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), doc)
}

/// (rule, line) of every finding.
fn found(doc: &Value) -> BTreeSet<(String, u64)> {
    doc["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["rule"].as_str().unwrap_or("?").to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// (rule, line) announced by `# expect:` / `# expect-next:` comments.
fn announced(file: &Path) -> BTreeSet<(String, u64)> {
    let text = std::fs::read_to_string(file).expect("read case");
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        for (marker, at) in [("# expect: ", n), ("# expect-next: ", n + 1)] {
            if let Some(pos) = line.find(marker) {
                for rule in line[pos + marker.len()..].split(',') {
                    out.insert((rule.trim().to_string(), at));
                }
            }
        }
    }
    out
}

fn check_annotated(files: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for file in files {
        let (code, doc) = check_json(file, &[]);
        let want = announced(file);
        let got = found(&doc);
        if want != got {
            failures.push(format!(
                "{}:\n  expected {want:?}\n  found    {got:?}",
                file.display()
            ));
        }
        let expected_code = if want.is_empty() { 0 } else { 1 };
        if code != Some(expected_code) {
            failures.push(format!(
                "{}: exit {code:?}, expected {expected_code}",
                file.display()
            ));
        }
    }
    failures
}

#[test]
fn lint_every_rule_has_a_triggering_and_a_clean_case() {
    let mut missing = Vec::new();
    for rule in portico::lint::RULES {
        if rule.id == "expect" {
            continue; // checked by lint_expectations_*
        }
        for kind in ["bad", "good"] {
            let path = data().join(format!("rules/{}.{kind}.conf", rule.id));
            if !path.exists() {
                missing.push(path.display().to_string());
            }
        }
    }
    assert!(missing.is_empty(), "cases missing: {missing:?}");
}

#[test]
fn lint_rule_cases_find_exactly_what_they_announce() {
    let files = confs("rules");
    assert!(files.len() >= 50, "only {} rule cases", files.len());
    let failures = check_annotated(&files);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A triggering case really triggers its own rule.
    for file in files
        .iter()
        .filter(|f| f.to_string_lossy().ends_with(".bad.conf"))
    {
        let name = file.file_name().unwrap().to_string_lossy();
        let rule = name.trim_end_matches(".bad.conf");
        assert!(
            announced(file).iter().any(|(r, _)| r == rule),
            "{name} does not announce {rule}"
        );
    }
}

#[test]
fn lint_finds_what_gixy_finds_on_its_documented_cases() {
    let files = confs("gixy");
    assert!(files.len() >= 8, "only {} gixy cases", files.len());
    let failures = check_annotated(&files);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Each case names its gixy plugin, and that plugin's rule is among what it finds.
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // The first line: `# gixy: PLUGIN. ...` or `# gixy (gixy-ng): PLUGIN. ...`.
        let plugin = text
            .lines()
            .next()
            .and_then(|l| l.split_once(": "))
            .and_then(|(_, rest)| rest.split('.').next())
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let rule = portico::lint::RULES
            .iter()
            .find(|r| r.gixy == Some(plugin.as_str()))
            .unwrap_or_else(|| panic!("{}: no rule for gixy's {plugin:?}", file.display()));
        assert!(
            announced(file).iter().any(|(r, _)| r == rule.id),
            "{}: {} not found",
            file.display(),
            rule.id
        );
    }
}

#[test]
fn lint_suppression_comments_silence_a_rule_on_their_line_or_the_next() {
    let dir = tempdir("suppress");
    let conf = dir.join("site.conf");
    std::fs::write(
        &conf,
        "server {\n    listen 80 default_server;\n    location /a {\n        # portico-ignore: alias-traversal the directory has no parent worth hiding\n        alias /srv/a/;\n    }\n    location /b {\n        alias /srv/b/; # portico-ignore: all reviewed\n    }\n    location /c {\n        alias /srv/c/; # portico-ignore: host-spoofing wrong rule\n    }\n}\n",
    )
    .unwrap();
    let (code, doc) = check_json(&conf, &[]);
    assert_eq!(found(&doc), [("alias-traversal".to_string(), 11)].into());
    assert_eq!(code, Some(1));
}

#[test]
fn lint_exit_codes() {
    let rules = data().join("rules");
    let run = |args: &[&str]| {
        support::portico()
            .arg("check")
            .args(args)
            .output()
            .expect("run")
            .status
            .code()
    };
    let clean = rules.join("alias-traversal.good.conf");
    let warns = rules.join("host-spoofing.bad.conf");
    let errors = rules.join("alias-traversal.bad.conf");
    let infos = rules.join("proxy-buffering-off.bad.conf");
    let s = |p: &Path| p.display().to_string();
    assert_eq!(run(&[&s(&clean)]), Some(0));
    assert_eq!(run(&[&s(&warns)]), Some(1), "default --fail-on is warning");
    assert_eq!(run(&["--fail-on", "error", &s(&warns)]), Some(0));
    assert_eq!(run(&["--fail-on", "error", &s(&errors)]), Some(1));
    assert_eq!(run(&[&s(&infos)]), Some(0), "info does not fail by default");
    assert_eq!(run(&["--fail-on", "info", &s(&infos)]), Some(1));
    // nginx -t would fail: 2, whatever --fail-on says.
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/several_errors/nginx.conf");
    assert_eq!(run(&["--fail-on", "error", &s(&golden)]), Some(2));
    assert_eq!(run(&["/nonexistent/portico/nginx.conf"]), Some(2));
    // Usage errors: 3 (nginx-compatible flags keep nginx's 1).
    assert_eq!(run(&["--format", "yaml", &s(&clean)]), Some(3));
    assert_eq!(run(&["--map", "no-equals-sign", &s(&clean)]), Some(3));
    assert_eq!(run(&["--no-such-flag"]), Some(3));
    let fmt = support::portico().args(["fmt"]).output().unwrap();
    assert_eq!(fmt.status.code(), Some(3), "fmt without files");
    assert_eq!(run(&["--help"]), Some(0));
    assert_eq!(run(&["--list-rules"]), Some(0));
    let nginx_flag = support::portico().arg("-Z").output().unwrap();
    assert_eq!(nginx_flag.status.code(), Some(1));
}

#[test]
fn lint_strict_turns_missing_files_and_dns_names_into_errors() {
    let bad = data().join("rules/missing-file.bad.conf");
    let (code, doc) = check_json(&bad, &["--fail-on", "error"]);
    assert_eq!(code, Some(0), "a warning by default: {doc}");
    let (code, doc) = check_json(&bad, &["--fail-on", "error", "--strict"]);
    assert_eq!(code, Some(1));
    assert!(
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["level"] == "error"),
        "{doc}"
    );
    let dns = data().join("rules/unresolved-host.bad.conf");
    let (code, _) = check_json(&dns, &["--fail-on", "error", "--strict"]);
    assert_eq!(code, Some(1));
}

#[test]
fn lint_map_reads_a_checkout_where_the_config_says_etc_nginx() {
    let repo = data().join("map/repo");
    let conf = repo.join("nginx/nginx.conf");
    // Unmapped, /etc/nginx/conf.d/*.conf matches nothing here: no servers, no finding.
    let (_, doc) = check_json(&conf, &[]);
    assert!(found(&doc).is_empty(), "{doc}");
    let map = format!("--map=/etc/nginx={}", repo.join("nginx").display());
    let out = support::portico()
        .current_dir(&repo)
        .args(["check", "--format", "json", &map, "nginx/nginx.conf"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &doc["findings"][0];
    assert_eq!(f["rule"], "alias-traversal", "{doc}");
    // Reported at the file of the checkout, relative to the current directory.
    assert_eq!(f["file"], "nginx/conf.d/site.conf", "{doc}");
    assert_eq!(f["line"], 4);
}

#[test]
fn lint_expectations_hold_and_a_broken_one_names_its_line() {
    let dir = data().join("expect");
    let conf = dir.join("site.conf");
    let routes = dir.join("routes.expect");
    let (code, doc) = check_json(&conf, &["--expect", &routes.display().to_string()]);
    assert_eq!(code, Some(0), "{doc}");
    let wrong = dir.join("wrong.expect");
    let (code, doc) = check_json(&conf, &["--expect", &wrong.display().to_string()]);
    assert_eq!(code, Some(1));
    let got: Vec<(String, u64)> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect();
    // Shown relative to the current directory (the tests run in the package root).
    let name = "tests/lint/expect/wrong.expect".to_string();
    assert_eq!(
        got,
        vec![(name.clone(), 1), (name.clone(), 3), (name, 4)],
        "{doc}"
    );
    let messages = doc.to_string();
    assert!(
        messages.contains(
            "expected proxy http://app_server/static/app.css, got file /srv/static/app.css"
        ),
        "{messages}"
    );
}

/// Golden output of every format for `formats/site.conf`, checked from its directory so that
/// paths are relative. `BLESS=1` rewrites them.
#[test]
fn lint_output_formats_are_golden() {
    let dir = data().join("formats");
    let bless = std::env::var("BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for format in ["text", "json", "sarif", "github", "checkstyle"] {
        let out = support::portico()
            .current_dir(&dir)
            .args(["check", "--color", "never", "--format", format, "site.conf"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{format}");
        let actual =
            String::from_utf8_lossy(&out.stdout).replace(env!("CARGO_PKG_VERSION"), "VERSION");
        let path = dir.join(format!("site.{format}"));
        if bless {
            std::fs::write(&path, &actual).unwrap();
        } else if std::fs::read_to_string(&path).unwrap_or_default() != actual {
            failures.push(format!(
                "{format}: differs from {}:\n{actual}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lint_text_is_coloured_only_when_asked_or_on_a_terminal() {
    let conf = data().join("formats/site.conf");
    let plain = support::portico().arg("check").arg(&conf).output().unwrap();
    assert!(!plain.stdout.contains(&0x1b), "no escape codes into a pipe");
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(text.contains("error[alias-traversal]"), "{text}");
    assert!(text.contains("^^^^^^^^^^^^^^^^"), "{text}");
    assert!(text.contains("= help: "), "{text}");
    let colour = support::portico()
        .args(["check", "--color", "always"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(colour.stdout.contains(&0x1b));
}

#[test]
fn lint_sarif_validates_against_the_2_1_0_schema() {
    let text = std::fs::read_to_string(data().join("sarif-schema-2.1.0.json")).unwrap();
    // The schema's pattern for `run.language` has a stray `]` that JavaScript reads as a
    // literal and Rust's regex engine refuses; escape it (Portico never writes `language`).
    let stray = r#"-[a-zA-Z]{2}]?$"#;
    assert!(text.contains(stray), "the vendored schema changed");
    let text = text.replace(stray, r#"-[a-zA-Z]{2}\\]?$"#);
    let schema: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::draft4::new(&schema).expect("the schema compiles");
    // Every rule's case and the gixy ones: many kinds of results, compiler ones too.
    let mut files = confs("rules");
    files.extend(confs("gixy"));
    files
        .push(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/several_errors/nginx.conf"));
    let out = support::portico()
        .args(["check", "--format", "sarif"])
        .args(&files)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // What code scanning needs beyond the schema: rule ids with help URIs, results located.
    let run = &doc["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .all(|r| r["helpUri"].is_string() && r["shortDescription"]["text"].is_string())
    );
    let results = run["results"].as_array().unwrap();
    assert!(results.len() > 60, "{}", results.len());
    for r in results {
        let region = &r["locations"][0]["physicalLocation"]["region"];
        assert!(region["startLine"].as_u64().unwrap() >= 1, "{r}");
        assert!(region["startColumn"].as_u64().unwrap() >= 1, "{r}");
        let index = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index]["id"], r["ruleId"]);
    }
    // A broken document is caught: the validator is really looking.
    let mut broken = doc.clone();
    broken["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] =
        Value::from(0);
    assert!(!validator.is_valid(&broken));
}

#[test]
fn lint_github_annotations_escape_their_properties() {
    let dir = tempdir("github");
    let conf = dir.join("a,b:c.conf");
    std::fs::write(
        &conf,
        "server {\n    listen 80 default_server;\n    location /s {\n        alias /srv/s/;\n    }\n}\n",
    )
    .unwrap();
    let out = support::portico()
        .current_dir(&dir)
        .args(["check", "--format", "github", "a,b:c.conf"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("::error file=a%2Cb%3Ac.conf,line=4,col=15,endLine=4,title=portico alias-traversal::location /s has no trailing slash"),
        "{text}"
    );
    assert!(text.contains("%0Ahelp: "), "{text}");
}

#[test]
fn lint_check_has_no_side_effects() {
    let dir = tempdir("side-effects");
    let conf = dir.join("nginx.conf");
    let logs = dir.join("logs");
    std::fs::write(
        &conf,
        format!(
            "pid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{}}\nhttp {{\n    server_tokens off;\n    access_log {0}/access.log;\n    server {{\n        listen 127.0.0.1:1 default_server;\n        server_name unresolvable.invalid;\n        location / {{ proxy_pass http://unresolvable.invalid:8000; proxy_set_header X-Forwarded-For $remote_addr; proxy_set_header X-Forwarded-Proto $scheme; }}\n    }}\n}}\n",
            logs.display()
        ),
    )
    .unwrap();
    std::fs::create_dir(&logs).unwrap();
    let (code, doc) = check_json(&conf, &[]);
    assert_eq!(
        code,
        Some(1),
        "an info (the DNS name), with --fail-on info: {doc}"
    );
    assert_eq!(found(&doc), [("unresolved-host".to_string(), 10)].into());
    assert_eq!(
        std::fs::read_dir(&logs).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn fmt_check_reports_and_fmt_rewrites_keeping_comments() {
    let before = data().join("fmt/before.conf");
    let after = data().join("fmt/after.conf");
    let out = support::portico()
        .args(["fmt", "--check"])
        .arg(&before)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("-    2   server {   listen 80; # port"),
        "{diff}"
    );
    assert!(diff.contains("+    3         listen 80; # port"), "{diff}");
    let out = support::portico()
        .args(["fmt", "--check"])
        .arg(&after)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dir = tempdir("fmt");
    let copy = dir.join("x.conf");
    std::fs::copy(&before, &copy).unwrap();
    let out = support::portico().arg("fmt").arg(&copy).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        std::fs::read_to_string(&after).unwrap()
    );
    let broken = dir.join("broken.conf");
    std::fs::write(&broken, "http {\n").unwrap();
    let out = support::portico()
        .args(["fmt", "--check"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Every parsable corpus file formats to text that parses to the same tree, keeps every
/// comment and is a fixed point (`format` itself refuses output that changes the tree).
#[test]
fn fmt_is_faithful_and_idempotent_on_the_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files = Vec::new();
    walk(&corpus, &mut files);
    let mut formatted = 0;
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        let Ok(once) = portico::lint::fmt::format(&text) else {
            continue;
        };
        formatted += 1;
        let twice = portico::lint::fmt::format(&once).expect("formatted text parses");
        assert_eq!(once, twice, "{}: not idempotent", f.display());
    }
    assert!(formatted >= 70, "only {formatted} corpus files formatted");
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_none_or(|e| e != "md") {
            out.push(p);
        }
    }
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portico-lint-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `check` is never stricter than `-t`: a corpus file `portico -t` accepts (and `-t` agrees
/// with `nginx -t` on every corpus file, see corpus.rs) checks without an error, with the
/// same pointing (prefix = the project, includes from the file's directory).
#[test]
fn lint_corpus_files_that_pass_t_check_without_an_error() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files = Vec::new();
    walk(&corpus, &mut files);
    let mut accepted = 0;
    let mut failures = Vec::new();
    for f in &files {
        let project = corpus.join(
            f.strip_prefix(&corpus)
                .unwrap()
                .components()
                .next()
                .unwrap(),
        );
        let t = support::portico()
            .args(["-t", "-q", "-p"])
            .arg(&project)
            .arg("-c")
            .arg(f)
            .output()
            .unwrap();
        let c = support::portico()
            .args(["check", "--format", "json", "--prefix"])
            .arg(&project)
            .arg(f)
            .output()
            .unwrap();
        let code = c.status.code();
        if !matches!(code, Some(0..=2)) {
            failures.push(format!("{}: check exited {code:?}", f.display()));
        }
        if t.status.success() {
            accepted += 1;
            if code == Some(2) {
                failures.push(format!(
                    "{}: -t accepts it, check calls it invalid:\n{}",
                    f.display(),
                    String::from_utf8_lossy(&c.stdout)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{accepted} corpus files pass -t");
    assert!(accepted >= 15, "only {accepted} corpus files pass -t");
}
