//! Shared helpers: running portico and nginx on a config and reading their verdicts.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

/// The portico binary under test.
pub fn portico() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portico"))
}

/// A port nothing listens on now, for a config that must name its port (nginx cannot report
/// the one port 0 gave it, and a reload test rewrites `listen`s).
///
/// The ports come from below the kernel's ephemeral range (32768-60999 by default), handed out
/// in turn: `bind(:0)` and every outgoing `connect` draw from that range, so a port taken there
/// and released could be reused by a parallel test's client before the server binds it. Here
/// only another explicit bind can take it, and this counter never gives a port out twice.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Two test binaries at once (or a leftover server) start at different places.
    let base = (std::process::id() % 97) as u16 * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (base + n) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
        assert!(n < SPAN, "no free port in {FIRST}..{}", FIRST + SPAN);
    }
}

/// nginx, if installed (CI installs it; `.ci/run` says how). Set PORTICO_REQUIRE_NGINX=1 to
/// make its absence a failure rather than a skip.
pub fn nginx_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var("NGINX_BINARY").ok(),
        Some("/usr/sbin/nginx".into()),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() && std::env::var("PORTICO_REQUIRE_NGINX").is_ok_and(|v| v == "1") {
        panic!("nginx is required (PORTICO_REQUIRE_NGINX=1) but was not found");
    }
    found
}

/// What `-t` said about a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    /// The first `[emerg]` line without the program prefix and nginx's time/pid stamp:
    /// `unknown directive "x" in /path:12`.
    pub first_error: Option<String>,
    pub stderr: String,
}

fn verdict(output: std::process::Output) -> Verdict {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let first_error = stderr.lines().find_map(|l| {
        l.split_once("[emerg] ")
            .map(|(_, m)| strip_stamp(m).to_string())
    });
    Verdict {
        ok: output.status.success(),
        first_error,
        stderr,
    }
}

/// nginx prefixes some messages with `PID#TID: `; drop it.
fn strip_stamp(m: &str) -> &str {
    match m.split_once(": ") {
        Some((stamp, rest)) if stamp.bytes().all(|b| b.is_ascii_digit() || b == b'#') => rest,
        _ => m,
    }
}

/// `portico -t -p PREFIX -c CONF`.
pub fn portico_test(prefix: &Path, conf: &Path) -> Verdict {
    let out = portico()
        .arg("-t")
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .output()
        .expect("run portico");
    verdict(out)
}

/// `nginx -t -p PREFIX -c CONF`, with its error log and pid kept inside a scratch directory.
pub fn nginx_test(nginx: &Path, prefix: &Path, conf: &Path) -> Verdict {
    let out = Command::new(nginx)
        .arg("-t")
        .arg("-q")
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg("stderr")
        .output()
        .expect("run nginx");
    verdict(out)
}

/// A fresh scratch directory under the target dir, removed and recreated.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
