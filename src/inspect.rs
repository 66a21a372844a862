//! `portico route` and `portico plan`: the compiled plan made visible. `route` calls the same
//! routing code as the server ([`crate::plan::route::route`]).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use serde_json::{Value, json};

use crate::cli::OutputFormat;
use crate::config::{self, Options, Paths, RealFs};
use crate::plan::route::{self, Outcome, RealFiles, Request};
use crate::plan::{self, ListenAddr, LocConf, Location, LowerOptions, Plan};

#[derive(Debug)]
pub struct RouteArgs {
    pub paths: Paths,
    pub request: String,
    pub headers: Vec<String>,
    pub to: Option<String>,
    pub from: SocketAddr,
    pub body: Option<u64>,
    pub https: bool,
    pub format: OutputFormat,
}

/// The port of a server without `listen`, as nginx picks it.
pub fn lower_options(paths: &Paths) -> LowerOptions {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    LowerOptions {
        default_port: if root { 80 } else { 8000 },
        prefix: paths.prefix.to_string_lossy().into_owned(),
        conf_prefix: paths.conf_prefix.to_string_lossy().into_owned(),
    }
}

/// Compiles without side effects and lowers; prints the errors and returns `None` if any.
fn load(paths: &Paths) -> Option<(config::Compiled, Plan)> {
    let mut compiled = config::compile(
        &RealFs,
        &Options {
            paths: paths.clone(),
            globals: None,
            mode: None,
        },
    );
    let plan = plan::build(&mut compiled, &lower_options(paths));
    if compiled.has_errors() {
        let mut err = std::io::stderr().lock();
        for d in compiled.diagnostics.iter().filter(|d| d.is_error()) {
            let _ = writeln!(err, "{}", d.nginx_line(&compiled.sources.map));
        }
        return None;
    }
    Some((compiled, plan))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("portico: {message}");
    ExitCode::from(2)
}

pub fn route(args: &RouteArgs) -> ExitCode {
    let Some((method, target)) = args.request.trim().split_once(' ') else {
        return fail("the request must be 'METHOD TARGET', e.g. 'GET http://example.com/'");
    };
    let target = target.trim();
    if !(target.starts_with('/') || target.starts_with("http://") || target.starts_with("https://"))
    {
        return fail("the target must start with / or http:// or https://");
    }
    let mut headers = Vec::new();
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            return fail(&format!("a header must be 'Name: value', not {h:?}"));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let Some((_, plan)) = load(&args.paths) else {
        return ExitCode::from(1);
    };
    let local = match &args.to {
        Some(to) => match plan::listen::parse_addr(to) {
            Ok(a) => a,
            Err(m) => return fail(&m),
        },
        None => match plan.sockets.first() {
            Some(s) => s.addr.clone(),
            None => return fail("the configuration has no server"),
        },
    };
    // Like a client, send a Host header: the target's authority or the address connected to.
    let has_host = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"));
    if !has_host {
        let authority = route::split_absolute(target).0.map(str::to_string);
        let host = authority.or_else(|| match &local {
            ListenAddr::Tcp(a) if !a.ip().is_unspecified() => Some(a.to_string()),
            ListenAddr::Tcp(a) => Some(format!("localhost:{}", a.port())),
            ListenAddr::Host(h, p) => Some(format!("{h}:{p}")),
            ListenAddr::Unix(_) => Some("localhost".to_string()),
        });
        if let Some(h) = host {
            headers.insert(0, ("Host".to_string(), h));
        }
    }
    if let Some(n) = args.body {
        if !headers
            .iter()
            .any(|(h, _)| h.eq_ignore_ascii_case("content-length"))
        {
            headers.push(("Content-Length".to_string(), n.to_string()));
        }
    }
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body_len = args.body.or_else(|| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
    });
    let lines: Vec<crate::plan::header::Line> = headers
        .iter()
        .map(|(n, v)| crate::plan::header::line_of(n, v))
        .collect();
    let request = Request {
        method,
        target,
        version: "HTTP/1.1",
        headers: &lines,
        remote: args.from,
        socket: &local,
        local: &local,
        https: args.https,
        body_len,
        connection: 1,
        explain: true,
        tls: None,
        requests: 1,
        connection_ms: 0,
        chunked,
    };
    let decision = route::route(&plan, &request, &RealFiles);
    let server = &plan.servers[decision.server];
    let location = decision.location.as_ref().map(|l| {
        json!({
            "modifier": l.modifier(),
            "match": l.name(),
            "file": l.place.file,
            "line": l.place.line,
        })
    });
    let value = json!({
        "server": {
            "names": server.names,
            "file": server.place.file,
            "line": server.place.line,
        },
        "location": location,
        "uri": decision.uri,
        "args": decision.args,
        "outcome": serde_json::to_value(&decision.outcome).unwrap_or(Value::Null),
        "trace": decision.trace,
    });
    let mut out = std::io::stdout().lock();
    match args.format {
        OutputFormat::Json => {
            let _ = writeln!(out, "{value:#}");
        }
        OutputFormat::Text => {
            let _ = write!(
                out,
                "{}",
                route_text(&decision, server, decision.location.as_deref())
            );
        }
    }
    ExitCode::SUCCESS
}

fn route_text(d: &route::Decision, server: &plan::Server, location: Option<&Location>) -> String {
    let mut s = String::new();
    let names = server
        .names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    s += &format!(
        "server    {names}  ({}:{})\n",
        server.place.file, server.place.line
    );
    match location {
        Some(l) => {
            let m = l.modifier();
            let sep = if m.is_empty() { "" } else { " " };
            s += &format!(
                "location  {m}{sep}{}  ({}:{})\n",
                l.name(),
                l.place.file,
                l.place.line
            )
        }
        None => s += "location  (none: the server's own configuration)\n",
    }
    s += &format!(
        "uri       {}{}{}\n",
        d.uri,
        if d.args.is_empty() { "" } else { "?" },
        d.args
    );
    match &d.outcome {
        Outcome::Return {
            status,
            headers,
            body,
        } => {
            s += &format!("answer    {status} {}\n", plan::pages::reason(*status));
            for (n, v) in headers {
                s += &format!("          {n}: {v}\n");
            }
            if let Some(b) = body {
                s += &format!("          body: {b:?}\n");
            }
        }
        Outcome::Proxy {
            upstream,
            url,
            request,
            ..
        } => {
            s += &format!(
                "proxy     to {upstream}{}\n",
                url.as_ref().map(|u| format!(" ({u})")).unwrap_or_default()
            );
            s += &format!(
                "          {} {} {}\n",
                request.method(),
                request.target(),
                request.version()
            );
            for (n, v) in request.headers() {
                s += &format!("          {n}: {v}\n");
            }
        }
        Outcome::File { path } => s += &format!("file      {path}\n"),
        Outcome::Listing { path } => s += &format!("listing   {path}\n"),
    }
    s += "trace\n";
    for t in &d.trace {
        s += &format!("  {t}\n");
    }
    s
}

pub fn plan(paths: &Paths, format: OutputFormat) -> ExitCode {
    let Some((_, plan)) = load(paths) else {
        return ExitCode::from(1);
    };
    let value = plan_json(&plan);
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => {
            let _ = writeln!(out, "{value:#}");
        }
        OutputFormat::Text => {
            let _ = write!(out, "{}", plan_text(&plan));
        }
    }
    ExitCode::SUCCESS
}

fn handler_summary(conf: &LocConf) -> String {
    let mut parts = Vec::new();
    if !conf.ops.is_empty() {
        parts.push(format!("{} rewrite step(s)", conf.ops.len()));
    }
    if let Some(t) = &conf.try_files {
        parts.push(format!(
            "try_files {}",
            t.iter()
                .map(|t| t.source.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if let Some(p) = &conf.proxy {
        parts.push(format!("proxy_pass {}", p.url));
    } else {
        let root = conf.settings.root();
        parts.push(format!(
            "{} {}",
            if root.alias { "alias" } else { "root" },
            root.path
        ));
    }
    if conf.internal {
        parts.push("internal".into());
    }
    parts.join("; ")
}

fn location_json(l: &Location) -> Value {
    json!({
        "modifier": l.modifier(),
        "match": l.name(),
        "file": l.place.file,
        "line": l.place.line,
        "handler": handler_summary(&l.conf),
        "locations": l.children.all.iter().map(|c| location_json(c)).collect::<Vec<_>>(),
    })
}

fn plan_json(plan: &Plan) -> Value {
    json!({
        "sockets": plan.sockets.iter().map(|s| json!({
            "address": s.addr.to_string(),
            "options": s.opts,
            "servers": s.servers,
            "default_server": s.default,
        })).collect::<Vec<_>>(),
        "servers": plan.servers.iter().map(|s| json!({
            "index": s.index,
            "names": s.names,
            "file": s.place.file,
            "line": s.place.line,
            "handler": handler_summary(&s.conf),
            "locations": s.locations.all.iter().chain(s.named.values()).map(|l| location_json(l)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "upstreams": plan.upstreams.iter().map(|u| serde_json::to_value(&**u).unwrap_or(Value::Null)).collect::<Vec<_>>(),
        "maps": plan.maps.keys().collect::<Vec<_>>(),
    })
}

fn plan_text(plan: &Plan) -> String {
    let mut s = String::new();
    for sock in &plan.sockets {
        let servers: Vec<String> = sock
            .servers
            .iter()
            .map(|&i| {
                let d = if i == sock.default { " (default)" } else { "" };
                format!("#{i}{d}")
            })
            .collect();
        s += &format!("listen {}  servers {}\n", sock.addr, servers.join(", "));
    }
    for server in &plan.servers {
        let names = server
            .names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        s += &format!(
            "\nserver #{} {names}  ({}:{})\n",
            server.index, server.place.file, server.place.line
        );
        s += &format!("  {}\n", handler_summary(&server.conf));
        fn walk(s: &mut String, l: &Location, depth: usize) {
            let pad = "  ".repeat(depth);
            *s += &format!(
                "{pad}location {}{}{}  ({}:{})  {}\n",
                l.modifier(),
                if l.modifier().is_empty() { "" } else { " " },
                l.name(),
                l.place.file,
                l.place.line,
                handler_summary(&l.conf)
            );
            for c in &l.children.all {
                walk(s, c, depth + 1);
            }
        }
        for l in server.locations.all.iter().chain(server.named.values()) {
            walk(&mut s, l, 1);
        }
    }
    for u in &plan.upstreams {
        let peers: Vec<String> = u.servers.iter().map(|p| p.addr.to_string()).collect();
        s += &format!(
            "\nupstream {}{}  {:?}  {}\n",
            u.name,
            if u.implicit { " (implicit)" } else { "" },
            u.balance,
            peers.join(" ")
        );
    }
    s
}
