//! The routing plan: what the runtime serves from. The compiler lowers the checked tree into
//! it once; it is immutable afterwards, shared behind an `Arc` and swapped whole on reload.
//!
//! Everything a request needs is decided here ahead of time: sockets with their server-name
//! tables, each server's location tree, every location's merged settings (inheritance done),
//! rewrite programs, compiled templates and regexes, upstream groups.

pub mod header;
pub mod listen;
pub mod locations;
pub mod lower;
pub mod names;
pub mod pages;
pub mod regex;
pub mod route;
pub mod settings;
pub mod template;
pub mod uri;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

pub use listen::{ListenAddr, ListenOpts};
pub use locations::Locations;
pub use lower::{LowerOptions, lower};
pub use names::{NameTable, ServerName};
pub use regex::Regex;
pub use settings::Settings;
pub use template::Template;

/// A map the plan builds from the configuration and requests only look up (`types`, server
/// names). Hashed with Fx, several times cheaper per lookup than SipHash: SipHash's defence
/// is against keys that an attacker inserts to collide, and nothing a client sends is ever
/// inserted into one of these.
pub type LookupMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

use crate::config::span::Span;

/// Where something was written: for messages and for `portico route`.
#[derive(Clone, Debug, Serialize)]
pub struct Place {
    pub file: String,
    pub line: usize,
    #[serde(skip)]
    pub span: Span,
    /// A span on the line nginx names (a block's `{`).
    #[serde(skip)]
    pub line_span: Span,
}

/// The compiled configuration.
#[derive(Debug, Default)]
pub struct Plan {
    pub sockets: Vec<Socket>,
    pub servers: Vec<Server>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// `map` blocks by the variable they define.
    pub maps: HashMap<String, Arc<Map>>,
    /// Settings of the http level, for requests no server takes.
    pub http: Arc<LocConf>,
    /// `log_format`s by name, `combined` included.
    pub log_formats: HashMap<String, LogFormat>,
    /// Access log files named without variables, for the runtime to create at start.
    pub access_log_files: Vec<String>,
    /// Every `error_log` of the http, server and location levels: (path, level), for the
    /// runtime to open.
    pub error_logs: Vec<(String, String)>,
    /// Whether a log format reads `$sent_http_NAME`: the runtime then keeps what it sent.
    pub log_sent_headers: bool,
    /// Whether a log format reads `$upstream_http_NAME`: the runtime keeps the upstream's.
    pub log_upstream_headers: bool,
    /// nginx's prefix, which relative paths the runtime opens (temp paths) start from.
    pub prefix: String,
}

impl Plan {
    /// A path as `ngx_conf_full_name` makes it: relative ones start at the prefix.
    pub fn full_path(&self, path: &str) -> std::path::PathBuf {
        std::path::Path::new(&self.prefix).join(path)
    }
}

/// A `log_format`.
#[derive(Debug, Clone)]
pub struct LogFormat {
    pub template: Template,
    /// `escape=`: `default`, `json` or `none`.
    pub escape: String,
}

/// nginx's predefined `combined` format.
pub const COMBINED: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"";

/// One listening socket and the servers reachable through it.
#[derive(Debug)]
pub struct Socket {
    pub addr: ListenAddr,
    pub opts: ListenOpts,
    /// Servers on this socket, by index into `Plan::servers`, in configuration order.
    pub servers: Vec<usize>,
    pub names: NameTable,
    pub default: usize,
}

/// A `server {}` block.
#[derive(Debug)]
pub struct Server {
    pub index: usize,
    /// Names as written; the first is `$server_name`.
    pub names: Vec<String>,
    pub place: Place,
    /// The server level's own settings and rewrite program (the "server rewrite" phase);
    /// also the configuration of requests that match no location.
    pub conf: Arc<LocConf>,
    pub locations: Locations,
    pub named: HashMap<String, Arc<Location>>,
}

impl Server {
    /// `$server_name`: the first name, without the leading dot of `.example.com`.
    pub fn name(&self) -> &str {
        let first = self.names.first().map_or("", String::as_str);
        first.strip_prefix('.').unwrap_or(first)
    }
}

#[derive(Debug)]
pub enum LocationKind {
    Exact(String),
    Prefix { name: String, noregex: bool },
    Regex(Regex),
    Named(String),
}

/// A `location {}` block.
#[derive(Debug)]
pub struct Location {
    pub kind: LocationKind,
    pub place: Place,
    pub conf: Arc<LocConf>,
    pub children: Locations,
    /// The name ends with `/` and the location proxies: `/name` without the slash redirects.
    pub auto_redirect: bool,
}

impl Location {
    pub fn noregex(&self) -> bool {
        matches!(self.kind, LocationKind::Prefix { noregex: true, .. })
    }
    pub fn is_regex(&self) -> bool {
        matches!(self.kind, LocationKind::Regex(_))
    }
    pub fn is_exact(&self) -> bool {
        matches!(self.kind, LocationKind::Exact(_))
    }
    /// The modifier as written: `=`, `^~`, `~`, `~*`, `@` or empty.
    pub fn modifier(&self) -> &'static str {
        match &self.kind {
            LocationKind::Exact(_) => "=",
            LocationKind::Prefix { noregex: true, .. } => "^~",
            LocationKind::Prefix { .. } => "",
            LocationKind::Regex(r) if r.caseless() => "~*",
            LocationKind::Regex(_) => "~",
            LocationKind::Named(_) => "@",
        }
    }
    /// The name or pattern as written (without the modifier, but with `@` for named ones).
    pub fn name(&self) -> &str {
        match &self.kind {
            LocationKind::Exact(n) | LocationKind::Prefix { name: n, .. } => n,
            LocationKind::Regex(r) => r.as_str(),
            LocationKind::Named(n) => n,
        }
    }
}

/// The merged configuration of one level (server, location, `if`, `limit_except`).
#[derive(Debug, Default)]
pub struct LocConf {
    /// Inherited settings, merged from the outer levels.
    pub settings: Settings,
    /// The rewrite module's program of this level (not inherited).
    pub ops: Vec<Op>,
    /// `proxy_pass` of this level (inherited only into `if` and `limit_except`).
    pub proxy: Option<Arc<ProxyPass>>,
    /// `try_files` of this level.
    pub try_files: Option<Vec<Template>>,
    pub internal: bool,
    /// The location name a proxied URI part replaces (`location /app/` + `proxy_pass
    /// http://b/v1/`); empty outside prefix locations.
    pub location_name: String,
    /// With `alias`: the name of the prefix location whose part of the URI the alias
    /// replaces (the one that set it; a nested location inherits it); `None` when the alias
    /// was set in a regex location and is the whole path.
    pub alias_name: Option<String>,
    /// `limit_except`: methods allowed, and the configuration for the others.
    pub limit_except: Option<(Vec<String>, Arc<LocConf>)>,
    /// With `proxy`: the headers a proxied request starts with, worked out once here.
    pub upstream_headers: Option<UpstreamHeaders>,
}

impl LocConf {
    /// The level made final: what serving derives from its settings is worked out now, not
    /// per request.
    pub fn seal(mut self) -> Arc<LocConf> {
        if self.proxy.is_some() {
            self.upstream_headers = Some(UpstreamHeaders::of(&self.settings));
        }
        Arc::new(self)
    }
}

/// The header lines nginx's proxy module writes before the client's (ngx_http_proxy_headers
/// merged with `proxy_set_header`), and the client's headers it then leaves out.
#[derive(Debug, Default)]
pub struct UpstreamHeaders {
    /// The configured lines in their order, then nginx's own that none of them names. A
    /// value that is always empty (`proxy_set_header Connection "";`) writes no line, so it
    /// is not here at all.
    pub lines: Vec<(String, Template)>,
    /// Names (lower case) of the client's headers not passed on: those set above, empty or
    /// not. Empty when `proxy_pass_request_headers off` passes none.
    pub not_passed: Vec<String>,
    pub pass_client: bool,
}

impl UpstreamHeaders {
    pub fn of(s: &Settings) -> UpstreamHeaders {
        use template::{Part, Var};
        let var = |v: Var, source: &str| Template {
            source: source.to_string(),
            parts: vec![Part::Var(v)],
        };
        let defaults = [
            ("Host", var(Var::ProxyHost, "$proxy_host")),
            ("Connection", Template::literal("close")),
            (
                "Content-Length",
                var(Var::ProxyInternalBodyLength, "$proxy_internal_body_length"),
            ),
            (
                "Transfer-Encoding",
                var(Var::ProxyInternalChunked, "$proxy_internal_chunked"),
            ),
            ("TE", Template::default()),
            ("Keep-Alive", Template::default()),
            ("Expect", Template::default()),
            ("Upgrade", Template::default()),
        ];
        let configured: &[(String, Template)] = s.proxy_set_header.as_deref().unwrap_or(&[]);
        let named = |name: &str| configured.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut lines: Vec<(String, Template)> = configured.to_vec();
        let mut not_passed: Vec<String> = configured
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        for (name, value) in defaults {
            if !named(name) {
                lines.push((name.to_string(), value));
                not_passed.push(name.to_ascii_lowercase());
            }
        }
        lines.retain(|(_, v)| !v.parts.is_empty());
        not_passed.sort();
        not_passed.dedup();
        UpstreamHeaders {
            lines,
            not_passed,
            pass_client: s.proxy_pass_request_headers(),
        }
    }
}

/// One step of a rewrite program.
#[derive(Debug)]
pub enum Op {
    Rewrite {
        regex: Regex,
        replacement: Template,
        flag: RewriteFlag,
        place: Place,
    },
    Return {
        code: u16,
        text: Option<Template>,
        place: Place,
    },
    Set {
        var: String,
        value: Template,
    },
    If {
        cond: Cond,
        ops: Vec<Op>,
        conf: Arc<LocConf>,
        place: Place,
    },
    Break,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RewriteFlag {
    None,
    Last,
    Break,
    Redirect,
    Permanent,
}

/// The condition of an `if`.
#[derive(Debug)]
pub enum Cond {
    /// `if ($var)`: true unless empty or "0".
    Value(Template),
    Eq {
        left: Template,
        right: Template,
        negate: bool,
    },
    Regex {
        left: Template,
        regex: Regex,
        negate: bool,
    },
    /// `-f`, `-d`, `-e`, `-x` and their negations.
    File {
        test: char,
        path: Template,
        negate: bool,
    },
}

/// `proxy_pass`.
#[derive(Debug)]
pub struct ProxyPass {
    pub url: Template,
    pub https: bool,
    /// The upstream group, when the URL names one without variables.
    pub upstream: Option<Arc<Upstream>>,
    /// What `proxy_redirect default` means for this URL in its location (empty for a URL
    /// with variables, where nginx's default does nothing).
    pub default_redirect: Arc<[route::Redirect]>,
    /// `$proxy_host`: the host part as written, with the port unless it is the default.
    pub host: String,
    pub port: u16,
    /// The URI part, when the URL has one (`http://b/v1/` has `/v1/`).
    pub uri: Option<String>,
    pub place: Place,
}

/// An `upstream {}` block, or an implicit one from a `proxy_pass` URL.
#[derive(Clone, Debug, Serialize)]
pub struct Upstream {
    pub name: String,
    pub implicit: bool,
    pub servers: Vec<Peer>,
    pub balance: Balance,
    pub keepalive: Option<Keepalive>,
    pub place: Place,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub addr: PeerAddr,
    /// `addr` as `$upstream_addr` shows it, written once when the plan is built.
    #[serde(skip)]
    pub text: String,
    pub weight: u32,
    pub max_fails: u32,
    /// Seconds.
    pub fail_timeout: u64,
    pub backup: bool,
    pub down: bool,
    pub max_conns: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PeerAddr {
    /// Host (an IP address or a name the runtime resolves) and port.
    Tcp {
        host: String,
        port: u16,
    },
    Unix {
        path: String,
    },
}

impl Peer {
    /// A server with nginx's defaults (weight 1, max_fails 1, fail_timeout 10s).
    pub fn new(addr: PeerAddr) -> Peer {
        Peer {
            text: addr.to_string(),
            addr,
            weight: 1,
            max_fails: 1,
            fail_timeout: 10,
            backup: false,
            down: false,
            max_conns: 0,
        }
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            PeerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            PeerAddr::Unix { path } => write!(f, "unix:{path}"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConn,
    IpHash,
    Hash { key: Template, consistent: bool },
    Random { two: bool },
}

#[derive(Clone, Debug, Serialize)]
pub struct Keepalive {
    pub connections: u32,
    pub requests: u64,
    /// Milliseconds.
    pub timeout: u64,
    pub time: u64,
}

/// A `map` block.
#[derive(Debug)]
pub struct Map {
    pub source: Template,
    pub exact: HashMap<String, Template>,
    pub regexes: Vec<(Regex, Template)>,
    pub default: Template,
    pub hostnames: bool,
    /// Wildcard entries when `hostnames` is set: (name, value), in order.
    pub wildcards: Vec<(ServerName, Template)>,
}

/// Lowers `compiled` into a plan and adds lowering's diagnostics to it.
pub fn build(compiled: &mut crate::config::Compiled, options: &LowerOptions) -> Plan {
    let (plan, diagnostics) = lower(compiled, options);
    // nginx finds lowering's problems before the checks it makes once everything is read
    // (unknown variables, binding): they go in before those.
    let end = compiled
        .diagnostics
        .iter()
        .position(|d| matches!(d.code, "unknown-variable" | "bind" | "no-events"))
        .unwrap_or(compiled.diagnostics.len());
    // ... and when its `http` block closes, so before what it reads after that block (a
    // syntax error further down the main file).
    let end = match compiled.sources.http_block_end() {
        Some(close) => {
            let order = compiled.sources.reading_order();
            let close = order.key(close);
            compiled.diagnostics[..end]
                .iter()
                .position(|d| d.span.is_some_and(|s| order.key(s) > close))
                .unwrap_or(end)
        }
        None => end,
    };
    let mut fresh = Vec::new();
    for d in diagnostics {
        // The checks and lowering both look at some directives (a duplicate `root`, ...):
        // say it once.
        let repeated = compiled.diagnostics.iter().any(|e| {
            e.span.map(|s| s.start) == d.span.map(|s| s.start) && e.is_error() && d.is_error()
        });
        if !repeated {
            fresh.push(d);
        }
    }
    compiled.diagnostics.splice(end..end, fresh);
    plan
}
