//! Lowering: the checked tree becomes a [`Plan`]. Each block's own directives are read first,
//! then its settings inherit from the enclosing block's (nginx merges after reading, so a
//! directive below a nested `location` still applies to the level it is in), then its nested
//! blocks are lowered with the merged settings.

use std::collections::HashMap;
use std::sync::Arc;

use super::listen::{self, ListenAddr, ListenOpts};
use super::names::{NameTable, ServerName};
use super::regex::Regex;
use super::route::Redirect;
use super::settings::{
    AccessLog, AccessRule, AddHeader, ErrorPage, NextUpstream, ProxyRedirect, RealIpHeader, Root,
    ServerTokens, SessionCache, Settings,
};
use super::template::Template;
use super::*;
use crate::config::ast::{Arg, Directive};
use crate::config::load::{Included, Sources};
use crate::config::span::FileId;
use crate::config::validate::{Mode, parse_size, parse_time};
use crate::config::{Compiled, Diagnostic};

/// What lowering needs besides the configuration.
#[derive(Clone, Debug)]
pub struct LowerOptions {
    /// The port of a server without `listen`: nginx uses 80 when run as root, else 8000.
    pub default_port: u16,
    /// nginx's prefix: relative `root` and `alias` paths start here.
    pub prefix: String,
    /// The main file's directory: relative certificate paths start here, as in nginx.
    pub conf_prefix: String,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            default_port: 80,
            prefix: crate::cli::DEFAULT_PREFIX.to_string(),
            conf_prefix: format!("{}conf", crate::cli::DEFAULT_PREFIX),
        }
    }
}

/// Lowers a compiled configuration. Directives the checks refused are skipped; the
/// diagnostics returned are the ones only lowering can find (duplicate locations, conflicting
/// server names, ...), worded as nginx words them.
pub fn lower(compiled: &Compiled, options: &LowerOptions) -> (Plan, Vec<Diagnostic>) {
    let mut l = Lowerer {
        sources: &compiled.sources,
        options,
        out: Vec::new(),
        upstreams: HashMap::new(),
        upstream_order: Vec::new(),
        plan: Plan {
            prefix: options.prefix.clone(),
            ..Plan::default()
        },
        sockets: Vec::new(),
    };
    let Some(root) = compiled.sources.root else {
        return (Plan::default(), l.out);
    };
    let top = l.expand(root, &compiled.sources.tree(root).directives);
    match compiled.mode {
        Mode::Http => l.http(&top),
        Mode::Main => {
            for (file, d) in &top {
                if d.name() == "http" {
                    if let Some(b) = &d.block {
                        let inner = l.expand(*file, &b.directives);
                        l.http(&inner);
                    }
                }
            }
        }
    }
    l.finish();
    l.plan.log_upstream_headers = l.plan.log_formats.values().any(|f| {
        f.template.parts.iter().any(|p| {
            matches!(
                p,
                super::template::Part::Var(super::template::Var::UpstreamHttp(_))
            )
        })
    });
    l.plan.log_sent_headers = l.plan.log_formats.values().any(|f| {
        f.template.parts.iter().any(|p| {
            matches!(
                p,
                super::template::Part::Var(super::template::Var::SentHttp(_))
            )
        })
    });
    (l.plan, l.out)
}

type Item<'a> = (FileId, &'a Directive);

struct SocketBuild {
    addr: ListenAddr,
    opts: ListenOpts,
    servers: Vec<usize>,
    default: Option<usize>,
    opts_set: bool,
}

struct Lowerer<'a> {
    sources: &'a Sources,
    options: &'a LowerOptions,
    out: Vec<Diagnostic>,
    upstreams: HashMap<String, Arc<Upstream>>,
    upstream_order: Vec<String>,
    plan: Plan,
    sockets: Vec<SocketBuild>,
}

/// The kind of block being lowered, for the rules that depend on it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Http,
    Server,
    Prefix,
    Exact,
    Regex,
    Named,
    If,
    LimitExcept,
}

fn args(d: &Directive) -> Vec<&str> {
    d.args.iter().map(|a| a.value.as_str()).collect()
}

impl<'a> Lowerer<'a> {
    /// A block's directives with `include`s replaced by what they include.
    fn expand(&self, file: FileId, ds: &'a [Directive]) -> Vec<Item<'a>> {
        let mut out = Vec::new();
        self.expand_into(file, ds, &mut out, 0);
        out
    }

    fn expand_into(
        &self,
        file: FileId,
        ds: &'a [Directive],
        out: &mut Vec<Item<'a>>,
        depth: usize,
    ) {
        for d in ds {
            if d.name() == "include" && d.block.is_none() {
                if depth >= crate::config::load::MAX_INCLUDE_DEPTH {
                    continue;
                }
                if let Some(Included::Files(ids)) = self.sources.included(file, d) {
                    for &id in ids {
                        let tree = &self.sources.tree(id).directives;
                        self.expand_into(id, tree, out, depth + 1);
                    }
                }
            } else {
                out.push((file, d));
            }
        }
    }

    /// A path relative to the prefix, as `ngx_conf_full_name` makes it.
    fn full_name(&self, path: &str) -> String {
        let prefix = &self.options.prefix;
        if prefix.ends_with('/') {
            format!("{prefix}{path}")
        } else {
            format!("{prefix}/{path}")
        }
    }

    fn place(&self, d: &Directive) -> Place {
        let file = self.sources.map.get(d.name.span.file);
        Place {
            file: file.name(),
            line: file.line_of(d.end),
            span: d.name.span,
            line_span: d.end_span(),
        }
    }

    fn error(&mut self, d: &Directive, code: &'static str, message: impl Into<String>) {
        self.out.push(
            Diagnostic::error(code, message)
                .at(d.name.span)
                .line_at(d.end_span()),
        );
    }

    fn error_at(
        &mut self,
        d: &Directive,
        arg: &Arg,
        code: &'static str,
        message: impl Into<String>,
    ) {
        self.out.push(
            Diagnostic::error(code, message)
                .at(arg.span)
                .line_at(d.end_span()),
        );
    }

    fn template(&mut self, d: &Directive, arg: &Arg) -> Template {
        match Template::compile(&arg.value) {
            Ok(t) => t,
            Err(m) => {
                self.error_at(d, arg, "variable", m);
                Template::literal(&arg.value)
            }
        }
    }

    fn regex(&mut self, d: &Directive, arg: &Arg, pattern: &str, caseless: bool) -> Option<Regex> {
        match Regex::new(pattern, caseless) {
            Ok(r) => Some(r),
            Err(m) => {
                self.error_at(d, arg, "regex", m);
                None
            }
        }
    }

    // ---- http -------------------------------------------------------------------------

    fn http(&mut self, items: &[Item<'a>]) {
        // Upstreams and maps first: `proxy_pass` may name an upstream defined further down.
        for (file, d) in items {
            match (d.name(), &d.block) {
                ("upstream", Some(b)) if d.args.len() == 1 => {
                    let inner = self.expand(*file, &b.directives);
                    self.upstream(d, &inner);
                }
                ("map", Some(b)) if d.args.len() == 2 => {
                    let inner = self.expand(*file, &b.directives);
                    self.map(d, &inner);
                }
                _ => {}
            }
        }
        self.plan.log_formats.insert(
            "combined".to_string(),
            LogFormat {
                template: Template::compile(COMBINED).unwrap_or_default(),
                escape: "default".to_string(),
            },
        );
        for (_, d) in items {
            if d.name() == "log_format" && d.args.len() >= 2 {
                let name = d.args[0].value.clone();
                let (escape, parts) = match d.args[1].value.strip_prefix("escape=") {
                    Some(e) => (e.to_string(), &d.args[2..]),
                    None => ("default".to_string(), &d.args[1..]),
                };
                let text: String = parts.iter().map(|a| a.value.as_str()).collect();
                let template = match Template::compile(&text) {
                    Ok(t) => t,
                    Err(m) => {
                        self.error(d, "variable", m);
                        continue;
                    }
                };
                self.plan
                    .log_formats
                    .insert(name, LogFormat { template, escape });
            }
        }
        let mut http = LocConf::default();
        self.own_settings(items, &mut http.settings, Level::Http);
        if http.settings.root.is_none() {
            let path = Template::literal(&self.full_name("html"));
            http.settings.root = Some(Root { path, alias: false });
        }
        let http = http.seal();
        for (file, d) in items {
            if d.name() == "server" {
                if let Some(b) = &d.block {
                    let inner = self.expand(*file, &b.directives);
                    self.server(d, &inner, &http);
                }
            }
        }
        self.plan.http = http;
    }

    fn upstream(&mut self, d: &Directive, items: &[Item<'a>]) {
        let name = d.args[0].value.clone();
        if self.upstreams.get(&name).is_some_and(|u| !u.implicit) {
            self.error(
                d,
                "duplicate-upstream",
                format!("duplicate upstream \"{name}\""),
            );
            return;
        }
        let mut up = Upstream {
            name: name.clone(),
            implicit: false,
            servers: Vec::new(),
            balance: Balance::RoundRobin,
            keepalive: None,
            place: self.place(d),
        };
        let mut keepalive = Keepalive {
            connections: 0,
            requests: 1000,
            timeout: 60_000,
            time: 3_600_000,
        };
        for (_, s) in items {
            let a = args(s);
            match s.name() {
                "server" if !a.is_empty() => {
                    if let Some(peer) = self.peer(s, &a) {
                        up.servers.push(peer);
                    }
                }
                "least_conn" => up.balance = Balance::LeastConn,
                "ip_hash" => up.balance = Balance::IpHash,
                "hash" if !a.is_empty() => {
                    let key = self.template(s, &s.args[0]);
                    let consistent = match a.get(1) {
                        None => false,
                        Some(&"consistent") => true,
                        Some(other) => {
                            self.error(
                                s,
                                "invalid-value",
                                format!("invalid parameter \"{other}\""),
                            );
                            false
                        }
                    };
                    up.balance = Balance::Hash { key, consistent };
                }
                "random" => {
                    up.balance = Balance::Random {
                        two: a.first() == Some(&"two"),
                    }
                }
                "keepalive" => {
                    keepalive.connections = a.first().and_then(|v| v.parse().ok()).unwrap_or(0);
                    if keepalive.connections == 0 {
                        self.error(
                            s,
                            "invalid-value",
                            format!(
                                "invalid value \"{}\" in \"keepalive\" directive",
                                a.first().unwrap_or(&"")
                            ),
                        );
                    }
                }
                "keepalive_requests" => {
                    keepalive.requests = a.first().and_then(|v| v.parse().ok()).unwrap_or(1000)
                }
                "keepalive_timeout" => {
                    keepalive.timeout = a
                        .first()
                        .and_then(|v| parse_time(v, false))
                        .unwrap_or(60_000)
                }
                "keepalive_time" => {
                    keepalive.time = a
                        .first()
                        .and_then(|v| parse_time(v, false))
                        .unwrap_or(3_600_000)
                }
                _ => {}
            }
        }
        if keepalive.connections > 0 {
            up.keepalive = Some(keepalive);
        }
        if up.servers.is_empty() {
            let p = &up.place;
            let m = format!("no servers are inside upstream in {}:{}", p.file, p.line);
            self.out.push(
                Diagnostic::error("empty-upstream", m)
                    .at(d.name.span)
                    .unlocated(),
            );
        }
        if !self.upstreams.contains_key(&name) {
            self.upstream_order.push(name.clone());
        }
        self.upstreams.insert(name, Arc::new(up));
    }

    fn peer(&mut self, d: &Directive, a: &[&str]) -> Option<Peer> {
        let addr = if let Some(path) = a[0].strip_prefix("unix:") {
            PeerAddr::Unix {
                path: path.to_string(),
            }
        } else {
            match crate::config::env::upstream_host(a[0], 80) {
                Some((host, port)) => PeerAddr::Tcp { host, port },
                None => {
                    self.error(
                        d,
                        "invalid-value",
                        format!("invalid host in upstream \"{}\"", a[0]),
                    );
                    return None;
                }
            }
        };
        let mut p = Peer::new(addr);
        for &param in &a[1..] {
            let bad = |l: &mut Self| {
                l.error(d, "invalid-value", format!("invalid parameter \"{param}\""))
            };
            let num = |v: &str| v.parse::<u32>().ok();
            if let Some(v) = param.strip_prefix("weight=") {
                match num(v).filter(|n| *n > 0) {
                    Some(n) => p.weight = n,
                    None => bad(self),
                }
            } else if let Some(v) = param.strip_prefix("max_fails=") {
                match num(v) {
                    Some(n) => p.max_fails = n,
                    None => bad(self),
                }
            } else if let Some(v) = param.strip_prefix("max_conns=") {
                match num(v) {
                    Some(n) => p.max_conns = n,
                    None => bad(self),
                }
            } else if let Some(v) = param.strip_prefix("fail_timeout=") {
                match parse_time(v, true) {
                    Some(n) => p.fail_timeout = n,
                    None => bad(self),
                }
            } else if param == "backup" {
                p.backup = true;
            } else if param == "down" {
                p.down = true;
            } else {
                bad(self);
            }
        }
        Some(p)
    }

    fn map(&mut self, d: &Directive, items: &[Item<'a>]) {
        let source = self.template(d, &d.args[0]);
        let Some(var) = d.args[1].value.strip_prefix('$') else {
            self.error_at(
                d,
                &d.args[1],
                "invalid-value",
                format!("invalid variable name \"{}\"", d.args[1].value),
            );
            return;
        };
        let mut map = Map {
            source,
            exact: HashMap::new(),
            regexes: Vec::new(),
            default: Template::literal(""),
            hostnames: false,
            wildcards: Vec::new(),
        };
        for (_, e) in items {
            let key = e.name();
            match (key, e.args.first()) {
                ("hostnames", None) => map.hostnames = true,
                ("volatile", None) => {}
                (_, Some(value)) => {
                    let value = self.template(e, value);
                    if key == "default" {
                        map.default = value;
                    } else if let Some(re) = key.strip_prefix('~') {
                        let (re, caseless) = match re.strip_prefix('*') {
                            Some(r) => (r, true),
                            None => (re, false),
                        };
                        if let Some(r) = self.regex(e, &e.name, re, caseless) {
                            map.regexes.push((r, value));
                        }
                    } else {
                        let key = key.strip_prefix('\\').unwrap_or(key);
                        let wild = map.hostnames
                            && (key.starts_with('.')
                                || key.starts_with("*.")
                                || key.ends_with(".*"));
                        if wild {
                            if let Ok(n) = ServerName::parse(key) {
                                map.wildcards.push((n, value));
                            }
                        } else {
                            let k = if map.hostnames {
                                key.to_ascii_lowercase()
                            } else {
                                key.to_string()
                            };
                            map.exact.entry(k).or_insert(value);
                        }
                    }
                }
                _ => {}
            }
        }
        self.plan
            .maps
            .insert(var.to_ascii_lowercase(), Arc::new(map));
    }

    // ---- server ------------------------------------------------------------------------

    fn server(&mut self, d: &'a Directive, items: &[Item<'a>], http: &Arc<LocConf>) {
        let index = self.plan.servers.len();
        let mut conf = LocConf::default();
        self.own_settings(items, &mut conf.settings, Level::Server);
        conf.settings.inherit(&http.settings);
        self.tls_keys(&conf.settings);
        let mut names: Vec<String> = Vec::new();
        let mut parsed: Vec<(ServerName, &'a Directive)> = Vec::new();
        let mut listens = Vec::new();
        for (_, s) in items {
            match s.name() {
                "server_name" => {
                    for arg in &s.args {
                        let v = arg.value.as_str();
                        if v.contains('/') || v.contains('\0') {
                            self.error_at(
                                s,
                                arg,
                                "server-name",
                                format!("server name \"{v}\" is invalid"),
                            );
                            continue;
                        }
                        names.push(v.to_string());
                        if v.is_empty() {
                            parsed.push((ServerName::Exact(String::new()), s));
                            continue;
                        }
                        match ServerName::parse(v) {
                            Ok(n) => parsed.push((n, s)),
                            Err(m) => self.error_at(s, arg, "server-name", m),
                        }
                    }
                }
                "listen" if !s.args.is_empty() => listens.push(*s),
                _ => {}
            }
        }
        if !items.iter().any(|(_, s)| s.name() == "server_name") {
            names.push(String::new());
            parsed.push((ServerName::Exact(String::new()), d));
        }
        self.rewrite_program(items, &mut conf, Level::Server);
        conf.try_files = self.try_files(items);
        conf.proxy = None;
        let conf = conf.seal();
        let mut locations = Locations::default();
        let mut named = HashMap::new();
        self.locations(items, &conf, Level::Server, "", &mut locations, &mut named);
        self.plan.servers.push(Server {
            index,
            names,
            place: self.place(d),
            conf,
            locations,
            named,
        });
        // Sockets.
        if listens.is_empty() {
            let addr = ListenAddr::Tcp(std::net::SocketAddr::from((
                [0, 0, 0, 0],
                self.options.default_port,
            )));
            self.add_listen(d, addr, ListenOpts::default(), index);
        }
        for l in listens {
            let a = args(l);
            let addr = match listen::parse_addr(a[0]) {
                Ok(addr) => addr,
                Err(m) => {
                    self.error_at(l, &l.args[0], "listen", m);
                    continue;
                }
            };
            match listen::parse_opts(&a[1..]) {
                Ok(opts) => self.add_listen(l, addr, opts, index),
                Err(m) => self.error(l, "listen", m),
            }
        }
    }

    fn add_listen(&mut self, d: &Directive, addr: ListenAddr, opts: ListenOpts, server: usize) {
        let i = match self.sockets.iter().position(|s| s.addr == addr) {
            Some(i) => i,
            None => {
                self.sockets.push(SocketBuild {
                    addr: addr.clone(),
                    opts: ListenOpts::default(),
                    servers: Vec::new(),
                    default: None,
                    opts_set: false,
                });
                self.sockets.len() - 1
            }
        };
        let s = &mut self.sockets[i];
        if s.servers.contains(&server) {
            let m = format!("a duplicate listen {addr}");
            return self.error(d, "duplicate-listen", m);
        }
        if opts.sets_socket_options() {
            if s.opts_set {
                return self.error(
                    d,
                    "duplicate-listen",
                    format!("duplicate listen options for {addr}"),
                );
            }
            s.opts_set = true;
        }
        if opts.default_server {
            if s.default.is_some() {
                return self.error(
                    d,
                    "duplicate-default",
                    format!("a duplicate default server for {addr}"),
                );
            }
            s.default = Some(server);
        }
        // Options of the socket: ssl/http2/proxy_protocol accumulate; the rest from the one
        // listen that sets them.
        let merged = ListenOpts {
            ssl: s.opts.ssl || opts.ssl,
            http2: s.opts.http2 || opts.http2,
            proxy_protocol: s.opts.proxy_protocol || opts.proxy_protocol,
            default_server: s.opts.default_server || opts.default_server,
            ..if opts.sets_socket_options() {
                opts.clone()
            } else {
                s.opts.clone()
            }
        };
        s.opts = merged;
        s.servers.push(server);
    }

    /// Settings a block sets itself (not those of nested blocks).
    fn own_settings(&mut self, items: &[Item<'a>], s: &mut Settings, level: Level) {
        // `proxy_redirect default` reads this block's proxy_pass, which must come first and
        // have no variables (nginx refuses the configuration otherwise). `Some(variables)`.
        let mut proxy_pass = None;
        for (file, d) in items {
            match d.name() {
                "proxy_pass" => proxy_pass = Some(d.args.iter().any(|a| a.value.contains('$'))),
                "proxy_redirect" if d.args.len() == 1 && d.args[0].value == "default" => {
                    match proxy_pass {
                        Some(true) => self.error(
                            d,
                            "proxy-redirect",
                            "\"proxy_redirect default\" cannot be used with \"proxy_pass\" directive with variables",
                        ),
                        None => self.error(
                            d,
                            "proxy-redirect",
                            "\"proxy_redirect default\" should be placed after the \"proxy_pass\" directive",
                        ),
                        Some(false) => {}
                    }
                }
                _ => {}
            }
            if d.name() == "types" {
                if let Some(b) = &d.block {
                    let entries = self.expand(*file, &b.directives);
                    let mut map = super::LookupMap::default();
                    for (_, e) in entries {
                        for ext in &e.args {
                            map.insert(ext.value.to_ascii_lowercase(), e.name().to_string());
                        }
                    }
                    s.types = Some(Arc::new(map));
                }
                continue;
            }
            self.setting(d, s, level);
        }
    }

    fn setting(&mut self, d: &Directive, s: &mut Settings, level: Level) {
        let a = args(d);
        let Some(&first) = a.first() else {
            return;
        };
        let flag = |v: &str| v.eq_ignore_ascii_case("on");
        let msec = |v: &str| parse_time(v, false).unwrap_or(0);
        let size = |v: &str| parse_size(v, false).unwrap_or(0);
        match d.name() {
            "root" | "alias" => {
                let alias = d.name() == "alias";
                if let Some(prev) = &s.root {
                    let m = if prev.alias == alias {
                        format!("\"{}\" directive is duplicate", d.name())
                    } else {
                        format!(
                            "\"{}\" directive is duplicate, \"{}\" directive was specified earlier",
                            d.name(),
                            if prev.alias { "alias" } else { "root" }
                        )
                    };
                    return self.error(d, "duplicate", m);
                }
                if alias && level == Level::Named {
                    return self.error(
                        d,
                        "alias",
                        "the \"alias\" directive cannot be used inside the named location",
                    );
                }
                for v in ["document_root", "realpath_root"] {
                    if first.contains(&format!("${v}")) || first.contains(&format!("${{{v}}}")) {
                        let m = format!(
                            "the ${v} variable cannot be used in the \"{}\" directive",
                            d.name()
                        );
                        return self.error(d, "variable", m);
                    }
                }
                let mut path = self.template(d, &d.args[0]);
                if !path.has_variables() && !first.starts_with('/') {
                    path = Template::literal(&self.full_name(first));
                }
                s.root = Some(Root { path, alias });
            }
            "allow" | "deny" => match AccessRule::parse(d.name() == "allow", first) {
                Ok((rule, warning)) => {
                    if let Some(w) = warning {
                        self.out.push(
                            Diagnostic::warning("access", w)
                                .at(d.args[0].span)
                                .line_at(d.end_span()),
                        );
                    }
                    s.access.get_or_insert_with(Vec::new).push(rule);
                }
                Err(m) => self.error_at(d, &d.args[0], "invalid-value", m),
            },
            "set_real_ip_from" => match AccessRule::parse(true, first) {
                Ok((rule, warning)) => {
                    if let Some(w) = warning {
                        self.out.push(
                            Diagnostic::warning("realip", w)
                                .at(d.args[0].span)
                                .line_at(d.end_span()),
                        );
                    }
                    let list = s.real_ip_from.get_or_insert_with(Default::default);
                    Arc::make_mut(list).push(rule);
                }
                Err(_) => {
                    // nginx resolves a host name here; the compiler makes no lookups, and
                    // an address left out only trusts less.
                    self.out.push(
                        Diagnostic::warning(
                            "realip",
                            format!(
                                "host names in \"set_real_ip_from\" are not supported yet; \"{first}\" is ignored"
                            ),
                        )
                        .at(d.args[0].span)
                        .line_at(d.end_span()),
                    );
                }
            },
            "real_ip_header" => {
                s.real_ip_header = Some(match first {
                    "X-Real-IP" => RealIpHeader::XRealIp,
                    "X-Forwarded-For" => RealIpHeader::XForwardedFor,
                    "proxy_protocol" => RealIpHeader::ProxyProtocol,
                    other => RealIpHeader::Other(other.to_ascii_lowercase()),
                })
            }
            "real_ip_recursive" => s.real_ip_recursive = Some(flag(first)),
            "index" => {
                let list = d.args.iter().map(|a| self.template(d, a)).collect();
                s.index = Some(list);
            }
            "error_page" => self.error_page(d, &a, s),
            "recursive_error_pages" => s.recursive_error_pages = Some(flag(first)),
            "add_header" if a.len() >= 2 => {
                let value = self.template(d, &d.args[1]);
                let always = a.get(2) == Some(&"always");
                if a.len() == 3 && !always {
                    return self.error(d, "invalid-value", format!("invalid value \"{}\"", a[2]));
                }
                s.add_header.get_or_insert_with(Vec::new).push(AddHeader {
                    name: first.to_string(),
                    value,
                    always,
                });
            }
            "default_type" => s.default_type = Some(first.to_string()),
            "charset" => s.charset = Some(first.to_string()),
            "error_log" => {
                let path = if first == "stderr" || first.starts_with('/') {
                    first.to_string()
                } else {
                    self.full_name(first)
                };
                let level = a.get(1).map_or("error", |l| l).to_string();
                let entry = (path, level);
                if !self.plan.error_logs.contains(&entry) {
                    self.plan.error_logs.push(entry.clone());
                }
                // The first of a level's error_logs is the one Portico writes to.
                if s.error_log.is_none() {
                    s.error_log = Some(Some(entry));
                }
            }
            "charset_types" => {
                // text/html is always among them, as in nginx.
                let mut types: Vec<String> = a.iter().map(|t| t.to_ascii_lowercase()).collect();
                if !types.iter().any(|t| t == "text/html") {
                    types.push("text/html".to_string());
                }
                s.charset_types = Some(types);
            }
            "client_max_body_size" => {
                s.client_max_body_size = Some(parse_size(first, true).unwrap_or(0))
            }
            "client_body_buffer_size" => s.client_body_buffer_size = Some(size(first)),
            "client_body_timeout" => s.client_body_timeout = Some(msec(first)),
            "client_header_timeout" => s.client_header_timeout = Some(msec(first)),
            "client_header_buffer_size" => s.client_header_buffer_size = Some(size(first)),
            "large_client_header_buffers" if a.len() == 2 => {
                s.large_client_header_buffers = Some((first.parse().unwrap_or(4), size(a[1])))
            }
            "send_timeout" => s.send_timeout = Some(msec(first)),
            "keepalive_timeout" => {
                let header = a.get(1).and_then(|v| parse_time(v, true));
                s.keepalive_timeout = Some((msec(first), header));
            }
            "keepalive_requests" => s.keepalive_requests = Some(first.parse().unwrap_or(1000)),
            "keepalive_time" => s.keepalive_time = Some(msec(first)),
            "keepalive_disable" => {
                s.keepalive_disable = Some(a.iter().map(|v| v.to_string()).collect())
            }
            "server_tokens" => {
                s.server_tokens = Some(match first {
                    "off" => ServerTokens::Off,
                    "build" => ServerTokens::Build,
                    _ => ServerTokens::On,
                })
            }
            "port_in_redirect" => s.port_in_redirect = Some(flag(first)),
            "absolute_redirect" => s.absolute_redirect = Some(flag(first)),
            "server_name_in_redirect" => s.server_name_in_redirect = Some(flag(first)),
            "merge_slashes" => s.merge_slashes = Some(flag(first)),
            "underscores_in_headers" => s.underscores_in_headers = Some(flag(first)),
            "ignore_invalid_headers" => s.ignore_invalid_headers = Some(flag(first)),
            "chunked_transfer_encoding" => s.chunked_transfer_encoding = Some(flag(first)),
            "log_not_found" => s.log_not_found = Some(flag(first)),
            "autoindex" => s.autoindex = Some(flag(first)),
            "autoindex_exact_size" => s.autoindex_exact_size = Some(flag(first)),
            "autoindex_localtime" => s.autoindex_localtime = Some(flag(first)),
            "autoindex_format" => s.autoindex_format = Some(first.to_string()),
            "etag" => s.etag = Some(flag(first)),
            "if_modified_since" => s.if_modified_since = Some(first.to_string()),
            "expires" => {
                s.expires = Some(a.iter().map(|v| v.to_string()).collect());
                let value = &d.args[d.args.len() - 1];
                let t = self.template(d, value);
                s.expires_value = Some(t.has_variables().then_some(t));
            }
            "gzip_static" => s.gzip_static = Some(first.to_string()),
            "gzip_vary" => s.gzip_vary = Some(flag(first)),
            "sendfile" => s.sendfile = Some(flag(first)),
            "gzip_http_version" => s.gzip_http_version = Some(first.to_string()),
            "gzip_proxied" => s.gzip_proxied = Some(a.iter().map(|v| v.to_string()).collect()),
            "max_ranges" => s.max_ranges = Some(first.parse().ok()),
            "tcp_nodelay" => s.tcp_nodelay = Some(flag(first)),
            "disable_symlinks" => s.disable_symlinks = Some(first != "off"),
            "access_log" => {
                let list = s.access_log.get_or_insert_with(Vec::new);
                if first == "off" {
                    list.clear();
                } else {
                    let mut log = AccessLog {
                        path: if first.starts_with('/')
                            || first.contains('$')
                            || first == "stderr"
                            || first.starts_with("syslog:")
                        {
                            Template::compile(first).unwrap_or_else(|_| Template::literal(first))
                        } else {
                            Template::literal(&self.full_name(first))
                        },
                        format: a.get(1).unwrap_or(&"combined").to_string(),
                        buffer: None,
                        flush: None,
                        condition: None,
                    };
                    for p in a.iter().skip(2) {
                        if let Some(v) = p.strip_prefix("buffer=") {
                            log.buffer = parse_size(v, false);
                        } else if let Some(v) = p.strip_prefix("flush=") {
                            log.flush = parse_time(v, false);
                        } else if let Some(v) = p.strip_prefix("if=") {
                            log.condition = Template::compile(v).ok();
                        }
                    }
                    // A file named outright is made when the server starts, as nginx opens it.
                    if let Some(p) = log.path.as_literal()
                        && p != "stderr"
                        && !p.starts_with("syslog:")
                        && !self.plan.access_log_files.iter().any(|f| f == p)
                    {
                        self.plan.access_log_files.push(p.to_string());
                    }
                    list.push(log);
                }
            }
            "proxy_set_header" if a.len() == 2 => {
                let value = self.template(d, &d.args[1]);
                s.proxy_set_header
                    .get_or_insert_with(Vec::new)
                    .push((first.to_string(), value));
            }
            "proxy_http_version" => s.proxy_http_version = Some(first.to_string()),
            "proxy_pass_request_headers" => s.proxy_pass_request_headers = Some(flag(first)),
            "proxy_pass_request_body" => s.proxy_pass_request_body = Some(flag(first)),
            "proxy_hide_header" => s
                .proxy_hide_header
                .get_or_insert_with(Vec::new)
                .push(first.to_ascii_lowercase()),
            "proxy_pass_header" => s
                .proxy_pass_header
                .get_or_insert_with(Vec::new)
                .push(first.to_ascii_lowercase()),
            "proxy_redirect" => {
                let list = s.proxy_redirect.get_or_insert_with(Vec::new);
                match (first, a.get(1)) {
                    ("default", None) => list.push(ProxyRedirect::Default),
                    ("off", None) => list.push(ProxyRedirect::Off),
                    (from, Some(to)) => {
                        let to = Template::compile(to).unwrap_or_else(|_| Template::literal(to));
                        let regex = from
                            .strip_prefix("~*")
                            .map(|r| (r, true))
                            .or_else(|| from.strip_prefix('~').map(|r| (r, false)));
                        if let Some((re, caseless)) = regex {
                            match Regex::new(re, caseless) {
                                Ok(regex) => list.push(ProxyRedirect::Regex { regex, to }),
                                Err(m) => self.error_at(d, &d.args[0], "regex", m),
                            }
                        } else {
                            let from =
                                Template::compile(from).unwrap_or_else(|_| Template::literal(from));
                            list.push(ProxyRedirect::Replace { from, to });
                        }
                    }
                    _ => self.error(d, "invalid-value", format!("invalid parameter \"{first}\"")),
                }
            }
            "proxy_cookie_domain" | "proxy_cookie_path" => {
                let domain = d.name() == "proxy_cookie_domain";
                // A domain's leading dot is not part of what is matched or written.
                let undot = |v: &str| -> String {
                    if domain {
                        v.strip_prefix('.').unwrap_or(v).to_string()
                    } else {
                        v.to_string()
                    }
                };
                let rule = match (first, a.get(1)) {
                    ("off", None) => Some(ProxyRedirect::Off),
                    (from, Some(to)) => {
                        let to = undot(to);
                        let to = Template::compile(&to).unwrap_or_else(|_| Template::literal(&to));
                        let regex = from
                            .strip_prefix("~*")
                            .map(|r| (r, true))
                            .or_else(|| from.strip_prefix('~').map(|r| (r, false)));
                        match regex {
                            // A domain regex is always caseless, as in nginx.
                            Some((re, caseless)) => match Regex::new(re, caseless || domain) {
                                Ok(regex) => Some(ProxyRedirect::Regex { regex, to }),
                                Err(m) => {
                                    self.error_at(d, &d.args[0], "regex", m);
                                    None
                                }
                            },
                            None => {
                                let from = undot(from);
                                let from = Template::compile(&from)
                                    .unwrap_or_else(|_| Template::literal(&from));
                                Some(ProxyRedirect::Replace { from, to })
                            }
                        }
                    }
                    _ => {
                        self.error(d, "invalid-value", format!("invalid parameter \"{first}\""));
                        None
                    }
                };
                let list = if domain {
                    s.proxy_cookie_domain.get_or_insert_with(Vec::new)
                } else {
                    s.proxy_cookie_path.get_or_insert_with(Vec::new)
                };
                match rule {
                    Some(ProxyRedirect::Off) => list.clear(),
                    Some(r) => list.push(r),
                    None => {}
                }
            }
            "proxy_buffering" => s.proxy_buffering = Some(flag(first)),
            "proxy_request_buffering" => s.proxy_request_buffering = Some(flag(first)),
            "proxy_buffer_size" => s.proxy_buffer_size = Some(size(first)),
            "proxy_buffers" if a.len() == 2 => {
                s.proxy_buffers = Some((first.parse().unwrap_or(8), size(a[1])))
            }
            "proxy_busy_buffers_size" => s.proxy_busy_buffers_size = Some(size(first)),
            "proxy_max_temp_file_size" => s.proxy_max_temp_file_size = Some(size(first)),
            "proxy_temp_file_write_size" => s.proxy_temp_file_write_size = Some(size(first)),
            "proxy_connect_timeout" => s.proxy_connect_timeout = Some(msec(first)),
            "proxy_read_timeout" => s.proxy_read_timeout = Some(msec(first)),
            "proxy_send_timeout" => s.proxy_send_timeout = Some(msec(first)),
            "proxy_next_upstream" => {
                let mut n = NextUpstream::default();
                for v in &a {
                    match *v {
                        "error" => n.error = true,
                        "timeout" => n.timeout = true,
                        "invalid_header" => n.invalid_header = true,
                        "denied" => n.denied = true,
                        "non_idempotent" => n.non_idempotent = true,
                        "off" => {}
                        _ => match v
                            .strip_prefix("http_")
                            .and_then(|c| c.parse::<u16>().ok())
                            .and_then(|c| NextUpstream::STATUSES.iter().position(|s| *s == c))
                        {
                            Some(i) => n.statuses.bits |= 1 << i,
                            None => {
                                return self.error(
                                    d,
                                    "invalid-value",
                                    format!("invalid value \"{v}\""),
                                );
                            }
                        },
                    }
                }
                s.proxy_next_upstream = Some(n);
            }
            "proxy_next_upstream_tries" => {
                s.proxy_next_upstream_tries = Some(first.parse().unwrap_or(0))
            }
            "proxy_next_upstream_timeout" => s.proxy_next_upstream_timeout = Some(msec(first)),
            "proxy_intercept_errors" => s.proxy_intercept_errors = Some(flag(first)),
            "proxy_ignore_client_abort" => s.proxy_ignore_client_abort = Some(flag(first)),
            "proxy_method" => s.proxy_method = Some(Some(self.template(d, &d.args[0]))),
            "proxy_set_body" => s.proxy_set_body = Some(Some(self.template(d, &d.args[0]))),
            "proxy_ignore_headers" => {
                s.proxy_ignore_headers = Some(a.iter().map(|v| v.to_string()).collect())
            }
            "client_body_temp_path" => s.client_body_temp_path = Some(first.to_string()),
            "ssl_certificate" | "ssl_certificate_key" => {
                if first.contains('$') || first.starts_with("data:") {
                    let m = format!(
                        "\"{}\" with variables or \"data:\" is not supported yet",
                        d.name()
                    );
                    return self.error(d, "unsupported", m);
                }
                let path = if first.starts_with('/') {
                    first.to_string()
                } else {
                    let dir = std::path::Path::new(&self.options.conf_prefix);
                    dir.join(first).to_string_lossy().into_owned()
                };
                let list = if d.name() == "ssl_certificate" {
                    &mut s.ssl_certificate
                } else {
                    &mut s.ssl_certificate_key
                };
                list.get_or_insert_with(Vec::new).push(path);
            }
            "ssl_protocols" => s.ssl_protocols = Some(a.iter().map(|v| v.to_string()).collect()),
            "ssl_ciphers" => s.ssl_ciphers = Some(first.to_string()),
            "ssl_prefer_server_ciphers" => s.ssl_prefer_server_ciphers = Some(flag(first)),
            "ssl_session_timeout" => s.ssl_session_timeout = Some(msec(first)),
            "ssl_session_tickets" => s.ssl_session_tickets = Some(flag(first)),
            "ssl_ecdh_curve" => s.ssl_ecdh_curve = Some(first.to_string()),
            "ssl_reject_handshake" => s.ssl_reject_handshake = Some(flag(first)),
            "ssl_session_cache" => match session_cache(&a) {
                Ok(c) => s.ssl_session_cache = Some(c),
                Err(bad) => {
                    return self.error(
                        d,
                        "invalid-value",
                        format!("invalid session cache \"{bad}\""),
                    );
                }
            },
            "proxy_temp_path" => s.proxy_temp_path = Some(first.to_string()),
            _ => {}
        }
    }

    fn error_page(&mut self, d: &Directive, a: &[&str], s: &mut Settings) {
        let uri_arg = d.args.last().expect("arity checked");
        let mut codes = Vec::new();
        let mut overwrite = None;
        for (i, v) in a[..a.len() - 1].iter().enumerate() {
            if let Some(code) = v.strip_prefix('=') {
                if code.is_empty() {
                    overwrite = Some(None);
                } else {
                    match code.parse::<u16>() {
                        Ok(c) if (100..=599).contains(&c) => overwrite = Some(Some(c)),
                        _ => {
                            return self.error_at(
                                d,
                                &d.args[i],
                                "invalid-value",
                                format!("invalid value \"{v}\""),
                            );
                        }
                    }
                }
                continue;
            }
            match v.parse::<u16>() {
                Ok(c) if (300..=599).contains(&c) && c != 499 => codes.push(c),
                Ok(_) => {
                    return self.error_at(
                        d,
                        &d.args[i],
                        "invalid-value",
                        format!("value \"{v}\" must be between 300 and 599"),
                    );
                }
                Err(_) => {
                    return self.error_at(
                        d,
                        &d.args[i],
                        "invalid-value",
                        format!("invalid value \"{v}\""),
                    );
                }
            }
        }
        let uri = self.template(d, uri_arg);
        s.error_page.get_or_insert_with(Vec::new).push(ErrorPage {
            codes,
            overwrite,
            uri,
        });
    }

    fn try_files(&mut self, items: &[Item<'a>]) -> Option<Vec<Template>> {
        let (_, d) = items
            .iter()
            .find(|(_, d)| d.name() == "try_files" && d.args.len() >= 2)?;
        Some(d.args.iter().map(|a| self.template(d, a)).collect())
    }

    // ---- rewrite module ----------------------------------------------------------------

    fn rewrite_program(&mut self, items: &[Item<'a>], conf: &mut LocConf, level: Level) {
        let parent = LocConf {
            settings: conf.settings.clone(),
            proxy: conf.proxy.clone(),
            location_name: conf.location_name.clone(),
            ..LocConf::default()
        };
        let mut ops = Vec::new();
        for (file, d) in items {
            if let Some(op) = self.op(*file, d, &parent, level) {
                ops.push(op);
            }
        }
        conf.ops = ops;
    }

    fn op(&mut self, file: FileId, d: &'a Directive, parent: &LocConf, level: Level) -> Option<Op> {
        let a = args(d);
        match d.name() {
            "rewrite" if (2..=3).contains(&a.len()) => {
                let regex = self.regex(d, &d.args[0], a[0], false)?;
                let flag = match a.get(2) {
                    None => RewriteFlag::None,
                    Some(&"last") => RewriteFlag::Last,
                    Some(&"break") => RewriteFlag::Break,
                    Some(&"redirect") => RewriteFlag::Redirect,
                    Some(&"permanent") => RewriteFlag::Permanent,
                    Some(other) => {
                        self.error_at(
                            d,
                            &d.args[2],
                            "invalid-value",
                            format!("invalid parameter \"{other}\""),
                        );
                        return None;
                    }
                };
                let replacement = self.template(d, &d.args[1]);
                Some(Op::Rewrite {
                    regex,
                    replacement,
                    flag,
                    place: self.place(d),
                })
            }
            "return" if (1..=2).contains(&a.len()) => {
                let (code, text) = match a[0].parse::<u16>() {
                    Ok(code) if a[0].len() == 3 || code == 444 => {
                        if code > 999 {
                            self.error(
                                d,
                                "invalid-value",
                                format!("invalid return code \"{}\"", a[0]),
                            );
                            return None;
                        }
                        (code, d.args.get(1).map(|t| self.template(d, t)))
                    }
                    _ if a.len() == 1 => {
                        let url = a[0];
                        if url.starts_with("http://")
                            || url.starts_with("https://")
                            || url.starts_with("$scheme")
                        {
                            (302, Some(self.template(d, &d.args[0])))
                        } else {
                            self.error(
                                d,
                                "invalid-value",
                                format!("invalid return code \"{url}\""),
                            );
                            return None;
                        }
                    }
                    _ => {
                        self.error(
                            d,
                            "invalid-value",
                            format!("invalid return code \"{}\"", a[0]),
                        );
                        return None;
                    }
                };
                Some(Op::Return {
                    code,
                    text,
                    place: self.place(d),
                })
            }
            "set" if a.len() == 2 => {
                let Some(var) = a[0].strip_prefix('$') else {
                    self.error_at(
                        d,
                        &d.args[0],
                        "invalid-value",
                        format!("invalid variable name \"{}\"", a[0]),
                    );
                    return None;
                };
                let value = self.template(d, &d.args[1]);
                Some(Op::Set {
                    var: var.to_ascii_lowercase(),
                    value,
                })
            }
            "break" => Some(Op::Break),
            "if" => {
                let block = d.block.as_ref()?;
                let cond = self.cond(d)?;
                let inner = self.expand(file, &block.directives);
                let mut conf = LocConf::default();
                self.own_settings(&inner, &mut conf.settings, Level::If);
                conf.settings.inherit(&parent.settings);
                conf.location_name = parent.location_name.clone();
                conf.alias_name = parent.alias_name.clone();
                conf.proxy = self
                    .proxy_pass(&inner, Level::If, &parent.location_name)
                    .or_else(|| parent.proxy.clone());
                conf.try_files = None;
                self.rewrite_program(&inner, &mut conf, Level::If);
                let ops = std::mem::take(&mut conf.ops);
                let _ = level;
                Some(Op::If {
                    cond,
                    ops,
                    conf: conf.seal(),
                    place: self.place(d),
                })
            }
            _ => None,
        }
    }

    /// The condition of `if (...)`, parentheses stripped as `ngx_http_rewrite_if` does.
    fn cond(&mut self, d: &Directive) -> Option<Cond> {
        let invalid = |l: &mut Self| {
            let shown = d.args.first().map_or("", |a| a.value.as_str()).to_string();
            l.error(d, "if", format!("invalid condition \"{shown}\""));
            None
        };
        let mut words: Vec<Arg> = d.args.clone();
        let Some(first) = words.first_mut().filter(|a| a.value.starts_with('(')) else {
            return invalid(self);
        };
        first.value.remove(0);
        if first.value.is_empty() {
            words.remove(0);
        }
        let Some(last) = words.last_mut().filter(|a| a.value.ends_with(')')) else {
            return invalid(self);
        };
        last.value.pop();
        if last.value.is_empty() {
            words.pop();
        }
        let a: Vec<&str> = words.iter().map(|w| w.value.as_str()).collect();
        match a.as_slice() {
            [v] if v.len() > 1 && v.starts_with('$') => {
                Some(Cond::Value(self.template(d, &words[0])))
            }
            [op, _]
                if matches!(
                    *op,
                    "-f" | "!-f" | "-d" | "!-d" | "-e" | "!-e" | "-x" | "!-x"
                ) =>
            {
                let negate = op.starts_with('!');
                let test = op.chars().last().unwrap_or('f');
                Some(Cond::File {
                    test,
                    path: self.template(d, &words[1]),
                    negate,
                })
            }
            [left, op, right] if left.len() > 1 && left.starts_with('$') => {
                let l = self.template(d, &words[0]);
                match *op {
                    "=" | "!=" => Some(Cond::Eq {
                        left: l,
                        right: self.template(d, &words[2]),
                        negate: *op == "!=",
                    }),
                    "~" | "~*" | "!~" | "!~*" => {
                        let regex = self.regex(d, &words[2], right, op.ends_with('*'))?;
                        Some(Cond::Regex {
                            left: l,
                            regex,
                            negate: op.starts_with('!'),
                        })
                    }
                    _ => {
                        self.error(d, "if", format!("unexpected \"{op}\" in condition"));
                        None
                    }
                }
            }
            [v, ..] if v.starts_with('$') && a.len() == 2 => {
                self.error(d, "if", format!("unexpected \"{}\" in condition", a[1]));
                None
            }
            _ => {
                let v = a.first().copied().unwrap_or("");
                self.error(d, "if", format!("invalid condition \"{v}\""));
                None
            }
        }
    }

    /// `location_name`: the location's, which `proxy_redirect default` puts in place of the
    /// URL's URI part.
    fn proxy_pass(
        &mut self,
        items: &[Item<'a>],
        level: Level,
        location_name: &str,
    ) -> Option<Arc<ProxyPass>> {
        let (_, d) = items
            .iter()
            .find(|(_, d)| d.name() == "proxy_pass" && d.args.len() == 1)?;
        let raw = d.args[0].value.as_str();
        let url = self.template(d, &d.args[0]);
        let (https, rest) = if let Some(r) = raw.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = raw.strip_prefix("https://") {
            (true, r)
        } else if url.has_variables() {
            // nginx checks a URL with variables per request (`http:/$uri` is fine if `$uri`
            // starts with a slash).
            (false, raw)
        } else {
            self.error_at(
                d,
                &d.args[0],
                "proxy-pass",
                format!("invalid URL prefix in \"{raw}\""),
            );
            return None;
        };
        let default_port = if https { 443 } else { 80 };
        let (authority, uri) = split_authority(rest);
        if uri.is_some()
            && !url.has_variables()
            && matches!(
                level,
                Level::Regex | Level::Named | Level::If | Level::LimitExcept
            )
        {
            self.error(d, "proxy-pass", "\"proxy_pass\" cannot have URI part in location given by regular expression, or inside named location, or inside \"if\" statement, or inside \"limit_except\" block");
            return None;
        }
        let mut upstream = None;
        let (mut host, mut port) = (String::new(), default_port);
        if !url.has_variables() {
            if authority.starts_with("unix:") {
                port = 0;
            } else if let Some((h, p)) = crate::config::env::upstream_host(authority, default_port)
            {
                host = h;
                port = p;
            } else {
                self.error_at(
                    d,
                    &d.args[0],
                    "proxy-pass",
                    format!("invalid host in upstream \"{authority}\""),
                );
                return None;
            }
            // An `upstream` block of that name, or the implicit group of an earlier proxy_pass.
            upstream = self.upstreams.get(authority).cloned();
            if upstream.is_none() {
                let name = authority.to_string();
                let addr = if let Some(path) = authority.strip_prefix("unix:") {
                    PeerAddr::Unix {
                        path: path.to_string(),
                    }
                } else {
                    PeerAddr::Tcp {
                        host: host.clone(),
                        port,
                    }
                };
                let up = self.upstreams.entry(name.clone()).or_insert_with(|| {
                    Arc::new(Upstream {
                        name: name.clone(),
                        implicit: true,
                        servers: vec![Peer::new(addr)],
                        balance: Balance::RoundRobin,
                        keepalive: None,
                        place: Place {
                            file: String::new(),
                            line: 0,
                            span: d.name.span,
                            line_span: d.name.span,
                        },
                    })
                });
                upstream = Some(up.clone());
                if !self.upstream_order.contains(&name) {
                    self.upstream_order.push(name);
                }
            }
        }
        // $proxy_host: the host as written, with the port unless it is the scheme's default.
        let proxy_host = if authority.starts_with("unix:") {
            "localhost".to_string()
        } else {
            match authority.rsplit_once(':') {
                Some((h, p))
                    if !authority.ends_with(']') && p.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    if p.parse::<u16>().ok() == Some(default_port) {
                        h.to_string()
                    } else {
                        authority.to_string()
                    }
                }
                _ => authority.to_string(),
            }
        };
        // `proxy_redirect default`: the URL (with a slash when it has no URI part) becomes
        // the location's name (or a slash). Written here, as nginx's merge writes it once.
        let default_redirect: Arc<[Redirect]> = if url.has_variables() {
            Arc::from([])
        } else if uri.is_some() {
            Arc::from([Redirect::Prefix {
                from: url.source.clone(),
                to: location_name.to_string(),
            }])
        } else {
            Arc::from([Redirect::Prefix {
                from: format!("{}/", url.source),
                to: "/".into(),
            }])
        };
        Some(Arc::new(ProxyPass {
            url,
            https,
            upstream,
            default_redirect,
            host: proxy_host,
            port,
            uri,
            place: self.place(d),
        }))
    }

    // ---- locations ---------------------------------------------------------------------

    fn locations(
        &mut self,
        items: &[Item<'a>],
        parent: &Arc<LocConf>,
        level: Level,
        parent_name: &str,
        out: &mut Locations,
        named: &mut HashMap<String, Arc<Location>>,
    ) {
        let mut seen: Vec<(String, bool)> = Vec::new();
        for (file, d) in items {
            if d.name() != "location" {
                continue;
            }
            let Some(block) = &d.block else { continue };
            let a = args(d);
            let (kind, lvl) = match a.as_slice() {
                [m, name] => match *m {
                    "=" => (LocationKind::Exact(name.to_string()), Level::Exact),
                    "^~" => (
                        LocationKind::Prefix {
                            name: name.to_string(),
                            noregex: true,
                        },
                        Level::Prefix,
                    ),
                    "~" | "~*" => match self.regex(d, &d.args[1], name, *m == "~*") {
                        Some(r) => (LocationKind::Regex(r), Level::Regex),
                        None => continue,
                    },
                    _ => {
                        self.error_at(
                            d,
                            &d.args[0],
                            "location",
                            format!("invalid location modifier \"{m}\""),
                        );
                        continue;
                    }
                },
                [name] => {
                    if let Some(n) = name.strip_prefix('=') {
                        (LocationKind::Exact(n.to_string()), Level::Exact)
                    } else if let Some(n) = name.strip_prefix("^~") {
                        (
                            LocationKind::Prefix {
                                name: n.to_string(),
                                noregex: true,
                            },
                            Level::Prefix,
                        )
                    } else if let Some(re) = name.strip_prefix('~') {
                        let (re, caseless) = match re.strip_prefix('*') {
                            Some(r) => (r, true),
                            None => (re, false),
                        };
                        match self.regex(d, &d.args[0], re, caseless) {
                            Some(r) => (LocationKind::Regex(r), Level::Regex),
                            None => continue,
                        }
                    } else if name.starts_with('@') {
                        (LocationKind::Named(name.to_string()), Level::Named)
                    } else {
                        (
                            LocationKind::Prefix {
                                name: name.to_string(),
                                noregex: false,
                            },
                            Level::Prefix,
                        )
                    }
                }
                _ => continue,
            };
            let name = match &kind {
                LocationKind::Exact(n)
                | LocationKind::Prefix { name: n, .. }
                | LocationKind::Named(n) => n.clone(),
                LocationKind::Regex(r) => r.as_str().to_string(),
            };
            if level != Level::Server {
                let outer = match level {
                    Level::Exact => Some("exact"),
                    Level::Named => Some("named"),
                    _ => None,
                };
                if let Some(kind_name) = outer {
                    self.error(d, "location", format!("location \"{name}\" cannot be inside the {kind_name} location \"{parent_name}\""));
                    continue;
                }
                if lvl == Level::Named {
                    self.error(
                        d,
                        "location",
                        format!("named location \"{name}\" can be on the server level only"),
                    );
                    continue;
                }
                if lvl != Level::Regex && level != Level::Regex && !name.starts_with(parent_name) {
                    self.error(
                        d,
                        "location",
                        format!("location \"{name}\" is outside location \"{parent_name}\""),
                    );
                    continue;
                }
            }
            let inner = self.expand(*file, &block.directives);
            let mut conf = LocConf::default();
            self.own_settings(&inner, &mut conf.settings, lvl);
            let own_root = conf.settings.root.is_some();
            conf.settings.inherit(&parent.settings);
            conf.internal = inner.iter().any(|(_, d)| d.name() == "internal");
            conf.location_name = match &kind {
                LocationKind::Prefix { name, .. } | LocationKind::Exact(name) => name.clone(),
                _ => String::new(),
            };
            conf.alias_name = if own_root {
                match &kind {
                    LocationKind::Prefix { name, .. } | LocationKind::Exact(name) => {
                        Some(name.clone())
                    }
                    _ => None,
                }
            } else {
                parent.alias_name.clone()
            };
            conf.proxy = self.proxy_pass(&inner, lvl, &conf.location_name);
            conf.try_files = self.try_files(&inner);
            self.limit_except(&inner, &mut conf);
            self.rewrite_program(&inner, &mut conf, lvl);
            let auto_redirect = conf.proxy.is_some()
                && name.ends_with('/')
                && !matches!(lvl, Level::Regex | Level::Named);
            let conf = conf.seal();
            let mut children = Locations::default();
            self.locations(&inner, &conf, lvl, &name, &mut children, named);
            let place = self.place(d);
            // Duplicates: the same name twice among exact, or twice among prefix locations.
            let key = match &kind {
                LocationKind::Exact(n) => Some((n.clone(), true)),
                LocationKind::Prefix { name, .. } => Some((name.clone(), false)),
                LocationKind::Named(n) => Some((n.clone(), false)),
                LocationKind::Regex(_) => None,
            };
            if let Some(key) = key {
                if seen.contains(&key) {
                    let m = format!(
                        "duplicate location \"{}\" in {}:{}",
                        key.0, place.file, place.line
                    );
                    self.out.push(
                        Diagnostic::error("duplicate-location", m)
                            .at(d.name.span)
                            .unlocated(),
                    );
                    continue;
                }
                seen.push(key);
            }
            let location = Arc::new(Location {
                kind,
                place,
                conf,
                children,
                auto_redirect,
            });
            if let LocationKind::Named(n) = &location.kind {
                named.insert(n.clone(), location.clone());
            } else {
                out.push(location);
            }
        }
    }

    fn limit_except(&mut self, items: &[Item<'a>], conf: &mut LocConf) {
        let Some((file, d)) = items.iter().find(|(_, d)| d.name() == "limit_except") else {
            return;
        };
        let Some(block) = &d.block else { return };
        let inner = self.expand(*file, &block.directives);
        let mut le = LocConf::default();
        self.own_settings(&inner, &mut le.settings, Level::LimitExcept);
        le.settings.inherit(&conf.settings);
        le.proxy = self
            .proxy_pass(&inner, Level::LimitExcept, &conf.location_name)
            .or_else(|| conf.proxy.clone());
        le.location_name = conf.location_name.clone();
        le.alias_name = conf.alias_name.clone();
        let mut methods: Vec<String> = d
            .args
            .iter()
            .map(|a| a.value.to_ascii_uppercase())
            .collect();
        if methods.iter().any(|m| m == "GET") {
            methods.push("HEAD".into());
        }
        conf.limit_except = Some((methods, le.seal()));
    }

    // ---- sockets -----------------------------------------------------------------------

    /// A `listen ... ssl` socket needs a certificate in its default server and, unless that
    /// server rejects handshakes, in no other (nginx's check after reading the configuration).
    fn tls_socket(&mut self, default: usize, servers: &[usize]) {
        let has = |i: usize| {
            let s = &self.plan.servers[i].conf.settings;
            (!s.ssl_certificate().is_empty(), s.ssl_reject_handshake())
        };
        let missing = match has(default) {
            (true, _) => None,
            (false, false) => Some(default),
            (false, true) => servers.iter().copied().find(|&i| has(i) == (false, false)),
        };
        if let Some(i) = missing {
            let place = &self.plan.servers[i].place;
            let m = "no \"ssl_certificate\" is defined for the \"listen ... ssl\" directive";
            self.out.push(
                Diagnostic::error("ssl-no-certificate", m)
                    .at(place.span)
                    .line_at(place.line_span),
            );
        }
    }

    /// Each certificate needs its key (nginx checks when it merges a server's settings).
    fn tls_keys(&mut self, s: &Settings) {
        let certs = s.ssl_certificate();
        let keys = s.ssl_certificate_key();
        let said = self.out.iter().any(|d| d.code == "ssl-no-key");
        if let Some(cert) = certs.get(keys.len())
            && !said
        {
            let m = format!("no \"ssl_certificate_key\" is defined for certificate \"{cert}\"");
            self.out
                .push(Diagnostic::error("ssl-no-key", m).unlocated());
        }
    }

    fn finish(&mut self) {
        let sockets = std::mem::take(&mut self.sockets);
        for s in sockets {
            let mut names = NameTable::default();
            for &i in &s.servers {
                let server = &self.plan.servers[i];
                for written in server.names.clone() {
                    let parsed = if written.is_empty() {
                        ServerName::Exact(String::new())
                    } else {
                        match ServerName::parse(&written) {
                            Ok(n) => n,
                            Err(_) => continue,
                        }
                    };
                    if !names.add(&parsed, i) {
                        let m = format!(
                            "conflicting server name \"{written}\" on {}, ignored",
                            s.addr
                        );
                        let place = &self.plan.servers[i].place;
                        let d = Diagnostic::warning("conflicting-server-name", m)
                            .at(place.span)
                            .note(format!("in the server at {}:{}", place.file, place.line));
                        self.out.push(d);
                    }
                }
            }
            let default = s.default.unwrap_or(s.servers[0]);
            if s.opts.ssl {
                self.tls_socket(default, &s.servers);
            }
            self.plan.sockets.push(Socket {
                addr: s.addr,
                opts: s.opts,
                servers: s.servers,
                names,
                default,
            });
        }
        for name in std::mem::take(&mut self.upstream_order) {
            if let Some(u) = self.upstreams.get(&name) {
                self.plan.upstreams.push(u.clone());
            }
        }
    }
}

/// `ssl_session_cache off | none | [builtin[:size]] [shared:name:size]`: the sessions the
/// caches hold together (nginx: about 4000 a megabyte). `Err` names the bad argument.
fn session_cache(args: &[&str]) -> Result<SessionCache, String> {
    let mut sessions = None;
    for &arg in args {
        match arg {
            "off" if args.len() == 1 => return Ok(SessionCache::Off),
            "none" if args.len() == 1 => return Ok(SessionCache::None),
            "builtin" => *sessions.get_or_insert(0) += 20480,
            _ => {
                if let Some(n) = arg.strip_prefix("builtin:") {
                    let n: usize = n.parse().map_err(|_| arg.to_string())?;
                    *sessions.get_or_insert(0) += n;
                } else if let Some(rest) = arg.strip_prefix("shared:") {
                    let (name, size) = rest.rsplit_once(':').ok_or_else(|| arg.to_string())?;
                    let bytes = parse_size(size, false).ok_or_else(|| arg.to_string())?;
                    if name.is_empty() || bytes < 8 * 4096 {
                        return Err(arg.to_string());
                    }
                    *sessions.get_or_insert(0) += (bytes / 256) as usize;
                } else {
                    return Err(arg.to_string());
                }
            }
        }
    }
    sessions
        .map(SessionCache::Sessions)
        .ok_or_else(|| args.first().unwrap_or(&"").to_string())
}

/// `host:port/uri` → (`host:port`, Some(`/uri`)); `unix:/path:/uri` → (`unix:/path`, Some(`/uri`)).
pub fn split_authority(rest: &str) -> (&str, Option<String>) {
    if let Some(path) = rest.strip_prefix("unix:") {
        return match path.find(':') {
            Some(i) => (&rest[..5 + i], Some(path[i + 1..].to_string())),
            None => (rest, None),
        };
    }
    match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    }
}
