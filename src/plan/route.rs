//! Routing: one request through a plan, as nginx's phases take it: the socket's server by
//! `Host`, the server's rewrite program, the location, the location's rewrite program (with
//! `if`), `last` restarting the search, then the content handler. The runtime calls this, and
//! `portico route` prints what it returns: there is one routing code path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use super::header::Line;
use super::locations::Match;
use super::names::validate_host;
use super::pages;
use super::regex::Captures;
use super::settings::{ProxyRedirect, RealIpHeader};
use super::template::{Resolve, Template, Var};
use super::uri::{self, Escape};
use super::*;

/// A request as the router needs it.
/// It borrows what the connection already holds (the parsed head, the addresses): routing
/// copies nothing it does not change.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The target as the client sent it (origin-form or absolute-form).
    pub target: &'a str,
    /// `HTTP/1.1`, `HTTP/1.0`.
    pub version: &'a str,
    /// Header lines in the order received.
    pub headers: &'a [super::header::Line],
    pub remote: SocketAddr,
    /// The local address the request came in on.
    pub local: &'a ListenAddr,
    /// The configured `listen` address of the socket that accepted it (which differs from
    /// `local` for a wildcard address or port 0).
    pub socket: &'a ListenAddr,
    pub https: bool,
    /// The length of the body, when there is one.
    pub body_len: Option<u64>,
    pub chunked: bool,
    /// `$connection`: the connection's serial number.
    pub connection: u64,
    /// Record each step in `Decision::trace` (for `portico route`).
    pub explain: bool,
    /// The TLS session, on an `ssl` socket.
    pub tls: Option<&'a TlsInfo>,
    /// `$connection_requests`: requests made on the connection so far, this one included.
    pub requests: u64,
    /// `$connection_time`: how long the connection has been open, in milliseconds.
    pub connection_ms: u64,
}

/// What `$ssl_*` variables say about a TLS connection.
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    /// The name the client asked for (SNI).
    pub server_name: Option<String>,
    /// `TLSv1.2`, `TLSv1.3`.
    pub protocol: String,
    /// OpenSSL's name of the cipher suite.
    pub cipher: String,
}

/// The request line and headers that go to the upstream, as they go on the wire: one
/// buffer, made once by the router, written as it is (no copy, no allocation per header).
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    /// `METHOD target VERSION\r\n`, the `Name: value\r\n` lines, and the empty line.
    head: String,
    /// Where the method and the target end in the request line.
    method_end: usize,
    target_end: usize,
    /// The `Transfer-Encoding: chunked` line nginx writes for a chunked request body, which
    /// becomes a length when the body is read whole.
    chunked: Option<std::ops::Range<usize>>,
}

impl UpstreamRequest {
    /// Starts a request with its line; headers follow with [`UpstreamRequest::header`].
    fn start(method: &str, target: impl FnOnce(&mut String), version: &str) -> UpstreamRequest {
        let mut head = String::with_capacity(256);
        head.push_str(method);
        let method_end = head.len();
        head.push(' ');
        target(&mut head);
        let target_end = head.len();
        head.push(' ');
        head.push_str(version);
        head.push_str("\r\n");
        UpstreamRequest {
            head,
            method_end,
            target_end,
            chunked: None,
        }
    }

    /// One header line, its value written by `value`; a line whose value is empty is left
    /// out, as nginx leaves it.
    fn header(&mut self, name: &str, value: impl FnOnce(&mut String)) {
        let start = self.head.len();
        self.head.push_str(name);
        self.head.push_str(": ");
        let at = self.head.len();
        value(&mut self.head);
        if self.head.len() == at {
            self.head.truncate(start);
            return;
        }
        if self.chunked.is_none()
            && name.eq_ignore_ascii_case("transfer-encoding")
            && &self.head[at..] == "chunked"
        {
            self.chunked = Some(start..self.head.len() + 2);
        }
        self.head.push_str("\r\n");
    }

    /// A client's header line, passed on as it came (an empty value too).
    fn pass(&mut self, name: &str, value: &str) {
        for part in [name, ": ", value, "\r\n"] {
            self.head.push_str(part);
        }
    }

    fn finish(&mut self) {
        self.head.push_str("\r\n");
    }

    pub fn method(&self) -> &str {
        &self.head[..self.method_end]
    }

    pub fn target(&self) -> &str {
        &self.head[self.method_end + 1..self.target_end]
    }

    pub fn version(&self) -> &str {
        let line = &self.head[..self.head.find("\r\n").unwrap_or(self.head.len())];
        &line[(self.target_end + 1).min(line.len())..]
    }

    /// The header lines, split as the upstream reads them.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        let lines = self.head.find("\r\n").map_or("", |i| &self.head[i + 2..]);
        lines
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_once(": ").unwrap_or((l, "")))
    }

    /// The whole head, ready to send.
    pub fn wire(&self) -> &[u8] {
        self.head.as_bytes()
    }

    /// Where the `Transfer-Encoding: chunked` line is in [`UpstreamRequest::wire`], if any.
    pub fn chunked_line(&self) -> Option<std::ops::Range<usize>> {
        self.chunked.clone()
    }
}

/// As `portico inspect --json` shows it: method, target, version and the header pairs.
impl Serialize for UpstreamRequest {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let headers: Vec<(&str, &str)> = self.headers().collect();
        let mut st = ser.serialize_struct("UpstreamRequest", 4)?;
        st.serialize_field("method", self.method())?;
        st.serialize_field("target", self.target())?;
        st.serialize_field("version", self.version())?;
        st.serialize_field("headers", &headers)?;
        st.end()
    }
}

/// What happens to the request.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Outcome {
    /// An answer of Portico's own: `return`, a redirect, an error page.
    Return {
        status: u16,
        headers: Vec<(String, String)>,
        body: Option<String>,
    },
    Proxy {
        upstream: ProxyTo,
        #[serde(skip)]
        pass: Arc<ProxyPass>,
        /// `proxy_redirect` rules, resolved for this request.
        #[serde(skip)]
        redirects: Arc<[Redirect]>,
        /// The host and port when the upstream is not a known group (variables in the URL).
        url: Option<String>,
        /// The evaluated key of the group's `hash`, when it balances by one.
        #[serde(skip_serializing_if = "Option::is_none")]
        hash_key: Option<String>,
        /// `proxy_cookie_domain` and `proxy_cookie_path`, resolved for this request.
        #[serde(skip)]
        cookies: Arc<CookieRules>,
        request: UpstreamRequest,
    },
    /// A file under `root`/`alias`.
    File { path: String },
    /// A directory's listing (`autoindex`): the directory's path, ending in `/`.
    Listing { path: String },
}

/// `proxy_cookie_domain` and `proxy_cookie_path` with their variables evaluated.
#[derive(Clone, Debug, Default)]
pub struct CookieRules {
    pub domain: Vec<Redirect>,
    pub path: Vec<Redirect>,
}

impl CookieRules {
    pub fn is_empty(&self) -> bool {
        self.domain.is_empty() && self.path.is_empty()
    }

    /// nginx's ngx_http_proxy_rewrite_cookie: the `Domain=` and `Path=` attributes of a
    /// Set-Cookie value rewritten by the first rule that matches each.
    pub fn rewrite(&self, value: &str) -> String {
        let mut parts: Vec<String> = value.split(';').map(str::to_string).collect();
        for part in parts.iter_mut().skip(1) {
            let trimmed = part.trim_start();
            let lead = part.len() - trimmed.len();
            let Some((name, v)) = trimmed.split_once('=') else {
                continue;
            };
            let new = if name.eq_ignore_ascii_case("domain") {
                let (dot, bare) = match v.strip_prefix('.') {
                    Some(b) => (".", b),
                    None => ("", v),
                };
                self.domain.iter().find_map(|r| match r {
                    Redirect::Prefix { from, to } => bare
                        .eq_ignore_ascii_case(from)
                        .then(|| format!("{dot}{to}")),
                    Redirect::Regex { .. } => Redirect::apply(std::slice::from_ref(r), v),
                })
            } else if name.eq_ignore_ascii_case("path") {
                Redirect::apply(&self.path, v)
            } else {
                None
            };
            if let Some(new) = new {
                *part = format!("{}{name}={new}", &part[..lead]);
            }
        }
        parts.join(";")
    }
}

/// Where a proxied request goes: a group of the plan (an `upstream` block, or the implicit
/// group of a URL without variables), or the authority of a URL with variables that names
/// no block, resolved when the request is sent.
#[derive(Clone, Debug)]
pub enum ProxyTo {
    Group(Arc<super::Upstream>),
    Direct(String),
}

impl ProxyTo {
    /// The group's name, or the authority.
    pub fn name(&self) -> &str {
        match self {
            ProxyTo::Group(group) => &group.name,
            ProxyTo::Direct(authority) => authority,
        }
    }

    pub fn group(&self) -> Option<&Arc<super::Upstream>> {
        match self {
            ProxyTo::Group(group) => Some(group),
            ProxyTo::Direct(_) => None,
        }
    }
}

impl std::fmt::Display for ProxyTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ProxyTo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// `$proxy_host` and `$proxy_port` of a proxied request.
enum ProxyHost {
    /// Those of a URL without variables, in the plan.
    Pass(Arc<ProxyPass>),
    /// Those of a URL with variables, as evaluated.
    Url(String, u16),
}

/// A `proxy_redirect` rule with its variables evaluated.
#[derive(Clone, Debug)]
pub enum Redirect {
    /// A `Location` starting with `from` has it replaced by `to`.
    Prefix { from: String, to: String },
    /// A `Location` matching `regex` becomes `to`, with the match's captures.
    Regex {
        regex: super::regex::Regex,
        to: Template,
    },
}

impl Redirect {
    /// Rewrites `value` by the first rule that applies.
    pub fn apply(rules: &[Redirect], value: &str) -> Option<String> {
        rules.iter().find_map(|r| match r {
            Redirect::Prefix { from, to } => value
                .strip_prefix(from.as_str())
                .map(|rest| format!("{to}{rest}")),
            Redirect::Regex { regex, to } => regex.captures(value).map(|c| {
                struct Caps(super::regex::Captures);
                impl Resolve for Caps {
                    fn var(&self, v: &Var) -> Option<Cow<'_, str>> {
                        match v {
                            Var::Named(n) => self.0.named(n).map(Cow::Borrowed),
                            _ => None,
                        }
                    }
                    fn capture(&self, n: usize) -> Cow<'_, str> {
                        Cow::Borrowed(self.0.group(n))
                    }
                }
                to.eval(&Caps(c))
            }),
        })
    }
}

/// The decision for one request.
#[derive(Debug)]
pub struct Decision {
    pub server: usize,
    pub location: Option<Arc<Location>>,
    /// The configuration the request ends in (a location's, or an `if`'s inside it).
    pub conf: Arc<LocConf>,
    pub outcome: Outcome,
    /// `$uri` and `$args` after rewrites.
    pub uri: String,
    pub args: String,
    /// What was done, step by step, for `portico route`.
    pub trace: Vec<String>,
    /// `add_header` of the final configuration, evaluated: (name, value, always).
    pub add_headers: Vec<(String, String, bool)>,
    /// `expires` of the final configuration with its value evaluated; `None` when off.
    pub expires: Option<Vec<String>>,
    /// The client's address as `set_real_ip_from`/`real_ip_header` made it (port 0 when the
    /// header named none); `None` when the connection's own address stands.
    pub remote: Option<SocketAddr>,
    /// `add_header`s whose values need the upstream's answer (`$upstream_addr`): evaluated
    /// by [`late_headers`] when the answer is sent.
    pub late_headers: Vec<(String, Template, bool)>,
    /// `scheme://host[:port]` that a relative redirect is made absolute with (nginx's
    /// `absolute_redirect`); empty when it is off. Written out only by an answer that
    /// redirects.
    pub base: Base,
    /// The status the answer must carry whatever its handler says (`error_page` without
    /// `=`, or with `=code`), for files and proxied answers.
    pub status: Option<u16>,
    /// The request was redirected internally (an `error_page`, `try_files`, `index`): a
    /// further `error_page` applies only with `recursive_error_pages`.
    pub internal: bool,
}

/// How many times `last` and internal redirects may restart the search (nginx: 10).
const MAX_CYCLES: usize = 10;

/// Routes `req` through `plan`. `files` answers `try_files` and `-f` questions; the runtime
/// passes the real file system.
pub fn route(plan: &Plan, req: &Request, files: &dyn FileCheck) -> Decision {
    let socket = find_socket(plan, &req.socket);
    let Some(socket) = socket else {
        return bare(plan, 0, req, 400, "no server listens on the address");
    };
    // The host: an absolute-form target's authority, else the Host header.
    let (authority, path_target) = split_absolute(&req.target);
    let host_raw = authority.or_else(|| header(req.headers, "host"));
    let host = match host_raw {
        Some(h) => match validate_host(h) {
            Some(h) => h,
            None => {
                // A 400 of the default server, through its error_page.
                let server = &plan.servers[socket.default];
                let mut st = State::new(plan, req, server, Cow::Borrowed(""));
                if st.explain {
                    st.trace.push("invalid host: 400".into());
                }
                st.conf = &server.conf;
                if let Ok(u) = uri::parse(&path_target, server.conf.settings.merge_slashes()) {
                    st.uri = u.path;
                    st.args = u.args;
                }
                st.headers = filter_headers(&req.headers, &server.conf);
                let outcome = st.status(400, None);
                let mut cycles = 0;
                return st.serve_result(outcome, files, &mut cycles);
            }
        },
        None => Cow::Borrowed(""),
    };
    let (server_index, captures) = match socket.names.find(&host) {
        Some(f) => (f.server, f.captures),
        None => (socket.default, None),
    };
    let server = &plan.servers[server_index];
    let mut st = State::new(plan, req, server, host);
    if st.explain {
        st.trace.push(format!(
            "server {:?} at {}:{} ({})",
            server.name(),
            server.place.file,
            server.place.line,
            if captures.is_some() || socket.names.find(&st.host).is_some() {
                "by name"
            } else {
                "default server"
            }
        ));
    }
    if let Some(c) = captures {
        st.set_captures(c);
    }
    let parsed = match uri::parse(&path_target, server.conf.settings.merge_slashes()) {
        Ok(u) => u,
        Err(_) => return st.finish_error(400),
    };
    st.uri = parsed.path;
    st.args = parsed.args;
    st.quoted = parsed.quoted;
    st.plus = parsed.plus;
    st.unparsed = path_target;
    st.headers = filter_headers(&req.headers, &server.conf);

    // Post-read phase (realip), then the server rewrite phase.
    st.conf = &server.conf;
    st.realip();
    match st.run(&server.conf.ops.iter().collect::<Vec<_>>(), files) {
        Flow::Done(outcome) => return st.finish(outcome),
        Flow::Next | Flow::Last | Flow::Break => {}
    }
    st.find_and_serve(files)
}

/// `error_page` for an error the runtime met while serving `decision` (an upstream that
/// failed, a file that is missing, `proxy_intercept_errors`): the decision for the page, or
/// `None` when no page applies (nginx then sends its own). `known` gives variables only the
/// runtime knows by then (`$upstream_addr`, `$upstream_status`).
pub fn error_page(
    plan: &Plan,
    req: &Request,
    decision: &Decision,
    status: u16,
    files: &dyn FileCheck,
    known: impl FnOnce() -> Vec<(String, String)>,
) -> Option<Decision> {
    let server = plan.servers.get(decision.server)?;
    let settings = &decision.conf.settings;
    if !settings
        .error_page()
        .iter()
        .any(|p| p.codes.contains(&status))
    {
        return None;
    }
    if decision.internal && !settings.recursive_error_pages() {
        return None;
    }
    let mut st = resume(plan, req, server, decision, known());
    let outcome = st.status(status, None);
    let mut cycles = 0;
    Some(st.serve_result(outcome, files, &mut cycles))
}

/// `X-Accel-Redirect` from the upstream that `decision` proxied to: an internal redirect to
/// `target` (a URI, through the server's rewrites again, or a `@named` location), as nginx
/// makes it. `req` is the request as it goes on (GET unless HEAD).
pub fn accel_redirect(
    plan: &Plan,
    req: &Request,
    decision: &Decision,
    target: &str,
    files: &dyn FileCheck,
    known: Vec<(String, String)>,
) -> Option<Decision> {
    let server = plan.servers.get(decision.server)?;
    let mut st = resume(plan, req, server, decision, known);
    st.internal = true;
    st.valid_unparsed = false;
    let mut cycles = 0;
    if target.starts_with('@') {
        let Some(loc) = server.named.get(target) else {
            tracing::error!("could not find named location \"{target}\"");
            let o = st.status(500, None);
            return Some(st.serve_result(o, files, &mut cycles));
        };
        st.location = Some(loc);
        st.conf = &loc.conf;
        let ops: Vec<&Op> = loc.conf.ops.iter().collect();
        return Some(match st.run(&ops, files) {
            Flow::Done(o) => st.serve_result(o, files, &mut cycles),
            Flow::Last => st.find_and_serve(files),
            _ if st.uri_changed => st.find_and_serve(files),
            _ => match st.handler(files) {
                Ok(o) => st.serve_result(o, files, &mut cycles),
                Err(Restart) => st.find_and_serve(files),
            },
        });
    }
    let Some((uri, args)) = uri::parse_unsafe(target) else {
        tracing::error!("unsafe URI \"{target}\" was detected");
        let o = st.status(404, None);
        return Some(st.serve_result(o, files, &mut cycles));
    };
    st.uri = uri;
    st.args = args;
    // An internal redirect starts again at the server's rewrite phase.
    st.conf = &server.conf;
    st.location = None;
    match st.run(&server.conf.ops.iter().collect::<Vec<_>>(), files) {
        Flow::Done(o) => return Some(st.serve_result(o, files, &mut cycles)),
        Flow::Next | Flow::Last | Flow::Break => {}
    }
    Some(st.find_and_serve(files))
}

/// The routing state where `decision` left it, with the variables only the runtime knows.
fn resume<'p>(
    plan: &'p Plan,
    req: &'p Request<'p>,
    server: &'p Server,
    decision: &'p Decision,
    known: Vec<(String, String)>,
) -> State<'p> {
    let (authority, _) = split_absolute(&req.target);
    let host = authority
        .or_else(|| header(&req.headers, "host"))
        .and_then(validate_host)
        .unwrap_or_default();
    let mut st = State::new(plan, req, server, host);
    st.conf = &decision.conf;
    st.location = decision.location.as_ref();
    st.uri = decision.uri.clone();
    st.args = decision.args.clone();
    st.internal = decision.internal;
    st.headers = filter_headers(&req.headers, &server.conf);
    st.trace = decision.trace.clone();
    st.vars.extend(known);
    if let Some(remote) = decision.remote {
        st.remote = remote;
        st.realip = true;
    }
    st
}

/// The `add_header`s that needed the upstream's answer, evaluated now that `known` holds it
/// (`upstream_addr`, `upstream_status`, `upstream_http_NAME`, ...): (name, value, always).
pub fn late_headers(
    plan: &Plan,
    req: &Request,
    decision: &Decision,
    known: Vec<(String, String)>,
) -> Vec<(String, String, bool)> {
    let Some(server) = plan.servers.get(decision.server) else {
        return Vec::new();
    };
    let st = resume(plan, req, server, decision, known);
    decision
        .late_headers
        .iter()
        .map(|(n, t, always)| (n.clone(), st.eval(t), *always))
        .filter(|(_, v, _)| !v.is_empty())
        .collect()
}

/// Answers the file questions of `try_files` and `if (-f ...)`.
pub trait FileCheck {
    fn is_file(&self, path: &str) -> bool;
    fn is_dir(&self, path: &str) -> bool;
    fn exists(&self, path: &str) -> bool {
        self.is_file(path) || self.is_dir(path)
    }
    fn is_executable(&self, path: &str) -> bool {
        self.is_file(path)
    }
    /// Whether routing itself redirects a directory named without its slash. The server
    /// leaves it to serving, which learns it from the open file (one stat less per request,
    /// as nginx's static module finds it).
    fn redirects_dirs(&self) -> bool {
        true
    }
}

/// The status of an answer that went through `error_page`: the original error's, unless the
/// page said `=` (the page's own) or `=code`, or the page's answer is a redirect. A redirect
/// being replaced keeps its `Location`.
fn error_status(
    mut d: Decision,
    original: u16,
    first: &Outcome,
    overwrite: Option<Option<u16>>,
) -> Decision {
    let forced = match overwrite {
        Some(Some(code)) => Some(code),
        Some(None) => None,
        None => Some(original),
    };
    let Some(code) = forced else {
        return d;
    };
    match &mut d.outcome {
        Outcome::Return {
            status,
            headers,
            body,
        } => {
            let is_redirect = matches!(*status, 301 | 302 | 303 | 307 | 308)
                && headers.iter().any(|(n, _)| n == "Location");
            if is_redirect && overwrite.is_none() {
                return d;
            }
            // The page's own error (a special response) replaces the first one.
            let own_error =
                *status >= 400 && body.as_deref().is_none_or(|b| b.starts_with("<html>"));
            if own_error && overwrite.is_none() {
                return d;
            }
            if body.as_deref().is_some_and(|b| b.starts_with("<html>")) {
                *body = None;
            }
            *status = code;
            if let Outcome::Return {
                headers: first_headers,
                ..
            } = first
            {
                for h in first_headers.iter().filter(|(n, _)| n == "Location") {
                    if !headers.iter().any(|(n, _)| n == "Location") {
                        headers.push(h.clone());
                    }
                }
            }
        }
        _ => d.status = Some(code),
    }
    d
}

/// The real file system.
pub struct RealFiles;

impl FileCheck for RealFiles {
    fn is_file(&self, path: &str) -> bool {
        std::path::Path::new(path).is_file()
    }
    fn is_dir(&self, path: &str) -> bool {
        std::path::Path::new(path).is_dir()
    }
    fn is_executable(&self, path: &str) -> bool {
        owner_executable(path)
    }
}

/// nginx's `ngx_is_exec`: the owner's execute bit (files and directories alike).
fn owner_executable(path: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o100 != 0)
}

/// The real file system as the server asks it: directories are found when served.
pub struct ServingFiles;

impl FileCheck for ServingFiles {
    fn is_file(&self, path: &str) -> bool {
        RealFiles.is_file(path)
    }
    fn is_dir(&self, path: &str) -> bool {
        RealFiles.is_dir(path)
    }
    fn is_executable(&self, path: &str) -> bool {
        RealFiles.is_executable(path)
    }
    fn redirects_dirs(&self) -> bool {
        false
    }
}

fn bare(plan: &Plan, server: usize, req: &Request, status: u16, why: &str) -> Decision {
    let conf = plan
        .servers
        .get(server)
        .map_or_else(|| plan.http.clone(), |s| s.conf.clone());
    let tokens = conf.settings.server_tokens();
    let _ = req;
    Decision {
        internal: false,
        server,
        location: None,
        conf,
        outcome: Outcome::Return {
            status,
            headers: Vec::new(),
            body: pages::default_page(status, tokens),
        },
        uri: String::new(),
        args: String::new(),
        trace: vec![why.to_string()],
        add_headers: Vec::new(),
        late_headers: Vec::new(),
        expires: None,
        remote: None,
        base: Base::default(),
        status: None,
    }
}

/// What a relative `Location` is prefixed with: `scheme://host[:port]`, or nothing when
/// `absolute_redirect` is off (`Display` writes it).
#[derive(Clone, Debug, Default)]
pub struct Base {
    /// `None`: absolute_redirect off.
    pub scheme: Option<&'static str>,
    /// In place when short (most are): made for every request, used by few.
    pub host: crate::plan::header::Text,
    pub port: Option<u16>,
}

impl std::fmt::Display for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(scheme) = self.scheme else {
            return Ok(());
        };
        write!(f, "{scheme}://{}", self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// The socket a request arrived on: the exact address, else the wildcard one of that port.
pub fn find_socket<'p>(plan: &'p Plan, local: &ListenAddr) -> Option<&'p Socket> {
    if let Some(s) = plan.sockets.iter().find(|s| s.addr == *local) {
        return Some(s);
    }
    if let ListenAddr::Tcp(a) = local {
        return plan.sockets.iter().find(|s| match &s.addr {
            ListenAddr::Tcp(b) => {
                b.port() == a.port() && b.ip().is_unspecified() && b.is_ipv4() == a.is_ipv4()
            }
            _ => false,
        });
    }
    None
}

/// `http://host/path` → (Some(host), "/path"); `http://host?a` → (Some(host), "/?a"); an
/// origin-form target is returned as is.
pub fn split_absolute(target: &str) -> (Option<&str>, Cow<'_, str>) {
    let scheme = |s: &str| {
        target.len() >= s.len() && target.as_bytes()[..s.len()].eq_ignore_ascii_case(s.as_bytes())
    };
    let rest = if target.starts_with('/') {
        return (None, Cow::Borrowed(target));
    } else if scheme("http://") {
        &target[7..]
    } else if scheme("https://") {
        &target[8..]
    } else {
        return (None, Cow::Borrowed(target));
    };
    match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (Some(&rest[..i]), Cow::Borrowed(&rest[i..])),
        Some(i) => (Some(&rest[..i]), Cow::Owned(format!("/{}", &rest[i..]))),
        None => (Some(rest), Cow::Borrowed("/")),
    }
}

/// The authority of an absolute-form target, as nginx's request-line parser accepts it:
/// a name of letters, digits, dots and dashes (or a bracketed IP literal), then an optional
/// port of digits.
pub fn valid_authority(authority: &str) -> bool {
    let (host, port) = if let Some(lit) = authority.strip_prefix('[') {
        let Some((inside, after)) = lit.split_once(']') else {
            return false;
        };
        let ok = inside
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":.-_~!$&'()*+,;=".contains(&b));
        if !ok {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(p) => ("x", p),
                None => return false,
            },
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, ""),
        }
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.bytes().all(|b| b.is_ascii_digit())
}

fn header<'r>(headers: &'r [Line], name: &str) -> Option<&'r str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// nginx ignores header lines with invalid names (with `_` unless `underscores_in_headers`).
/// The header lines nginx keeps (`ignore_invalid_headers`, `underscores_in_headers`):
/// borrowed when it keeps them all, as it nearly always does.
fn filter_headers<'h>(headers: &'h [Line], conf: &LocConf) -> Cow<'h, [Line]> {
    let underscores = conf.settings.underscores_in_headers();
    let ignore = conf.settings.ignore_invalid_headers();
    // A byte's class, looked up: letters, digits and `-` are name bytes, `_` is one with
    // underscores_in_headers.
    const NAME: u8 = 1;
    const UNDERSCORE: u8 = 2;
    const CLASS: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            if c.is_ascii_alphanumeric() || c == b'-' {
                t[b] = NAME;
            } else if c == b'_' {
                t[b] = UNDERSCORE;
            }
            b += 1;
        }
        t
    };
    let allowed = if underscores { NAME | UNDERSCORE } else { NAME };
    let valid = |(n, _): &&Line| !ignore || n.bytes().all(|b| CLASS[b as usize] & allowed != 0);
    if headers.iter().all(|h| valid(&h)) {
        return Cow::Borrowed(headers);
    }
    Cow::Owned(headers.iter().filter(valid).cloned().collect())
}

enum Flow {
    /// The program ran to its end.
    Next,
    /// `rewrite ... last` (or a changed URI at the end of a location's program).
    Last,
    /// `break` or `rewrite ... break`.
    Break,
    Done(Outcome),
}

struct State<'p> {
    plan: &'p Plan,
    req: &'p Request<'p>,
    server: &'p Server,
    host: Cow<'p, str>,
    uri: String,
    args: String,
    quoted: bool,
    plus: bool,
    unparsed: Cow<'p, str>,
    headers: Cow<'p, [Line]>,
    captures: Option<Captures>,
    vars: HashMap<String, String>,
    /// The configuration in force: a reference into the plan, cloned once into the
    /// decision (a clone per step was an atomic pair each: 6% of a 404's user time).
    conf: &'p Arc<LocConf>,
    location: Option<&'p Arc<Location>>,
    internal: bool,
    valid_unparsed: bool,
    valid_location: bool,
    uri_changed: bool,
    /// try_files in a regex location with `alias`: the file is the alias followed by the
    /// URI (nginx's `add_uri_to_alias`).
    add_uri_to_alias: bool,
    proxy: Option<ProxyHost>,
    trace: Vec<String>,
    /// Whether to write the trace (`portico route`); serving skips the work.
    explain: bool,
    /// The client's address (`$remote_addr`), which realip may replace.
    remote: SocketAddr,
    realip: bool,
}

impl<'p> State<'p> {
    fn new(plan: &'p Plan, req: &'p Request<'p>, server: &'p Server, host: Cow<'p, str>) -> Self {
        State {
            plan,
            req,
            server,
            host,
            uri: String::new(),
            args: String::new(),
            quoted: false,
            plus: false,
            unparsed: Cow::Borrowed(""),
            headers: Cow::Borrowed(&[]),
            captures: None,
            vars: HashMap::new(),
            conf: &server.conf,
            location: None,
            internal: false,
            valid_unparsed: true,
            valid_location: true,
            uri_changed: false,
            add_uri_to_alias: false,
            proxy: None,
            trace: Vec::new(),
            explain: req.explain,
            remote: req.remote,
            realip: false,
        }
    }

    /// nginx's realip handler (post-read with the server's configuration, pre-access with the
    /// location's): when the client is a trusted proxy, its header names the client. Once
    /// applied it holds for the rest of the request, internal redirects included.
    fn realip(&mut self) {
        if self.realip {
            return;
        }
        let s = &self.conf.settings;
        let from = s.real_ip_from();
        if from.is_empty() {
            return;
        }
        let recursive = s.real_ip_recursive();
        let trusted = |a: SocketAddr| {
            let client = match (&self.req.local, a == self.req.remote) {
                (ListenAddr::Unix(_), true) => None,
                _ => Some(a.ip()),
            };
            from.iter().any(|r| r.matches(client))
        };
        let values: Vec<&str> = match s.real_ip_header() {
            RealIpHeader::XRealIp => header(&self.headers, "x-real-ip").into_iter().collect(),
            RealIpHeader::XForwardedFor => self
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
                .map(|(_, v)| v.as_str())
                .collect(),
            RealIpHeader::ProxyProtocol => Vec::new(),
            RealIpHeader::Other(name) => header(&self.headers, &name).into_iter().collect(),
        };
        if values.is_empty() {
            return;
        }
        // ngx_http_get_forwarded_addr: the headers from the last, each from its end.
        let mut addr = self.req.remote;
        let mut found = false;
        'headers: for value in values.iter().rev() {
            let mut rest = value.trim_end_matches([' ', ',']);
            loop {
                if !trusted(addr) {
                    break 'headers;
                }
                let start = rest.rfind([' ', ',']).map_or(0, |i| i + 1);
                let Some(next) = parse_addr_port(&rest[start..]) else {
                    break 'headers;
                };
                addr = next;
                found = true;
                rest = rest[..start].trim_end_matches([' ', ',']);
                if !recursive || rest.is_empty() {
                    break;
                }
            }
            if !recursive {
                break;
            }
        }
        if found {
            if self.explain {
                self.trace.push(format!("realip: client {}", addr.ip()));
            }
            self.remote = addr;
            self.realip = true;
        }
    }

    /// Records a regex match: named groups become variables, and the numbered ones replace
    /// the previous match's, even when this regex has none (nginx measured: a nested
    /// `location ~ /x` that matches leaves `$2` of the outer one empty).
    fn set_captures(&mut self, c: Captures) {
        for (name, _) in &c.names {
            let v = c.named(name).unwrap_or("").to_string();
            self.vars.insert(name.to_ascii_lowercase(), v);
        }
        self.captures = Some(c);
    }

    /// The decision, from what the request came to. The state is spent: its URI, args,
    /// trace and location move into the decision (by `&mut`: a `State` moved by value into
    /// each of these steps was a memcpy of it per request).
    fn finish(&mut self, outcome: Outcome) -> Decision {
        let mut add_headers = Vec::new();
        let mut late_headers = Vec::new();
        for h in self.conf.settings.add_header().iter() {
            if h.value.uses_upstream() {
                late_headers.push((h.name.clone(), h.value.clone(), h.always));
                continue;
            }
            let v = self.eval(&h.value);
            // An empty value adds nothing, but clears an ETag or Last-Modified.
            let clears =
                h.name.eq_ignore_ascii_case("etag") || h.name.eq_ignore_ascii_case("last-modified");
            if !v.is_empty() || clears {
                add_headers.push((h.name.clone(), v, h.always));
            }
        }
        let base = self.base();
        let expires = self.conf.settings.expires.as_ref().and_then(|words| {
            if words.first().is_some_and(|w| w == "off") {
                return None;
            }
            let mut words = words.clone();
            if let Some(Some(t)) = &self.conf.settings.expires_value {
                if let Some(last) = words.last_mut() {
                    *last = self.eval(t);
                }
            }
            Some(words)
        });
        Decision {
            add_headers,
            late_headers,
            expires,
            remote: self.realip.then_some(self.remote),
            base,
            status: None,
            internal: self.internal,
            server: self.server.index,
            location: self.location.cloned(),
            conf: self.conf.clone(),
            outcome,
            uri: std::mem::take(&mut self.uri),
            args: std::mem::take(&mut self.args),
            trace: std::mem::take(&mut self.trace),
        }
    }

    fn finish_error(&mut self, status: u16) -> Decision {
        let outcome = self.status(status, None);
        self.finish(outcome)
    }

    /// An answer with `status` and an optional text, as `return` and errors give it.
    fn status(&mut self, status: u16, text: Option<String>) -> Outcome {
        let tokens = self.conf.settings.server_tokens();
        let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
        let mut headers = Vec::new();
        let body = if redirect {
            if let Some(location) = text {
                headers.push(("Location".to_string(), self.absolute(&location)));
            }
            pages::default_page(status, tokens)
        } else if let Some(t) = text {
            Some(t)
        } else {
            pages::default_page(status, tokens)
        };
        Outcome::Return {
            status,
            headers,
            body,
        }
    }

    /// nginx makes a relative `Location` absolute (`absolute_redirect`).
    fn absolute(&self, location: &str) -> String {
        if !location.starts_with('/') || !self.conf.settings.absolute_redirect() {
            return location.to_string();
        }
        format!("{}{location}", self.base())
    }

    /// The prefix of [`absolute`](Self::absolute).
    fn base(&self) -> Base {
        let s = &self.conf.settings;
        if !s.absolute_redirect() {
            return Base::default();
        }
        use crate::plan::header::Text;
        let host = if s.server_name_in_redirect() {
            Text::copy(self.server.name())
        } else if !self.host.is_empty() {
            Text::copy(&self.host)
        } else {
            match &self.req.local {
                ListenAddr::Tcp(a) => Text::copy(&a.ip().to_string()),
                _ => Text::Static("localhost"),
            }
        };
        let port = self.req.local.port();
        let default = if self.req.https { 443 } else { 80 };
        Base {
            scheme: Some(if self.req.https { "https" } else { "http" }),
            host,
            port: (s.port_in_redirect() && port != default && port != 0).then_some(port),
        }
    }

    fn eval(&self, t: &Template) -> String {
        t.eval(self)
    }

    /// Runs a rewrite program (the server's, a location's, an `if`'s).
    fn run(&mut self, ops: &[&'p Op], files: &dyn FileCheck) -> Flow {
        for op in ops {
            match op {
                Op::Rewrite {
                    regex,
                    replacement,
                    flag,
                    place,
                } => {
                    let Some(c) = regex.captures(&self.uri) else {
                        continue;
                    };
                    self.set_captures(c);
                    let result = self.rewrite_result(replacement);
                    if self.explain {
                        self.trace.push(format!(
                            "rewrite at {}:{}: {} -> {}",
                            place.file, place.line, self.uri, result
                        ));
                    }
                    let redirect = result.starts_with("http://")
                        || result.starts_with("https://")
                        || replacement.source.starts_with("$scheme")
                        || matches!(flag, RewriteFlag::Redirect | RewriteFlag::Permanent);
                    // A trailing `?` drops the request's arguments; arguments in the
                    // replacement come first, the request's after them.
                    let (body, keep_args) = match result.strip_suffix('?') {
                        Some(b) => (b, false),
                        None => (result.as_str(), true),
                    };
                    // A redirect's target is unescaped as nginx does it (NGX_UNESCAPE_REDIRECT).
                    let unescaped;
                    let body = if redirect {
                        unescaped = uri::unescape_redirect(body);
                        unescaped.as_str()
                    } else {
                        body
                    };
                    let (new_uri, new_args) = match body.split_once('?') {
                        Some((u, a)) => (u.to_string(), Some(a.to_string())),
                        None => (body.to_string(), None),
                    };
                    let args = match (new_args, keep_args) {
                        (Some(n), true) if !self.args.is_empty() => format!("{n}&{}", self.args),
                        (Some(n), _) => n,
                        (None, true) => self.args.clone(),
                        (None, false) => String::new(),
                    };
                    if redirect {
                        let status = if *flag == RewriteFlag::Permanent {
                            301
                        } else {
                            302
                        };
                        let location = if args.is_empty() {
                            new_uri
                        } else {
                            format!("{new_uri}?{args}")
                        };
                        return Flow::Done(self.status(status, Some(location)));
                    }
                    self.uri = new_uri;
                    self.args = args;
                    self.valid_unparsed = false;
                    match flag {
                        RewriteFlag::Last => {
                            self.uri_changed = true;
                            return Flow::Last;
                        }
                        RewriteFlag::Break => {
                            self.valid_location = false;
                            self.uri_changed = false;
                            return Flow::Break;
                        }
                        _ => self.uri_changed = true,
                    }
                }
                Op::Return { code, text, place } => {
                    if self.explain {
                        self.trace
                            .push(format!("return at {}:{}", place.file, place.line));
                    }
                    let text = text.as_ref().map(|t| self.eval(t));
                    return Flow::Done(self.status(*code, text));
                }
                Op::Set { var, value } => {
                    let mut v = self.eval(value);
                    if var == "limit_rate" {
                        // A size variable: kept as its bytes; an invalid size changes nothing.
                        match crate::config::validate::parse_size(&v, false) {
                            Some(n) => v = n.to_string(),
                            None => {
                                tracing::error!("invalid size \"{v}\"");
                                continue;
                            }
                        }
                    }
                    self.vars.insert(var.clone(), v);
                }
                Op::Break => {
                    // `break` after a changed URI: the location's name no longer applies
                    // to it (nginx's valid_location), and the search is not restarted.
                    if self.uri_changed {
                        self.valid_location = false;
                        self.uri_changed = false;
                    }
                    return Flow::Break;
                }
                Op::If {
                    cond,
                    ops,
                    conf,
                    place,
                } => {
                    if self.test(cond, files) {
                        if self.explain {
                            self.trace
                                .push(format!("if at {}:{} is true", place.file, place.line));
                        }
                        self.conf = conf;
                        let inner: Vec<&Op> = ops.iter().collect();
                        match self.run(&inner, files) {
                            Flow::Next => {}
                            other => return other,
                        }
                    }
                }
            }
        }
        Flow::Next
    }

    /// A rewrite's replacement: captures copied into the query part are escaped when the
    /// request's URI was (nginx re-escapes what it decoded).
    fn rewrite_result(&self, t: &Template) -> String {
        use super::template::Part;
        let mut out = String::new();
        let mut in_args = false;
        for part in &t.parts {
            match part {
                Part::Lit(l) => {
                    in_args |= l.contains('?');
                    out.push_str(l);
                }
                Part::Var(v) => {
                    if let Some(value) = self.var(v) {
                        out.push_str(&value);
                    }
                }
                Part::Capture(n) => {
                    let c = self.capture(*n);
                    if in_args && (self.quoted || self.plus) {
                        out.push_str(&uri::escape(&c, Escape::Args));
                    } else {
                        out.push_str(&c);
                    }
                }
            }
        }
        out
    }

    fn test(&mut self, cond: &Cond, files: &dyn FileCheck) -> bool {
        match cond {
            Cond::Value(t) => {
                let v = self.eval(t);
                !v.is_empty() && v != "0"
            }
            Cond::Eq {
                left,
                right,
                negate,
            } => (self.eval(left) == self.eval(right)) != *negate,
            Cond::Regex {
                left,
                regex,
                negate,
            } => {
                let v = self.eval(left);
                match regex.captures(&v) {
                    Some(c) => {
                        self.set_captures(c);
                        !negate
                    }
                    None => {
                        // A failed `if` regex clears the captures (nginx measured).
                        self.captures = None;
                        *negate
                    }
                }
            }
            Cond::File { test, path, negate } => {
                let p = self.eval(path);
                let r = match test {
                    'f' => files.is_file(&p),
                    'd' => files.is_dir(&p),
                    'x' => files.is_executable(&p),
                    _ => files.exists(&p),
                };
                r != *negate
            }
        }
    }

    fn find_and_serve(&mut self, files: &dyn FileCheck) -> Decision {
        let mut cycles = 0;
        loop {
            cycles += 1;
            if cycles > MAX_CYCLES + 1 {
                if self.explain {
                    self.trace
                        .push("rewrite or internal redirection cycle".into());
                }
                return self.finish_error(500);
            }
            self.uri_changed = false;
            self.captures = self.captures.take();
            match self.server.locations.find(&self.uri) {
                Match::Redirect(loc) => {
                    self.location = Some(loc);
                    self.conf = &loc.conf;
                    let mut target = format!("{}/", uri::escape(&self.uri, Escape::Uri));
                    if !self.args.is_empty() {
                        target = format!("{target}?{}", self.args);
                    }
                    if self.explain {
                        self.trace.push(
                            "the URI is a proxied location's name without its slash: 301".into(),
                        );
                    }
                    let outcome = self.status(301, Some(target));
                    return self.finish(outcome);
                }
                Match::Found { location, captures } => {
                    for c in captures {
                        self.set_captures(c);
                    }
                    if self.explain {
                        self.trace.push(format!(
                            "location {}{}{} at {}:{}",
                            location.modifier(),
                            if location.modifier().is_empty() {
                                ""
                            } else {
                                " "
                            },
                            location.name(),
                            location.place.file,
                            location.place.line
                        ));
                    }
                    self.conf = &location.conf;
                    self.location = Some(location);
                }
                Match::None => {
                    if self.explain {
                        self.trace
                            .push("no location matches: the server's own configuration".into());
                    }
                    self.conf = &self.server.conf;
                    self.location = None;
                }
            }
            // limit_except: other methods take the block's configuration.
            let conf = self.conf;
            if let Some((methods, le)) = &conf.limit_except {
                if !methods.iter().any(|m| *m == self.req.method) {
                    if self.explain {
                        self.trace.push(format!(
                            "limit_except: {} is not among {}",
                            self.req.method,
                            methods.join(" ")
                        ));
                    }
                    self.conf = le;
                }
            }
            if self.conf.internal && !self.internal {
                if self.explain {
                    self.trace
                        .push("internal location, external request: 404".into());
                }
                return self.finish_error(404);
            }
            let conf = self.conf;
            let ops: Vec<&Op> = conf.ops.iter().collect();
            match self.run(&ops, files) {
                Flow::Done(o) => return self.serve_result(o, files, &mut cycles),
                Flow::Last => continue,
                Flow::Next if self.uri_changed => continue,
                Flow::Next | Flow::Break => {}
            }
            self.realip();
            if !self.access_allowed() {
                if self.explain {
                    self.trace.push("access: denied by allow/deny rules".into());
                }
                let o = self.status(403, None);
                return self.serve_result(o, files, &mut cycles);
            }
            match self.content(files) {
                Ok(o) => return self.serve_result(o, files, &mut cycles),
                Err(Restart) => continue,
            }
        }
    }

    /// `error_page` applies to answers with an error status.
    fn serve_result(
        &mut self,
        outcome: Outcome,
        files: &dyn FileCheck,
        cycles: &mut usize,
    ) -> Decision {
        let Outcome::Return { status, .. } = &outcome else {
            return self.finish(outcome);
        };
        let status = *status;
        // The location's conf changes below: the page is kept by its own handle.
        let conf = self.conf;
        let pages = conf.settings.error_page();
        let Some(page) = pages.iter().find(|p| p.codes.contains(&status)) else {
            return self.finish(outcome);
        };
        if self.internal && !self.conf.settings.recursive_error_pages() {
            return self.finish(outcome);
        }
        let target = self.eval(&page.uri);
        if self.explain {
            self.trace.push(format!("error_page {status} -> {target}"));
        }
        if let Some(name) = target.strip_prefix('@').map(|n| format!("@{n}")) {
            if let Some(loc) = self.server.named.get(&name) {
                self.internal = true;
                self.location = Some(loc);
                self.conf = &loc.conf;
                let ops: Vec<&Op> = loc.conf.ops.iter().collect();
                let overwrite = page.overwrite;
                let decision = match self.run(&ops, files) {
                    Flow::Done(o) => self.finish(o),
                    _ => match self.content(files) {
                        Ok(o) => self.finish(o),
                        Err(Restart) => self.find_and_serve(files),
                    },
                };
                return error_status(decision, status, &outcome, overwrite);
            }
            return self.finish(outcome);
        }
        if !target.starts_with('/') {
            // A URL: a redirect (302 unless `=code` says otherwise).
            let code = match page.overwrite {
                Some(Some(c)) if matches!(c, 301 | 302 | 303 | 307 | 308) => c,
                _ => 302,
            };
            let o = self.status(code, Some(target));
            return self.finish(o);
        }
        let (u, a) = target.split_once('?').unwrap_or((&target, ""));
        self.uri = u.to_string();
        self.args = a.to_string();
        self.internal = true;
        self.valid_unparsed = false;
        *cycles += 1;
        let overwrite = page.overwrite;
        let decision = self.find_and_serve(files);
        error_status(decision, status, &outcome, overwrite)
    }

    /// The content phase: try_files, proxy_pass, or files.
    fn content(&mut self, files: &dyn FileCheck) -> Result<Outcome, Restart> {
        let conf = self.conf;
        if let Some(list) = &conf.try_files {
            let (last, tries) = list
                .split_last()
                .expect("try_files has two arguments or more");
            let regex_alias = conf.settings.root().alias && conf.alias_name.is_none();
            for t in tries {
                // A name written with a trailing slash tests a directory, named without it
                // (nginx drops the slash when it reads the directive).
                let dir = t.source.ends_with('/') && t.source.len() > 1;
                let mut name = self.eval(t);
                if dir && name.ends_with('/') {
                    name.pop();
                }
                let path = if regex_alias {
                    let base = self.eval(&conf.settings.root().path);
                    format!("{base}{name}")
                } else {
                    self.map_path(&name)
                };
                let ok = if dir {
                    files.is_dir(&path)
                } else {
                    files.is_file(&path)
                };
                if self.explain {
                    self.trace.push(format!(
                        "try_files {name}: {path} {}",
                        if ok { "found" } else { "not found" }
                    ));
                }
                if ok {
                    // The location's own content handler serves the name found: the static
                    // module (an index for a directory), or proxy_pass if the location has it.
                    if regex_alias {
                        if !dir {
                            self.uri = name;
                            self.add_uri_to_alias = true;
                        }
                    } else {
                        self.uri = name;
                    }
                    return self.handler(files);
                }
            }
            let fallback = self.eval(last);
            if let Some(code) = fallback
                .strip_prefix('=')
                .and_then(|c| c.parse::<u16>().ok())
            {
                return Ok(self.status(code, None));
            }
            if fallback.starts_with('@') {
                let Some(loc) = self.server.named.get(&fallback) else {
                    return Ok(self.status(500, None));
                };
                if self.explain {
                    self.trace.push(format!("named location {fallback}"));
                }
                self.internal = true;
                self.location = Some(loc);
                self.conf = &loc.conf;
                let ops: Vec<&Op> = loc.conf.ops.iter().collect();
                return match self.run(&ops, files) {
                    Flow::Done(o) => Ok(o),
                    Flow::Last => Err(Restart),
                    _ if self.uri_changed => Err(Restart),
                    _ => self.handler(files),
                };
            }
            let (u, a) = fallback.split_once('?').unwrap_or((&fallback, ""));
            self.uri = u.to_string();
            if fallback.contains('?') {
                self.args = a.to_string();
            }
            self.internal = true;
            self.valid_unparsed = false;
            return Err(Restart);
        }
        self.handler(files)
    }

    fn handler(&mut self, files: &dyn FileCheck) -> Result<Outcome, Restart> {
        let conf = self.conf;
        if let Some(pass) = &conf.proxy {
            return Ok(self.proxy(pass));
        }
        if self.escapes_alias() {
            // `location /static { alias /srv/static/; }` and `/static../x`: nginx would
            // read /srv/x. Portico refuses what lies outside the alias.
            tracing::error!(
                "\"{}\" is outside the alias of location \"{}\"",
                self.uri,
                self.conf.location_name
            );
            if self.explain {
                self.trace.push("the path leaves the alias: 404".into());
            }
            return Ok(self.status(404, None));
        }
        // The static, index and autoindex modules take GET, HEAD and POST; the static module
        // refuses the others.
        let method = self.req.method;
        let readable = matches!(method, "GET" | "HEAD" | "POST");
        if self.uri.ends_with('/') {
            if readable {
                if let Some(found) = self.index(files) {
                    return found;
                }
                if conf.settings.autoindex() && method != "POST" {
                    let path = self.map_path(&self.uri);
                    if self.explain {
                        self.trace.push(format!("autoindex of {path}"));
                    }
                    return Ok(Outcome::Listing { path });
                }
            }
            if !readable {
                return Ok(self.status(405, None));
            }
            let path = self.map_path(&self.uri);
            tracing::error!("directory index of \"{path}\" is forbidden");
            if self.explain {
                self.trace.push("no index file: 403".into());
            }
            return Ok(self.status(403, None));
        }
        if !readable {
            return Ok(self.status(405, None));
        }
        let path = self.map_path(&self.uri);
        if files.redirects_dirs() && files.is_dir(&path) {
            // The static module: a directory without its slash is redirected to it.
            let mut target = format!("{}/", uri::escape(&self.uri, Escape::Uri));
            if !self.args.is_empty() {
                target = format!("{target}?{}", self.args);
            }
            if self.explain {
                self.trace.push(format!("{path} is a directory: 301"));
            }
            return Ok(self.status(301, Some(target)));
        }
        Ok(Outcome::File { path })
    }

    /// The index module: the first `index` name that exists is an internal redirect to it
    /// (a name starting with `/` is one without a test). `None`: none exists, the
    /// directory does.
    fn index(&mut self, files: &dyn FileCheck) -> Option<Result<Outcome, Restart>> {
        let dir = self.map_path(&self.uri);
        let mut dir_tested = false;
        for t in self.conf.settings.index().iter() {
            let name = self.eval(t);
            if name.is_empty() {
                continue;
            }
            let target = if name.starts_with('/') {
                Some(name)
            } else if files.exists(&format!("{dir}{name}")) {
                Some(format!("{}{name}", self.uri))
            } else {
                if !dir_tested {
                    let d = if dir.len() > 1 {
                        dir.trim_end_matches('/')
                    } else {
                        &dir
                    };
                    if !files.is_dir(d) {
                        if self.conf.settings.log_not_found() {
                            tracing::error!("\"{d}\" is not found (2: No such file or directory)");
                        }
                        if self.explain {
                            self.trace.push(format!("index: {dir} is not found: 404"));
                        }
                        return Some(Ok(self.status(404, None)));
                    }
                    dir_tested = true;
                }
                None
            };
            if let Some(uri) = target {
                if self.explain {
                    self.trace
                        .push(format!("index: internal redirect to {uri}"));
                }
                self.uri = uri;
                self.internal = true;
                self.valid_unparsed = false;
                return Some(Err(Restart));
            }
        }
        None
    }

    /// The access phase: the first `allow`/`deny` rule that matches the client decides.
    fn access_allowed(&self) -> bool {
        let client = match &self.req.local {
            ListenAddr::Unix(_) => None,
            _ => Some(self.remote.ip()),
        };
        let rules = self.conf.settings.access();
        rules
            .iter()
            .find(|r| r.matches(client))
            .is_none_or(|r| r.allow)
    }

    /// `root`/`alias`: the path on disk for a URI.
    /// Whether the URI, cut after a prefix location's name, climbs out of its `alias`.
    fn escapes_alias(&self) -> bool {
        let root = self.conf.settings.root();
        let Some(name) = self.conf.alias_name.as_ref().filter(|_| root.alias) else {
            return false;
        };
        let name_len = name.len().min(self.uri.len());
        let rest = &self.uri[name_len..];
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        rest == ".." || rest.starts_with("../")
    }

    fn map_path(&self, uri: &str) -> String {
        let root = self.conf.settings.root();
        let base = self.eval(&root.path);
        if root.alias {
            let Some(name) = &self.conf.alias_name else {
                // alias in a regex location (with captures): the alias is the whole path.
                if self.add_uri_to_alias {
                    return format!("{base}{uri}");
                }
                return base;
            };
            let name_len = name.len().min(uri.len());
            let mut path = base;
            path.push_str(&uri[name_len..]);
            return path;
        }
        let mut path = base;
        path.truncate(path.trim_end_matches('/').len());
        path.push_str(uri);
        path
    }

    /// The request that would go upstream.
    fn proxy(&mut self, pass: &Arc<ProxyPass>) -> Outcome {
        let conf = self.conf;
        let s = &conf.settings;
        let mut url_text = None;
        let (uri_part, upstream) = if pass.url.has_variables() {
            let url = self.eval(&pass.url);
            if !url.starts_with("http://") && !url.starts_with("https://") {
                // nginx: "invalid URL prefix", and a 500.
                tracing::error!("invalid URL prefix in \"{url}\"");
                if self.explain {
                    self.trace
                        .push(format!("proxy_pass: invalid URL prefix in \"{url}\": 500"));
                }
                return Outcome::Return {
                    status: 500,
                    headers: Vec::new(),
                    body: None,
                };
            }
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let (authority, uri) = super::lower::split_authority(rest);
            let default = if url.starts_with("https://") { 443 } else { 80 };
            let (h, p) = crate::config::env::upstream_host(authority, default)
                .unwrap_or((authority.to_string(), default));
            let host_header = if p == default {
                h.clone()
            } else {
                authority.to_string()
            };
            url_text = Some(url.clone());
            // A group of that name, or the address itself (resolved when sent).
            let to = match self
                .plan
                .upstreams
                .iter()
                .find(|u| !u.implicit && u.name == authority)
            {
                Some(group) => ProxyTo::Group(group.clone()),
                None => ProxyTo::Direct(authority.to_string()),
            };
            self.proxy = Some(ProxyHost::Url(host_header, p));
            (uri.map(Cow::Owned), to)
        } else {
            let to = match &pass.upstream {
                Some(group) => ProxyTo::Group(group.clone()),
                None => ProxyTo::Direct(pass.host.clone()),
            };
            self.proxy = Some(ProxyHost::Pass(pass.clone()));
            (pass.uri.as_deref().map(Cow::Borrowed), to)
        };
        let hash_key = match upstream.group().map(|g| &g.balance) {
            Some(super::Balance::Hash { key, .. }) => Some(self.eval(key)),
            _ => None,
        };
        let version = match s.proxy_http_version() {
            "1.0" => Cow::Borrowed("HTTP/1.0"),
            "1.1" => Cow::Borrowed("HTTP/1.1"),
            v => Cow::Owned(format!("HTTP/{v}")),
        };
        let target = |out: &mut String| self.upstream_target(pass, uri_part.as_deref(), out);
        let mut request = match s.proxy_method() {
            Some(m) => UpstreamRequest::start(&self.eval(&m), target, &version),
            None => UpstreamRequest::start(self.req.method, target, &version),
        };
        self.upstream_headers(s, &mut request);
        let redirects = match s.proxy_redirect() {
            // nginx's default, the plan's own rule: nothing to evaluate or copy.
            [ProxyRedirect::Default] => pass.default_redirect.clone(),
            rules => {
                let mut redirects = Vec::new();
                for r in rules {
                    match r {
                        ProxyRedirect::Off => {
                            redirects.clear();
                            break;
                        }
                        ProxyRedirect::Default => {
                            redirects.extend(pass.default_redirect.iter().cloned());
                        }
                        ProxyRedirect::Replace { from, to } => {
                            let (from, to) = (self.eval(from), self.eval(to));
                            redirects.push(Redirect::Prefix { from, to });
                        }
                        ProxyRedirect::Regex { regex, to } => redirects.push(Redirect::Regex {
                            regex: regex.clone(),
                            to: to.clone(),
                        }),
                    }
                }
                Arc::from(redirects)
            }
        };
        let mut cookies = CookieRules::default();
        for (rules, out) in [
            (s.proxy_cookie_domain(), &mut cookies.domain),
            (s.proxy_cookie_path(), &mut cookies.path),
        ] {
            for r in rules {
                match r {
                    ProxyRedirect::Replace { from, to } => out.push(Redirect::Prefix {
                        from: self.eval(&from),
                        to: self.eval(&to),
                    }),
                    ProxyRedirect::Regex { regex, to } => out.push(Redirect::Regex {
                        regex: regex.clone(),
                        to: to.clone(),
                    }),
                    _ => {}
                }
            }
        }
        Outcome::Proxy {
            upstream,
            redirects,
            cookies: if cookies.is_empty() {
                // The common case shares one empty set: no allocation per request.
                static EMPTY: std::sync::OnceLock<Arc<CookieRules>> = std::sync::OnceLock::new();
                EMPTY.get_or_init(Default::default).clone()
            } else {
                Arc::new(cookies)
            },
            pass: pass.clone(),
            url: url_text,
            hash_key,
            request,
        }
    }

    /// nginx's `ngx_http_proxy_create_request`, the URI part.
    fn upstream_target(&self, pass: &ProxyPass, uri_part: Option<&str>, out: &mut String) {
        if pass.url.has_variables() {
            if let Some(u) = uri_part {
                out.push_str(u);
                return;
            }
        }
        let uri_part = uri_part.unwrap_or("");
        if uri_part.is_empty() && self.valid_unparsed {
            out.push_str(&self.unparsed);
            return;
        }
        let loc_len = if self.valid_location && !uri_part.is_empty() {
            self.conf.location_name.len().min(self.uri.len())
        } else {
            0
        };
        let rest = &self.uri[loc_len..];
        if self.valid_location {
            out.push_str(uri_part);
        }
        if self.quoted || self.internal {
            out.push_str(&uri::escape(rest, Escape::Uri));
        } else {
            out.push_str(rest);
        }
        if !self.args.is_empty() {
            out.push('?');
            out.push_str(&self.args);
        }
    }

    /// Headers to the upstream: `proxy_set_header` ones (then nginx's defaults), then the
    /// client's, less those already set and the hop-by-hop ones.
    fn upstream_headers(&self, s: &Settings, request: &mut UpstreamRequest) {
        // Worked out when the plan was made; a level sealed without it is worked out here.
        let made;
        let h = match &self.conf.upstream_headers {
            Some(h) => h,
            None => {
                made = super::UpstreamHeaders::of(s);
                &made
            }
        };
        for (name, value) in &h.lines {
            request.header(name, |out| value.eval_into(self, out));
        }
        if h.pass_client {
            for (n, v) in self.headers.iter() {
                if h.not_passed.iter().any(|d| d.eq_ignore_ascii_case(n)) {
                    continue;
                }
                request.pass(n, v);
            }
        }
        request.finish();
    }
}

/// The content phase asked for the location search to start again.
struct Restart;

impl Resolve for State<'_> {
    fn var(&self, var: &Var) -> Option<Cow<'_, str>> {
        let req = self.req;
        Some(match var {
            Var::Host => {
                if self.host.is_empty() {
                    Cow::Borrowed(self.server.name())
                } else {
                    Cow::Borrowed(&*self.host)
                }
            }
            Var::RemoteAddr => Cow::Owned(self.remote.ip().to_string()),
            Var::RemotePort => match self.remote.port() {
                0 => return None,
                p => Cow::Owned(p.to_string()),
            },
            Var::Scheme => Cow::Borrowed(if req.https { "https" } else { "http" }),
            Var::ServerName => Cow::Borrowed(self.server.name()),
            Var::ServerPort => Cow::Owned(req.local.port().to_string()),
            Var::ServerAddr => Cow::Owned(match &req.local {
                ListenAddr::Tcp(a) => a.ip().to_string(),
                ListenAddr::Host(h, _) => h.clone(),
                ListenAddr::Unix(p) => format!("unix:{p}"),
            }),
            Var::ServerProtocol => Cow::Borrowed(req.version),
            Var::RequestUri => split_absolute(&req.target).1,
            Var::Uri => Cow::Borrowed(self.uri.as_str()),
            Var::Args => Cow::Borrowed(self.args.as_str()),
            Var::IsArgs => Cow::Borrowed(if self.args.is_empty() { "" } else { "?" }),
            Var::RequestMethod => Cow::Borrowed(req.method),
            Var::Request => Cow::Owned(format!("{} {} {}", req.method, req.target, req.version)),
            Var::ContentType => Cow::Borrowed(header(&self.headers, "content-type")?),
            Var::ContentLength => Cow::Borrowed(header(&self.headers, "content-length")?),
            Var::ProxyHost => Cow::Borrowed(match self.proxy.as_ref()? {
                ProxyHost::Pass(pass) => pass.host.as_str(),
                ProxyHost::Url(host, _) => host.as_str(),
            }),
            Var::ProxyPort => Cow::Owned(
                match self.proxy.as_ref()? {
                    ProxyHost::Pass(pass) => pass.port,
                    ProxyHost::Url(_, port) => *port,
                }
                .to_string(),
            ),
            Var::ProxyAddXForwardedFor => {
                let ip = self.remote.ip().to_string();
                let xff: Vec<&str> = self
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
                    .map(|(_, v)| v.as_str())
                    .collect();
                if xff.is_empty() {
                    Cow::Owned(ip)
                } else {
                    Cow::Owned(format!("{}, {ip}", xff.join(", ")))
                }
            }
            Var::DocumentRoot | Var::RealpathRoot => {
                let root = self.conf.settings.root();
                Cow::Owned(self.eval(&root.path))
            }
            Var::RequestFilename => Cow::Owned(self.map_path(&self.uri)),
            Var::Http(name) => {
                let dashed = name.replace('_', "-");
                let mut values = self
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(&dashed))
                    .map(|(_, v)| v.as_str());
                match name.as_str() {
                    // nginx 1.22 joins these two; other headers give their first line.
                    "cookie" => {
                        Cow::<str>::Owned(values.collect::<Vec<_>>().join("; ")).filter_empty()?
                    }
                    "x_forwarded_for" => {
                        Cow::<str>::Owned(values.collect::<Vec<_>>().join(", ")).filter_empty()?
                    }
                    _ => Cow::Borrowed(values.next()?),
                }
            }
            Var::Arg(name) => Cow::Borrowed(arg(&self.args, name)?),
            Var::Cookie(name) => {
                let cookies = self
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"));
                let mut found = None;
                'outer: for (_, v) in cookies {
                    for pair in v.split(';') {
                        let pair = pair.trim_start();
                        if let Some((k, val)) = pair.split_once('=') {
                            if k.eq_ignore_ascii_case(name) {
                                found = Some(val);
                                break 'outer;
                            }
                        }
                    }
                }
                Cow::Borrowed(found?)
            }
            Var::SentHttp(_) => return None,
            Var::UpstreamHttp(name) => {
                // Known once the upstream has answered (see `late_headers`).
                let v = self.vars.get(&format!("upstream_http_{name}"))?;
                Cow::Borrowed(v.as_str())
            }
            Var::ProxyInternalBodyLength => {
                // nginx sends the client's length even with proxy_pass_request_body off
                // (configs then clear it with proxy_set_header).
                if req.chunked {
                    return None;
                }
                Cow::Owned(req.body_len?.to_string())
            }
            Var::ProxyInternalChunked => {
                if req.chunked && self.conf.settings.proxy_pass_request_body() {
                    Cow::Borrowed("chunked")
                } else {
                    return None;
                }
            }
            Var::Named(name) => {
                if let Some(v) = self.vars.get(name) {
                    return Some(Cow::Borrowed(v.as_str()));
                }
                if let Some(map) = self.plan.maps.get(name) {
                    return Some(Cow::Owned(self.map_value(map)));
                }
                match name.as_str() {
                    "proxy_internal_body_length" => {
                        return self.var(&Var::ProxyInternalBodyLength);
                    }
                    "proxy_internal_chunked" => return self.var(&Var::ProxyInternalChunked),
                    "http_host" => Cow::Borrowed(header(&self.headers, "host")?),
                    "hostname" => Cow::Owned(hostname()),
                    "nginx_version" => Cow::Borrowed("1.22.1"),
                    "connection" => Cow::Owned(req.connection.to_string()),
                    "https" => Cow::Borrowed(if req.https { "on" } else { "" }),
                    "ssl_server_name" => Cow::Borrowed(req.tls.as_ref()?.server_name.as_deref()?),
                    "ssl_protocol" => Cow::Borrowed(req.tls.as_ref()?.protocol.as_str()),
                    "ssl_cipher" => Cow::Borrowed(req.tls.as_ref()?.cipher.as_str()),
                    "connection_requests" => Cow::Owned(req.requests.to_string()),
                    "connection_time" => Cow::Owned(format!(
                        "{}.{:03}",
                        req.connection_ms / 1000,
                        req.connection_ms % 1000
                    )),
                    "server_name" => Cow::Borrowed(self.server.name()),
                    "limit_rate" => Cow::Borrowed("0"),
                    "realip_remote_addr" => Cow::Owned(req.remote.ip().to_string()),
                    "realip_remote_port" => Cow::Owned(req.remote.port().to_string()),
                    _ => return None,
                }
            }
        })
    }

    fn capture(&self, n: usize) -> Cow<'_, str> {
        match &self.captures {
            Some(c) => Cow::Borrowed(c.group(n)),
            None => Cow::Borrowed(""),
        }
    }
}

impl State<'_> {
    fn map_value(&self, map: &Map) -> String {
        let key = self.eval(&map.source);
        let lookup = if map.hostnames {
            key.trim_end_matches('.').to_ascii_lowercase()
        } else {
            key.clone()
        };
        if let Some(v) = map.exact.get(&lookup) {
            return self.eval(v);
        }
        if map.hostnames {
            let mut t = NameTable::default();
            for (i, (n, _)) in map.wildcards.iter().enumerate() {
                t.add(n, i);
            }
            if let Some(f) = t.find(&lookup) {
                return self.eval(&map.wildcards[f.server].1);
            }
        }
        for (re, v) in &map.regexes {
            if let Some(c) = re.captures(&key) {
                // Captures of a map regex are visible in its value only.
                let inner = MapScope {
                    outer: self,
                    captures: c,
                };
                return v.eval(&inner);
            }
        }
        self.eval(&map.default)
    }
}

struct MapScope<'a, 'p> {
    outer: &'a State<'p>,
    captures: Captures,
}

impl Resolve for MapScope<'_, '_> {
    fn var(&self, var: &Var) -> Option<Cow<'_, str>> {
        if let Var::Named(n) = var {
            if let Some(v) = self.captures.named(n) {
                return Some(Cow::Borrowed(v));
            }
        }
        self.outer.var(var)
    }
    fn capture(&self, n: usize) -> Cow<'_, str> {
        Cow::Borrowed(self.captures.group(n))
    }
}

trait FilterEmpty: Sized {
    fn filter_empty(self) -> Option<Self>;
}

impl FilterEmpty for Cow<'_, str> {
    fn filter_empty(self) -> Option<Self> {
        (!self.is_empty()).then_some(self)
    }
}

/// `$arg_NAME`: the first `NAME=value` of the query (names compared case-insensitively).
fn arg<'a>(args: &'a str, name: &str) -> Option<&'a str> {
    args.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// nginx's `ngx_parse_addr_port`: an address, `v4:port` or `[v6]:port` (port 0 when none is
/// given).
fn parse_addr_port(t: &str) -> Option<SocketAddr> {
    use std::net::IpAddr;
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    let (addr, port) = if let Some(inner) = t.strip_prefix('[') {
        let close = inner.find(']')?;
        let after = &inner[close + 1..];
        // nginx 1.22 takes `[v6]` only with a port (later versions take it bare too).
        (&inner[..close], after.strip_prefix(':')?)
    } else {
        t.split_once(':')?
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p >= 1)?;
    Some(SocketAddr::new(addr.parse().ok()?, port))
}
