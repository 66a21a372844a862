//! Access logs: each request's line evaluated from its `log_format` once the answer is sent,
//! and written by a thread of its own, so a slow disk never blocks the event loop. Lines are
//! flushed as soon as the writer has nothing queued, and at exit.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::plan::route::Decision;
use crate::plan::template::{Resolve, Var};
use crate::plan::{ListenAddr, Plan};

use super::http1::Head;

enum Message {
    Line(String, String),
    Flush(mpsc::Sender<()>),
    /// Close every file (flushed); each is opened again, by path, at its next line.
    Reopen,
}

/// Creates the access log files a plan names (nginx opens them when it starts); a file that
/// cannot be made is an error line, and its lines are tried again later.
pub fn create_files(paths: &[String]) {
    for p in paths {
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            tracing::error!("open() \"{p}\" failed ({e})");
        }
    }
}

fn writer() -> &'static Mutex<Sender<Message>> {
    static CELL: OnceLock<Mutex<Sender<Message>>> = OnceLock::new();
    CELL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Message>();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut files: HashMap<String, std::io::BufWriter<std::fs::File>> = HashMap::new();
                let mut failed: HashMap<String, ()> = HashMap::new();
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    while let Some(m) = next.take() {
                        match m {
                            Message::Line(path, line) => {
                                if !files.contains_key(&path) && !failed.contains_key(&path) {
                                    match std::fs::OpenOptions::new()
                                        .create(true)
                                        .append(true)
                                        .open(&path)
                                    {
                                        Ok(f) => {
                                            files.insert(path.clone(), std::io::BufWriter::new(f));
                                        }
                                        Err(e) => {
                                            tracing::error!("open() \"{path}\" failed ({e})");
                                            failed.insert(path.clone(), ());
                                        }
                                    }
                                }
                                if let Some(f) = files.get_mut(&path) {
                                    let _ = f.write_all(line.as_bytes());
                                }
                            }
                            Message::Reopen => {
                                for f in files.values_mut() {
                                    let _ = f.flush();
                                }
                                files.clear();
                                failed.clear();
                            }
                            Message::Flush(done) => {
                                for f in files.values_mut() {
                                    let _ = f.flush();
                                }
                                let _ = done.send(());
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    for f in files.values_mut() {
                        let _ = f.flush();
                    }
                }
            })
            .expect("spawn the access log writer");
        Mutex::new(tx)
    })
}

/// Waits until every queued line is on disk (at exit).
pub fn flush() {
    let (tx, rx) = mpsc::channel();
    let sent = writer()
        .lock()
        .map(|w| w.send(Message::Flush(tx)).is_ok())
        .unwrap_or(false);
    if sent {
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }
}

/// SIGUSR1: access log files are opened again (logrotate moved them away).
pub fn reopen() {
    if let Ok(w) = writer().lock() {
        let _ = w.send(Message::Reopen);
    }
}

/// What the answer was, for the log.
#[derive(Default, Debug, Clone)]
pub struct Served {
    pub status: u16,
    pub bytes_sent: u64,
    pub body_bytes_sent: u64,
    /// One entry per upstream tried, in order (nginx's `upstream_states`).
    pub upstreams: Vec<UpstreamState>,
    /// `$request_body`: the body read for the upstream, when it was kept in memory.
    pub request_body: Option<String>,
    /// The answer's header lines, when a log format reads `$sent_http_NAME`.
    pub sent_headers: Vec<(String, String)>,
    /// The upstream's header lines, when a log format reads `$upstream_http_NAME`.
    pub upstream_headers: Vec<crate::server::http1::Line>,
}

/// One attempt on an upstream server, for the `$upstream_*` variables.
#[derive(Clone, Debug)]
pub struct UpstreamState {
    pub addr: Tried,
    /// Its answer's status; 502/504 when it gave none.
    pub status: Option<u16>,
    pub started: std::time::Instant,
    /// When the connection was made, the head read, the answer over: instants, made into
    /// durations from `started` only when a variable asks (most requests never do).
    pub connect: Option<std::time::Instant>,
    pub header: Option<std::time::Instant>,
    pub response: Option<std::time::Instant>,
    /// Reached through an internal redirect (an `error_page`): nginx separates it with " : ".
    pub redirected: bool,
    /// `$upstream_bytes_sent`, `$upstream_bytes_received`, `$upstream_response_length`
    /// (the body as read, framing included, as nginx counts it).
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub response_length: Option<u64>,
}

/// What `$upstream_addr` names for an attempt.
#[derive(Debug, Clone)]
pub enum Tried {
    /// The server tried: its address as the plan wrote it (shared, not copied per request).
    Peer(std::sync::Arc<crate::plan::Peer>),
    /// The group's name, when none of its servers could be tried.
    Group(String),
}

impl Tried {
    pub fn text(&self) -> &str {
        match self {
            Tried::Peer(p) => &p.text,
            Tried::Group(g) => g,
        }
    }
}

impl Served {
    /// `$upstream_addr`, `$upstream_status`, `$upstream_*_time`, as nginx joins them
    /// (", " between attempts, " : " across an internal redirect); `None` when no upstream
    /// was tried.
    pub fn upstream_var(&self, name: &str) -> Option<String> {
        if self.upstreams.is_empty() {
            return None;
        }
        let time = |t: Option<std::time::Instant>, started: std::time::Instant| {
            t.map_or("-".to_string(), |t| {
                let t = t.saturating_duration_since(started);
                format!("{}.{:03}", t.as_secs(), t.subsec_millis())
            })
        };
        let mut out = String::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            if i > 0 {
                out.push_str(if u.redirected { " : " } else { ", " });
            }
            let v = match name {
                "upstream_addr" => u.addr.text().to_string(),
                "upstream_status" => u.status.map_or("-".to_string(), |s| s.to_string()),
                "upstream_connect_time" => time(u.connect, u.started),
                "upstream_header_time" => time(u.header, u.started),
                "upstream_response_time" => time(u.response, u.started),
                "upstream_bytes_sent" => u.bytes_sent.map_or("0".into(), |n| n.to_string()),
                "upstream_bytes_received" => u.bytes_received.map_or("0".into(), |n| n.to_string()),
                "upstream_response_length" => {
                    u.response_length.map_or("0".into(), |n| n.to_string())
                }
                _ => return None,
            };
            out.push_str(&v);
        }
        Some(out)
    }
}

pub struct Entry<'a> {
    pub plan: &'a Plan,
    pub decision: &'a Decision,
    pub head: &'a Head,
    pub peer: SocketAddr,
    pub local: &'a ListenAddr,
    pub served: &'a Served,
    pub started: std::time::Instant,
    pub connection: u64,
    pub requests: u64,
}

/// Writes the request's access log lines.
pub fn write(e: &Entry<'_>) {
    let logs = e.decision.conf.settings.access_log();
    for log in logs {
        let Some(format) = e.plan.log_formats.get(&log.format) else {
            continue;
        };
        if let Some(cond) = &log.condition {
            let v = cond.eval(e);
            if v.is_empty() || v == "0" {
                continue;
            }
        }
        let path = log.path.eval(e);
        let mut line = String::new();
        for part in &format.template.parts {
            use crate::plan::template::Part;
            match part {
                Part::Lit(l) => line.push_str(l),
                // A variable that is not found is `-`; one that is empty writes nothing.
                Part::Var(v) => match e.var(v) {
                    Some(value) => line.push_str(&escape(&value, &format.escape)),
                    None => {
                        if format.escape != "json" {
                            line.push('-')
                        }
                    }
                },
                Part::Capture(_) => {}
            }
        }
        line.push('\n');
        if let Ok(w) = writer().lock() {
            let _ = w.send(Message::Line(path, line));
        }
    }
}

fn escape<'v>(v: &'v str, how: &str) -> Cow<'v, str> {
    match how {
        "none" => Cow::Borrowed(v),
        "json" => {
            let mut out = String::new();
            for c in v.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            Cow::Owned(out)
        }
        _ => {
            if v.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
            {
                return Cow::Borrowed(v);
            }
            let mut out = String::new();
            for &b in v.as_bytes() {
                if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("\\x{b:02X}"));
                }
            }
            Cow::Owned(out)
        }
    }
}

/// nginx's `$time_local`: `24/Nov/2026:10:00:00 +0000`.
fn time_local(t: SystemTime) -> String {
    let http = httpdate::fmt_http_date(t); // "Tue, 24 Nov 2026 10:00:00 GMT"
    let p: Vec<&str> = http.split(' ').collect();
    match p.as_slice() {
        [_, d, m, y, hms, _] => format!("{d}/{m}/{y}:{hms} +0000"),
        _ => http,
    }
}

fn iso8601(t: SystemTime) -> String {
    let l = time_local(t); // 24/Nov/2026:10:00:00 +0000
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = l.splitn(4, ['/', ':']).collect();
    match parts.as_slice() {
        [d, m, y, rest] => {
            let mm = months.iter().position(|x| x == m).map_or(1, |i| i + 1);
            let hms = rest.split(' ').next().unwrap_or("00:00:00");
            format!("{y}-{mm:02}-{d}T{hms}+00:00")
        }
        _ => l,
    }
}

impl Resolve for Entry<'_> {
    fn var(&self, var: &Var) -> Option<Cow<'_, str>> {
        let now = SystemTime::now();
        let d = self.decision;
        let h = self.head;
        Some(match var {
            Var::RemoteAddr => Cow::Owned(self.peer.ip().to_string()),
            Var::RemotePort => match self.peer.port() {
                0 => return None,
                p => Cow::Owned(p.to_string()),
            },
            Var::Request => Cow::Owned(format!("{} {} {}", h.method, h.target, h.version_text())),
            Var::RequestMethod => Cow::Borrowed(&*h.method),
            Var::RequestUri => Cow::Borrowed(h.target.as_str()),
            Var::Uri => Cow::Borrowed(d.uri.as_str()),
            Var::Args => Cow::Borrowed(d.args.as_str()),
            Var::IsArgs => Cow::Borrowed(if d.args.is_empty() { "" } else { "?" }),
            Var::ServerProtocol => h.version_text(),
            Var::ServerName => {
                Cow::Borrowed(self.plan.servers.get(d.server).map_or("", |s| s.name()))
            }
            Var::ServerPort => Cow::Owned(self.local.port().to_string()),
            Var::Scheme => Cow::Borrowed("http"),
            Var::Host => h
                .header("host")
                .and_then(crate::plan::names::validate_host)
                .unwrap_or_else(|| {
                    Cow::Borrowed(self.plan.servers.get(d.server).map_or("", |s| s.name()))
                }),
            Var::Http(name) => Cow::Borrowed(h.header(&name.replace('_', "-"))?),
            Var::UpstreamHttp(name) => {
                let name = name.replace('_', "-");
                let v = self
                    .served
                    .upstream_headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(&name))?;
                Cow::Borrowed(v.1.as_str())
            }
            Var::SentHttp(name) => {
                // Every line of that name, joined as nginx joins a multi-line header.
                let name = name.replace('_', "-");
                let values: Vec<&str> = self
                    .served
                    .sent_headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
                    .map(|(_, v)| v.as_str())
                    .collect();
                if values.is_empty() {
                    return None;
                }
                Cow::Owned(values.join(", "))
            }
            Var::ContentType => Cow::Borrowed(h.header("content-type")?),
            Var::ContentLength => Cow::Borrowed(h.header("content-length")?),
            Var::Named(n) => match n.as_str() {
                "status" => Cow::Owned(format!("{:03}", self.served.status)),
                "body_bytes_sent" => Cow::Owned(self.served.body_bytes_sent.to_string()),
                "bytes_sent" => Cow::Owned(self.served.bytes_sent.to_string()),
                "request_time" => {
                    let t = self.started.elapsed();
                    Cow::Owned(format!("{}.{:03}", t.as_secs(), t.subsec_millis()))
                }
                "time_local" => Cow::Owned(time_local(now)),
                "time_iso8601" => Cow::Owned(iso8601(now)),
                "msec" => {
                    let t = now
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    Cow::Owned(format!("{}.{:03}", t.as_secs(), t.subsec_millis()))
                }
                "remote_user" => return None,
                "upstream_addr"
                | "upstream_status"
                | "upstream_bytes_sent"
                | "upstream_bytes_received"
                | "upstream_response_length"
                | "upstream_response_time"
                | "upstream_header_time"
                | "upstream_connect_time" => Cow::Owned(self.served.upstream_var(n)?),
                "request_body" => Cow::Owned(self.served.request_body.clone()?),
                "connection" => Cow::Owned(self.connection.to_string()),
                "connection_requests" => Cow::Owned(self.requests.to_string()),
                "pid" => Cow::Owned(std::process::id().to_string()),
                "pipe" => Cow::Borrowed("."),
                "request_length" => return None,
                _ => return None,
            },
            _ => return None,
        })
    }

    fn capture(&self, _: usize) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
}
