//! `--expect FILE`: route assertions kept next to the config, one a line, checked with the
//! router the server runs ([`crate::plan::route::route`], the same code as `portico route`):
//!
//! ```text
//! # METHOD URL [Header: value]... -> WHAT
//! GET http://example.com/static/app.css -> alias /srv/static/app.css
//! GET http://example.com/api/x -> proxy http://app_server/api/x
//! GET http://example.com/old -> return 301 https://example.com/new
//! GET http://example.com/nope -> status 404
//! ```
//!
//! `WHAT` is `file PATH` (also spelt `alias PATH` or `root PATH`), `proxy URL` (the
//! upstream's scheme, name or address, and the request target it gets), `return CODE [URL]`
//! (the status and, for a redirect, the `Location`), or `status CODE` (the answer's status,
//! whatever made it). A mismatch is a finding of rule `expect` at the expectation's line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{Finding, Level};
use crate::plan::route::{self, FileCheck, Outcome, Request};
use crate::plan::{ListenAddr, Plan};

/// One parsed expectation.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub line: usize,
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub want: Want,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    File(String),
    Proxy(String),
    Return(u16, Option<String>),
    Status(u16),
}

/// Parses an expectation file; errors are (line, message).
pub fn parse(text: &str) -> (Vec<Expectation>, Vec<(usize, String)>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        match parse_line(l) {
            Ok((method, url, headers, want)) => out.push(Expectation {
                line,
                method,
                url,
                headers,
                want,
            }),
            Err(m) => errors.push((line, m)),
        }
    }
    (out, errors)
}

type Parsed = (String, String, Vec<(String, String)>, Want);

fn parse_line(l: &str) -> Result<Parsed, String> {
    let (request, want) = l
        .split_once("->")
        .ok_or("an expectation is 'METHOD URL -> WHAT'")?;
    let mut words = request.split_whitespace();
    let method = words.next().ok_or("no method")?.to_string();
    let url = words.next().ok_or("no URL")?.to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "the URL must be absolute (http://host/path), not {url:?}"
        ));
    }
    let rest: Vec<&str> = words.collect();
    let rest = rest.join(" ");
    let mut headers = Vec::new();
    if !rest.trim().is_empty() {
        for h in rest.split(" | ") {
            let (n, v) = h
                .split_once(':')
                .ok_or_else(|| format!("a header must be 'Name: value', not {h:?}"))?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut w = want.split_whitespace();
    let kind = w.next().ok_or("nothing after ->")?;
    let arg = w.next();
    let want = match (kind, arg) {
        ("file" | "alias" | "root", Some(p)) => Want::File(p.to_string()),
        ("proxy", Some(u)) => Want::Proxy(u.to_string()),
        ("return", Some(code)) => Want::Return(
            code.parse().map_err(|_| format!("bad status {code:?}"))?,
            w.next().map(str::to_string),
        ),
        ("status", Some(code)) => {
            Want::Status(code.parse().map_err(|_| format!("bad status {code:?}"))?)
        }
        _ => {
            return Err(format!(
                "after -> comes file PATH, proxy URL, return CODE [URL] or status CODE, not {want:?}"
            ));
        }
    };
    Ok((method, url, headers, want))
}

/// Whether files exist, on the checkout (through `--map`).
pub struct MappedFiles<'s> {
    pub settings: &'s super::Settings,
}

impl FileCheck for MappedFiles<'_> {
    fn is_file(&self, path: &str) -> bool {
        self.settings.map_path(Path::new(path)).is_file()
    }
    fn is_dir(&self, path: &str) -> bool {
        self.settings.map_path(Path::new(path)).is_dir()
    }
}

/// Checks every expectation against the plan; a mismatch is a finding at `file:line`.
pub fn check(
    plan: &Plan,
    expectations: &[Expectation],
    file: &Path,
    files: &dyn FileCheck,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for e in expectations {
        let got = describe(plan, e, files);
        let ok = match (&e.want, &got) {
            (Want::File(p), Got::File(q)) => p == q,
            (Want::Proxy(u), Got::Proxy(v)) => u == v,
            (Want::Return(c, u), Got::Return(d, v)) => c == d && (u.is_none() || u == v),
            (Want::Status(c), g) => *c == g.status(),
            _ => false,
        };
        if !ok {
            out.push(external(
                format!(
                    "{} {}: expected {}, got {}",
                    e.method,
                    e.url,
                    want_text(&e.want),
                    got.text()
                ),
                file,
                e.line,
            ));
        }
    }
    out
}

/// A finding for a line of the expectation file (not of the config).
pub fn external(message: String, file: &Path, line: usize) -> Finding {
    Finding {
        rule: "expect",
        level: Level::Error,
        message,
        span: None,
        notes: Vec::new(),
        compiler: false,
        external: Some((file.to_path_buf(), line)),
    }
}

enum Got {
    File(String),
    Proxy(String),
    Return(u16, Option<String>),
    NoServer,
}

impl Got {
    fn status(&self) -> u16 {
        match self {
            Got::File(_) | Got::Proxy(_) => 200,
            Got::Return(c, _) => *c,
            Got::NoServer => 0,
        }
    }
    fn text(&self) -> String {
        match self {
            Got::File(p) => format!("file {p}"),
            Got::Proxy(u) => format!("proxy {u}"),
            Got::Return(c, Some(l)) => format!("return {c} {l}"),
            Got::Return(c, None) => format!("return {c}"),
            Got::NoServer => "no server listening".to_string(),
        }
    }
}

fn want_text(w: &Want) -> String {
    match w {
        Want::File(p) => format!("file {p}"),
        Want::Proxy(u) => format!("proxy {u}"),
        Want::Return(c, Some(l)) => format!("return {c} {l}"),
        Want::Return(c, None) => format!("return {c}"),
        Want::Status(c) => format!("status {c}"),
    }
}

fn describe(plan: &Plan, e: &Expectation, files: &dyn FileCheck) -> Got {
    let https = e.url.starts_with("https://");
    let authority = route::split_absolute(&e.url).0.unwrap_or("");
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(if https { 443 } else { 80 });
    // The socket: one on the URL's port (an ssl one for https), else the first.
    let socket = plan
        .sockets
        .iter()
        .find(|s| s.addr.port() == port && s.opts.ssl == https)
        .or_else(|| plan.sockets.iter().find(|s| s.addr.port() == port))
        .or_else(|| plan.sockets.first());
    let Some(socket) = socket else {
        return Got::NoServer;
    };
    let local = match &socket.addr {
        ListenAddr::Tcp(a) if a.ip().is_unspecified() => {
            ListenAddr::Tcp(SocketAddr::new([127, 0, 0, 1].into(), a.port()))
        }
        a => a.clone(),
    };
    let mut headers = e.headers.clone();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        headers.insert(0, ("Host".to_string(), authority.to_string()));
    }
    let lines: Vec<crate::plan::header::Line> = headers
        .iter()
        .map(|(n, v)| crate::plan::header::line_of(n, v))
        .collect();
    let request = Request {
        method: &e.method,
        target: &e.url,
        version: "HTTP/1.1",
        headers: &lines,
        remote: SocketAddr::from(([127, 0, 0, 1], 50000)),
        socket: &socket.addr,
        local: &local,
        https,
        body_len: None,
        chunked: false,
        connection: 1,
        explain: false,
        tls: None,
        requests: 1,
        connection_ms: 0,
    };
    let decision = route::route(plan, &request, files);
    match decision.outcome {
        Outcome::File { path } | Outcome::Listing { path } => match decision.status {
            Some(s) if s != 200 => Got::Return(s, None),
            _ => Got::File(path),
        },
        Outcome::Proxy {
            upstream,
            pass,
            request,
            ..
        } => {
            let scheme = if pass.https { "https" } else { "http" };
            Got::Proxy(format!("{scheme}://{upstream}{}", request.target()))
        }
        Outcome::Return {
            status, headers, ..
        } => {
            let location = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.clone());
            Got::Return(status, location)
        }
    }
}

/// Reads and checks an expectation file.
pub fn run(plan: &Plan, path: &PathBuf, files: &dyn FileCheck) -> Vec<Finding> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return vec![external(
                format!("cannot read the expectations: {e}"),
                path,
                1,
            )];
        }
    };
    let (expectations, errors) = parse(&text);
    let mut out: Vec<Finding> = errors
        .into_iter()
        .map(|(line, m)| external(m, path, line))
        .collect();
    out.extend(check(plan, &expectations, path, files));
    out.sort_by_key(|f| f.external.as_ref().map_or(0, |e| e.1));
    out
}
