//! Golden diagnostics: each `tests/golden/<case>/` holds a `nginx.conf` (and what it includes)
//! and `expected.txt`, portico -t's whole stderr with the case's path written `$DIR`.
//! Where nginx is installed, the same case also goes through `nginx -t`: the verdict and the
//! first error (message and file:line) must be nginx's, unless the case's first line says
//! `# portico-only: <why>`. `BLESS=1 cargo test golden` rewrites the expected files.

use std::path::{Path, PathBuf};

use crate::support;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("nginx.conf").exists())
        .collect();
    dirs.sort();
    dirs
}

fn normalize(text: &str, dir: &Path) -> String {
    text.replace(&dir.display().to_string(), "$DIR")
}

#[test]
fn golden_diagnostics() {
    let bless = std::env::var("BLESS").is_ok_and(|v| v == "1");
    let nginx = support::nginx_binary();
    let mut failures = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 40, "only {} golden cases", cases.len());
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let conf = dir.join("nginx.conf");
        let mine = support::portico_test(dir, &conf);
        let actual = normalize(&mine.stderr, dir);
        let expected_path = dir.join("expected.txt");
        if bless {
            std::fs::write(&expected_path, &actual).expect("write expected.txt");
        } else {
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            if expected != actual {
                failures.push(format!(
                    "{name}: output differs\n--- expected\n{expected}--- actual\n{actual}"
                ));
            }
        }
        let first_line = std::fs::read_to_string(&conf).unwrap_or_default();
        let portico_only = first_line.starts_with("# portico-only:");
        if let (Some(nginx), false) = (&nginx, portico_only) {
            let theirs = support::nginx_test(nginx, dir, &conf);
            let norm = |v: &Option<String>| v.as_ref().map(|m| normalize(m, dir));
            if theirs.ok != mine.ok || norm(&theirs.first_error) != norm(&mine.first_error) {
                failures.push(format!(
                    "{name}: differs from nginx\n  nginx:   ok={} {:?}\n  portico: ok={} {:?}",
                    theirs.ok,
                    norm(&theirs.first_error),
                    mine.ok,
                    norm(&mine.first_error)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn check_renders_the_source_line_and_a_caret() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/several_errors");
    let out = support::portico()
        .arg("check")
        .arg(dir.join("nginx.conf"))
        .output()
        .expect("run portico check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("error[unknown-directive]: unknown directive \"bogus1\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("  bogus1;") && stdout.contains("^^^^^^"),
        "{stdout}"
    );
    assert!(stdout.contains("3 error(s)"), "{stdout}");
}
