//! The checks nginx makes while it reads a configuration, in the order it makes them: every
//! directive known, in an allowed context, with an allowed number of arguments, values of the
//! right form, not duplicated; plus Portico's own verdict on directives it does not implement.
//! Unlike nginx, the walk goes on after an error, so one run reports everything.

use std::collections::HashSet;

use super::ast::Directive;
use super::diag::Diagnostic;
use super::directives::{Context, Inner, Spec, Status, Table, Value};
use super::env::{self, Environment};
use super::load::{Included, Sources};
use super::span::{FileId, Span};
use super::vars;

/// How the main file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A whole `nginx.conf`: the top level is nginx's main context.
    Main,
    /// A lone sites-available file: the top level is the inside of `http {}`.
    Http,
}

/// Decides how to read a main file: as the inside of `http {}` when its top level holds
/// directives of the http context (server, upstream, map, ...) and none that only the main
/// context allows.
pub fn detect_mode(sources: &Sources) -> Mode {
    let Some(root) = sources.root else {
        return Mode::Main;
    };
    let table = Table::get();
    let (mut main_only, mut http_only) = (false, false);
    for d in &sources.tree(root).directives {
        let main = table.lookup(d.name()).any(|s| s.allowed_in(Context::Main));
        let http = table.lookup(d.name()).any(|s| s.allowed_in(Context::Http));
        main_only |= main && !http;
        http_only |= http && !main;
    }
    if http_only && !main_only {
        Mode::Http
    } else {
        Mode::Main
    }
}

/// Walks the include-expanded tree and returns every diagnostic in the order nginx would meet it.
pub fn validate(sources: &Sources, mode: Mode, env: Option<&dyn Environment>) -> Vec<Diagnostic> {
    let mut w = Walker {
        sources,
        env,
        upstreams: HashSet::new(),
        implicit: Vec::new(),
        listens: Vec::new(),
        table: Table::get(),
        out: Vec::new(),
        cursor: vec![0; sources.trees.len()],
        loaded: HashSet::new(),
        depth: 0,
        vars: VarCheck::default(),
        log_formats: HashSet::from(["combined".to_string()]),
    };
    if let Some(e) = &sources.root_error {
        w.out.push(e.clone());
        return w.out;
    }
    let top = match mode {
        Mode::Main => Context::Main,
        Mode::Http => Context::Http,
    };
    let mut seen = HashSet::new();
    if let Some(g) = sources.globals {
        w.file(g, Context::Main, &mut HashSet::new());
        if mode == Mode::Main {
            // nginx applies -g directives at the same level as the file's main context.
            seen = w.top_names(g);
        }
    }
    if let Some(root) = sources.root {
        w.file(root, top, &mut seen);
        if mode == Mode::Http {
            w.end_of_http();
        }
        if mode == Mode::Main && !w.has_top(root, "events") {
            w.out.push(Diagnostic::error(
                "no-events",
                "no \"events\" section in configuration",
            ));
        }
    }
    w.bind_listeners();
    w.out
}

struct Walker<'a> {
    sources: &'a Sources,
    /// The machine, for the checks `nginx -t` makes of it; `None` for side-effect-free checks.
    env: Option<&'a dyn Environment>,
    /// Names of `upstream` blocks.
    upstreams: HashSet<String>,
    /// Hosts of `proxy_pass` URLs (implicit upstreams): host, port, the directive's place.
    implicit: Vec<(String, u16, Span, Span)>,
    /// Addresses of `listen` directives, as nginx prints them, and what they resolve to.
    listens: Vec<(String, Vec<std::net::SocketAddr>)>,
    table: &'static Table,
    out: Vec<Diagnostic>,
    /// Per file: how many of its syntax errors have been reported.
    cursor: Vec<usize>,
    /// Dynamic modules loaded with `load_module`.
    loaded: HashSet<String>,
    depth: usize,
    vars: VarCheck,
    /// `log_format` names defined so far (nginx requires definition before use).
    log_formats: HashSet<String>,
}

/// Variables referenced and defined in the http context, checked when it ends.
#[derive(Default)]
struct VarCheck {
    referenced: Vec<(String, Span)>,
    seen: HashSet<String>,
    defined: HashSet<String>,
}

fn is_http(ctx: Context) -> bool {
    matches!(
        ctx,
        Context::Http
            | Context::Server
            | Context::Location
            | Context::ServerIf
            | Context::LocationIf
            | Context::LimitExcept
            | Context::Upstream
            | Context::Opaque(_)
    )
}

impl Walker<'_> {
    /// Walks a file's top level in `ctx`, then reports its remaining syntax errors.
    fn file(&mut self, file: FileId, ctx: Context, seen: &mut HashSet<&'static str>) {
        self.depth += 1;
        if self.depth <= super::load::MAX_INCLUDE_DEPTH {
            let directives = &self.sources.tree(file).directives;
            self.block(file, directives, ctx, seen);
        }
        self.depth -= 1;
        self.syntax_errors(file, u32::MAX);
    }

    /// Reports the syntax errors of `file` before `offset`.
    fn syntax_errors(&mut self, file: FileId, offset: u32) {
        let errors = &self.sources.syntax_errors[file.0 as usize];
        let i = &mut self.cursor[file.0 as usize];
        while *i < errors.len() && errors[*i].span.is_some_and(|s| s.start < offset) {
            self.out.push(errors[*i].clone());
            *i += 1;
        }
    }

    fn block(
        &mut self,
        file: FileId,
        directives: &[Directive],
        ctx: Context,
        seen: &mut HashSet<&'static str>,
    ) {
        for d in directives {
            self.syntax_errors(file, d.end);
            self.directive(file, d, ctx, seen);
        }
    }

    fn emit(&mut self, d: &Directive, diag: Diagnostic) {
        let diag = if diag.span.is_none() {
            diag.at(d.name.span)
        } else {
            diag
        };
        self.out.push(diag.line_at(d.end_span()));
    }

    fn directive(
        &mut self,
        file: FileId,
        d: &Directive,
        ctx: Context,
        seen: &mut HashSet<&'static str>,
    ) {
        let name = d.name();
        if d.block.is_some() && Some(file) == self.sources.globals {
            let m = "block directives are not supported in -g option";
            return self.emit(d, Diagnostic::error("syntax", m));
        }
        if let Context::Opaque(kind) = ctx {
            return self.entry(file, d, kind, seen);
        }
        let candidates: Vec<&'static Spec> = self
            .table
            .lookup(name)
            .filter(|s| s.dynamic.is_none_or(|m| self.loaded.contains(m)))
            .collect();
        if candidates.is_empty() {
            return self.emit(
                d,
                Diagnostic::error("unknown-directive", format!("unknown directive \"{name}\"")),
            );
        }
        let Some(spec) = candidates.iter().copied().find(|s| s.allowed_in(ctx)) else {
            let mut diag = Diagnostic::error(
                "not-allowed",
                format!("\"{name}\" directive is not allowed here"),
            );
            let places = candidates
                .iter()
                .flat_map(|s| s.context_names())
                .collect::<Vec<_>>()
                .join(", ");
            diag = diag.note(format!("\"{name}\" is allowed in: {places}"));
            return self.emit(d, diag);
        };
        match (spec.inner, &d.block) {
            (Inner::None, Some(_)) => {
                let m = format!("directive \"{name}\" is not terminated by \";\"");
                return self.emit(d, Diagnostic::error("syntax", m));
            }
            (Inner::Context(_) | Inner::If | Inner::Opaque, None) => {
                let m = format!("directive \"{name}\" has no opening \"{{\"");
                return self.emit(d, Diagnostic::error("syntax", m));
            }
            _ => {}
        }
        if !spec.arity.accepts(d.args.len()) {
            let m = format!("invalid number of arguments in \"{name}\" directive");
            return self.emit(d, Diagnostic::error("arguments", m));
        }
        if spec.once && !seen.insert(spec.name) {
            return self.emit(
                d,
                Diagnostic::error("duplicate", format!("\"{name}\" directive is duplicate")),
            );
        }
        if let Some(diag) = check_value(spec, d) {
            return self.emit(d, diag);
        }
        match name {
            "include" => return self.include(file, d, ctx, seen),
            "load_module" => self.load_module(d),
            "log_format" if !self.log_formats.insert(d.args[0].value.clone()) => {
                let m = format!("duplicate \"log_format\" name \"{}\"", d.args[0].value);
                return self.emit(d, Diagnostic::error("duplicate", m));
            }
            "access_log" if d.args.len() >= 2 && d.args[0].value != "off" => {
                let format = &d.args[1].value;
                if !self.log_formats.contains(format) {
                    let m = format!("unknown log format \"{format}\"");
                    return self.emit(
                        d,
                        Diagnostic::error("unknown-log-format", m).at(d.args[1].span),
                    );
                }
            }
            _ => {}
        }
        if is_http(ctx) {
            if let Err(diag) = self.variables(d) {
                return self.emit(d, diag);
            }
        }
        if let Some(diag) = self.environment(d, spec, ctx) {
            return self.emit(d, diag);
        }
        match spec.status {
            Status::Yes | Status::Noop => {}
            Status::No => {
                let m = format!("\"{name}\" directive is not supported yet and is ignored");
                self.emit(d, Diagnostic::warning("unsupported", m));
            }
            Status::Closes => {
                let m = format!(
                    "\"{name}\" directive is not supported yet, and ignoring it would open what the configuration closes"
                );
                let diag = Diagnostic::error("unsupported-closes", m)
                    .note("access, authentication and TLS directives are errors until Portico implements them");
                self.emit(d, diag);
            }
        }
        if let Some(block) = &d.block {
            let inner = match spec.inner {
                Inner::Context(c) => c,
                Inner::If if ctx == Context::Server => Context::ServerIf,
                Inner::If => Context::LocationIf,
                Inner::Opaque => Context::Opaque(spec.name),
                Inner::None => return,
            };
            self.block(file, &block.directives, inner, &mut HashSet::new());
            if name == "http" {
                self.end_of_http();
            }
        }
    }

    /// Records the variables a directive references and defines.
    fn variables(&mut self, d: &Directive) -> Result<(), Diagnostic> {
        let roles = vars::roles(d);
        for regex in roles.regexes {
            self.vars.defined.extend(vars::named_captures(regex));
        }
        self.vars
            .defined
            .extend(roles.defines.iter().map(|v| v.to_string()));
        for value in roles.scripts {
            let arg = d
                .args
                .iter()
                .find(|a| a.value.as_bytes().as_ptr_range().contains(&value.as_ptr()));
            let span = arg.map_or(d.name.span, |a| a.span);
            let refs =
                vars::references(value).map_err(|m| Diagnostic::error("variable", m).at(span))?;
            for r in refs {
                if self.vars.seen.insert(r.name.clone()) {
                    self.vars.referenced.push((r.name, span));
                }
            }
        }
        Ok(())
    }

    /// Records what the machine checks need, and makes those nginx makes at the directive.
    fn environment(&mut self, d: &Directive, spec: &Spec, ctx: Context) -> Option<Diagnostic> {
        let arg = d.args.first()?;
        match (spec.name, spec.module, ctx) {
            ("upstream", "http_upstream", Context::Http) => {
                self.upstreams.insert(arg.value.clone());
            }
            ("proxy_pass", ..) if !arg.value.contains('$') => {
                let url = arg
                    .value
                    .strip_prefix("http://")
                    .or_else(|| arg.value.strip_prefix("https://"))?;
                let (host, port) = env::upstream_host(
                    url,
                    if arg.value.starts_with("https") {
                        443
                    } else {
                        80
                    },
                )?;
                if !self
                    .implicit
                    .iter()
                    .any(|(h, p, ..)| *h == host && *p == port)
                {
                    self.implicit.push((host, port, d.end_span(), arg.span));
                }
            }
            ("listen", "http_core", _) => {
                let e = self.env?;
                if let Some(addrs) = env::listen_addrs(&arg.value, e) {
                    if !self.listens.iter().any(|(shown, _)| *shown == addrs.0) {
                        self.listens.push(addrs);
                    }
                }
            }
            ("server", "http_upstream", Context::Upstream) => {
                let e = self.env?;
                let (host, port) = env::upstream_host(&arg.value, 80)?;
                if host.parse::<std::net::IpAddr>().is_err() && !e.resolves(&host, port) {
                    let m = format!("host not found in upstream \"{}\"", arg.value);
                    return Some(Diagnostic::error("host-not-found", m).at(arg.span));
                }
            }
            ("user", _, Context::Main) => {
                let e = self.env?;
                if !e.is_root() {
                    let m = "the \"user\" directive makes sense only if the master process runs with super-user privileges, ignored";
                    self.emit(d, Diagnostic::warning("user", m));
                    return None;
                }
                let user = &arg.value;
                if !e.user_exists(user) {
                    return Some(
                        Diagnostic::error("user", format!("getpwnam(\"{user}\") failed"))
                            .at(arg.span),
                    );
                }
                let group = d.args.get(1).unwrap_or(arg);
                if !e.group_exists(&group.value) {
                    let m = format!("getgrnam(\"{}\") failed", group.value);
                    return Some(Diagnostic::error("user", m).at(group.span));
                }
            }
            _ => {}
        }
        None
    }

    /// nginx's checks when an http block has been read: implicit upstreams resolved, then
    /// every referenced variable known.
    fn end_of_http(&mut self) {
        if let Some(e) = self.env {
            for (host, port, line_at, span) in std::mem::take(&mut self.implicit) {
                let named = self.upstreams.contains(&host)
                    || self.upstreams.contains(&format!("{host}:{port}"));
                if !named && host.parse::<std::net::IpAddr>().is_err() && !e.resolves(&host, port) {
                    let m = format!("host not found in upstream \"{host}\"");
                    self.out.push(
                        Diagnostic::error("host-not-found", m)
                            .at(span)
                            .line_at(line_at),
                    );
                }
            }
        }
        self.unknown_variables();
    }

    /// nginx -t opens the listening sockets; an address already in use is fine in a test.
    fn bind_listeners(&mut self) {
        let Some(e) = self.env else { return };
        for (shown, addrs) in std::mem::take(&mut self.listens) {
            for addr in addrs {
                if let Err((code, text)) = e.bind(addr) {
                    if code != libc::EADDRINUSE {
                        let m = format!("bind() to {shown} failed ({code}: {text})");
                        self.out.push(Diagnostic::error("bind", m));
                        break;
                    }
                }
            }
        }
    }

    /// nginx's check at the end of the http block: every referenced variable must exist.
    fn unknown_variables(&mut self) {
        let builtins = vars::Builtins::get();
        let check = std::mem::take(&mut self.vars);
        for (name, span) in check.referenced {
            if !check.defined.contains(&name) && !builtins.knows(&name, &self.loaded) {
                let m = format!("unknown \"{name}\" variable");
                self.out.push(
                    Diagnostic::error("unknown-variable", m)
                        .at(span)
                        .unlocated(),
                );
            }
        }
    }

    /// An entry of `types`, `map`, `geo`, `split_clients` or `charset_map`.
    fn entry(
        &mut self,
        file: FileId,
        d: &Directive,
        kind: &'static str,
        seen: &mut HashSet<&'static str>,
    ) {
        if d.block.is_some() {
            let diag = Diagnostic::error("syntax", "unexpected \"{\"").at(d.end_span());
            return self.out.push(diag.line_at(d.end_span()));
        }
        let includes = matches!(kind, "types" | "map" | "geo");
        if includes && d.name() == "include" && d.args.len() == 1 {
            return self.include(file, d, Context::Opaque(kind), seen);
        }
        if kind == "map" {
            if d.name().starts_with('~') {
                self.vars.defined.extend(vars::named_captures(
                    d.name().trim_start_matches("~*").trim_start_matches('~'),
                ));
            }
            if let Some(value) = d.args.first() {
                match vars::references(&value.value) {
                    Ok(refs) => {
                        for r in refs {
                            if self.vars.seen.insert(r.name.clone()) {
                                self.vars.referenced.push((r.name, value.span));
                            }
                        }
                    }
                    Err(m) => self.emit(d, Diagnostic::error("variable", m).at(value.span)),
                }
            }
            let n = d.args.len() + 1;
            let single = matches!(d.name(), "hostnames" | "volatile");
            if (single && n != 1) || (!single && n != 2) {
                let m = "invalid number of the map parameters";
                self.emit(d, Diagnostic::error("arguments", m));
            }
        }
    }

    fn include(
        &mut self,
        file: FileId,
        d: &Directive,
        ctx: Context,
        seen: &mut HashSet<&'static str>,
    ) {
        match self.sources.included(file, d) {
            Some(Included::Files(ids)) => {
                for &id in ids {
                    self.file(id, ctx, seen);
                }
            }
            Some(Included::Failed(diag)) => {
                let diag = diag.clone();
                self.emit(d, diag);
            }
            None => {}
        }
    }

    fn load_module(&mut self, d: &Directive) {
        let file = d.args[0].value.rsplit('/').next().unwrap_or("");
        let stem = file.strip_suffix(".so").unwrap_or(file);
        let module = match stem {
            "ngx_stream_module" => "stream",
            "ngx_mail_module" => "mail",
            "ngx_http_geoip_module" => "geoip",
            "ngx_stream_geoip_module" => "stream_geoip",
            "ngx_http_image_filter_module" => "image_filter",
            "ngx_http_perl_module" => "perl",
            "ngx_http_xslt_filter_module" => "xslt",
            _ => return,
        };
        self.loaded.insert(module.to_string());
    }

    fn top_names(&self, file: FileId) -> HashSet<&'static str> {
        let table = self.table;
        self.sources
            .tree(file)
            .directives
            .iter()
            .filter_map(|d| table.lookup(d.name()).find(|s| s.once).map(|s| s.name))
            .collect()
    }

    /// Whether the include-expanded top level of `file` has a directive named `name`.
    fn has_top(&self, file: FileId, name: &str) -> bool {
        self.sources.tree(file).directives.iter().any(|d| {
            d.name() == name
                || (d.name() == "include"
                    && matches!(self.sources.included(file, d),
                        Some(Included::Files(ids)) if ids.iter().any(|&id| self.has_top(id, name))))
        })
    }
}

/// The argument checks of nginx's generic slot handlers.
fn check_value(spec: &Spec, d: &Directive) -> Option<Diagnostic> {
    let name = d.name();
    let arg = d.args.first()?;
    let v = arg.value.as_str();
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    // Handlers of their own, with their own wording.
    match name {
        "worker_connections" if !digits => {
            return Some(
                Diagnostic::error("invalid-value", format!("invalid number \"{v}\"")).at(arg.span),
            );
        }
        "worker_processes" if !digits && v != "auto" => {
            let m = "\"worker_processes\" directive invalid value";
            return Some(Diagnostic::error("invalid-value", m).at(arg.span));
        }
        _ => {}
    }
    let ok = match spec.value {
        Value::Any => true,
        Value::Flag => {
            if v.eq_ignore_ascii_case("on") || v.eq_ignore_ascii_case("off") {
                true
            } else {
                let m = format!(
                    "invalid value \"{v}\" in \"{name}\" directive, it must be \"on\" or \"off\""
                );
                return Some(Diagnostic::error("invalid-value", m).at(arg.span));
            }
        }
        Value::Num => {
            let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
            if !ok {
                return Some(
                    Diagnostic::error(
                        "invalid-value",
                        format!("\"{name}\" directive invalid number"),
                    )
                    .at(arg.span),
                );
            }
            true
        }
        Value::Size => parse_size(v, false).is_some(),
        Value::Offset => parse_size(v, true).is_some(),
        Value::Msec => parse_time(v, false).is_some(),
        Value::Sec => parse_time(v, true).is_some(),
    };
    (!ok).then(|| {
        Diagnostic::error(
            "invalid-value",
            format!("\"{name}\" directive invalid value"),
        )
        .at(arg.span)
    })
}

/// nginx's `ngx_parse_size` / `ngx_parse_offset`: digits with an optional k, m (or g) suffix.
pub fn parse_size(v: &str, offset: bool) -> Option<u64> {
    let (digits, scale) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        b'g' | b'G' if offset => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// nginx's `ngx_parse_time`: `1h 30m`, `500ms`, `10s`, `2d`; a bare number is seconds for
/// `sec` and milliseconds otherwise. Returns milliseconds (or seconds when `sec`).
pub fn parse_time(v: &str, sec: bool) -> Option<u64> {
    let b = v.as_bytes();
    let (mut i, mut total, mut last_unit) = (0usize, 0u64, 0u8);
    let mut valid = false;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return None;
        }
        let n: u64 = v[start..i].parse().ok()?;
        let (unit, mult_s, len) = match &b[i..] {
            [b'm', b's', ..] => (2, 0, 2),
            [b'y', ..] => (9, 365 * 24 * 3600, 1),
            [b'M', ..] => (8, 30 * 24 * 3600, 1),
            [b'w', ..] => (7, 7 * 24 * 3600, 1),
            [b'd', ..] => (6, 24 * 3600, 1),
            [b'h', ..] => (5, 3600, 1),
            [b'm', ..] => (4, 60, 1),
            [b's', ..] => (3, 1, 1),
            [] => (1, 0, 0),
            _ => return None,
        };
        if last_unit != 0 && unit >= last_unit {
            return None;
        }
        if unit == 2 && sec {
            return None;
        }
        last_unit = unit;
        i += len;
        let value = match unit {
            2 => n,
            1 if sec => n,
            1 => n.checked_mul(1000)?,
            _ if sec => n.checked_mul(mult_s)?,
            _ => n.checked_mul(mult_s * 1000)?,
        };
        total = total.checked_add(value)?;
        valid = true;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if unit == 1 && i < b.len() {
            return None;
        }
    }
    valid.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        assert_eq!(parse_time("60s", false), Some(60_000));
        assert_eq!(parse_time("1h 30m", true), Some(5400));
        assert_eq!(parse_time("500ms", false), Some(500));
        assert_eq!(parse_time("75", true), Some(75));
        assert_eq!(parse_time("75", false), Some(75_000));
        assert_eq!(parse_time("30m 1h", true), None);
        assert_eq!(parse_time("abc", false), None);
        assert_eq!(parse_size("16k", false), Some(16384));
        assert_eq!(parse_size("1g", false), None);
        assert_eq!(parse_size("1g", true), Some(1 << 30));
    }
}
