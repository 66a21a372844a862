//! The lint rules: one table entry each (id, level, why, reference), one function each.
//! A rule reads the include-expanded tree ([`Model`]) and, where nginx's own resolution
//! matters (sockets, default servers), the plan; it pushes [`Finding`]s and nothing else.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use super::model::{At, Model, Node};
use super::regex_scan;
use super::{Finding, Level, Settings};
use crate::plan::Plan;

/// A rule's description: what SARIF, `--help` and the README show.
#[derive(Debug)]
pub struct Rule {
    pub id: &'static str,
    pub level: Level,
    /// One line: what is wrong.
    pub summary: &'static str,
    /// One line: why it matters / what to do.
    pub help: &'static str,
    pub url: &'static str,
    /// The gixy plugin that makes the same check, if any.
    pub gixy: Option<&'static str>,
}

macro_rules! rules {
    ($($id:literal, $level:ident, $gixy:expr, $url:expr, $summary:literal, $help:literal;)*) => {
        /// Every rule, in the order the README lists them.
        pub const RULES: &[Rule] = &[$(Rule {
            id: $id,
            level: Level::$level,
            summary: $summary,
            help: $help,
            url: $url,
            gixy: $gixy,
        }),*];
    };
}

rules! {
    "alias-traversal", Error, Some("alias_traversal"), concat!("https://github.com/yandex/gixy/blob/master/docs/en/plugins/", "aliastraversal.md"),
        "a prefix location without a trailing slash serves an alias with one: /static../ reaches the parent directory",
        "end the location with / as the alias does (location /static/ { alias /srv/static/; })";
    "add-header-redefinition", Warning, Some("add_header_redefinition"), concat!("https://github.com/yandex/gixy/blob/master/docs/en/plugins/", "addheaderredefinition.md"),
        "add_header in an inner block drops every add_header inherited from the outer ones",
        "repeat the outer headers here (or put them in a file both include)";
    "proxy-set-header-redefinition", Warning, None, concat!("https://nginx.org/en/docs/", "http/ngx_http_proxy_module.html#proxy_set_header"),
        "proxy_set_header in an inner block drops every proxy_set_header inherited from the outer ones",
        "repeat the outer headers here (or include a shared proxy_params file)";
    "host-spoofing", Warning, Some("host_spoofing"), concat!("https://github.com/yandex/gixy/blob/master/docs/en/plugins/", "hostspoofing.md"),
        "the upstream gets the Host header as the client sent it ($http_host), not the server name nginx chose",
        "send $host instead: nginx has validated it against server_name";
    "ssrf", Error, Some("ssrf"), concat!("https://github.com/yandex/gixy/blob/master/docs/en/plugins/", "ssrf.md"),
        "the proxy_pass host comes from the request: a client can make the server fetch any address",
        "proxy to a fixed upstream, or map the request value onto a list of allowed hosts";
    "http-splitting", Error, Some("http_splitting"), concat!("https://github.com/yandex/gixy/blob/master/docs/en/plugins/", "httpsplitting.md"),
        "a header or redirect is built from a decoded value that can hold a line feed ($uri, $document_uri, a capture of [^...] or \\s)",
        "use $request_uri (not decoded), or a capture that cannot match \\n (e.g. [^/\\r\\n]+)";
    "origins", Warning, Some("origins"), concat!("https://github.com/yandex/gixy/blob/master/docs/en/plugins/", "origins.md"),
        "the Origin/Referer regex also accepts other domains (unanchored, or an unescaped dot)",
        "anchor it (^https://example\\.com$) and escape the dots";
    "valid-referers-none", Warning, Some("valid_referers"), concat!("https://github.com/yandex/gixy/blob/master/docs/en/plugins/", "validreferers.md"),
        "valid_referers none accepts requests without a Referer: anyone can strip it",
        "drop none unless requests without a Referer must pass";
    "add-header-multiline", Warning, Some("add_header_multiline"), concat!("https://github.com/yandex/gixy/blob/master/docs/en/plugins/", "addheadermultiline.md"),
        "a header value spans lines: the answer gets an obsolete folded header that clients treat differently",
        "write the value on one line";
    "regex-redos", Warning, Some("regex_redos"), "https://owasp.org/www-community/attacks/Regular_expression_Denial_of_Service_-_ReDoS",
        "the regex can backtrack catastrophically (a repeated group with an ambiguous body): a crafted request burns CPU",
        "make the repetition unambiguous, or use an atomic group (?>...) or a possessive quantifier";
    "regex-unanchored", Warning, None, concat!("https://nginx.org/en/docs/", "http/server_names.html#regex_names"),
        "a server_name regex without ^ or $ also matches hosts that merely contain it (example.com.evil.net)",
        "anchor it: ^ at the start, $ at the end (server_name ~^(www\\.)?example\\.com$; location ~ \\.php$)";
    "allow-without-deny", Warning, Some("allow_without_deny"), concat!("https://nginx.org/en/docs/", "http/ngx_http_access_module.html"),
        "allow without a deny all after it lets everyone in",
        "end the rules with deny all;";
    "return-before-access", Error, None, concat!("https://nginx.org/en/docs/", "dev/development_guide.html#http_phases"),
        "return (or a redirecting rewrite) runs in the rewrite phase, before allow/deny: the access rules never apply",
        "check access first: put the return in a location of its own, or use auth_request/if on $remote_addr";
    "default-server-missing", Warning, None, concat!("https://nginx.org/en/docs/", "http/request_processing.html"),
        "several servers share a socket and none is marked default_server: the first one read takes every unknown Host",
        "mark the intended catch-all with listen ... default_server";
    "app-port-public", Warning, None, "https://docs.gunicorn.org/en/stable/deploy.html",
        "an app-server port is on a public address: clients can reach the app around the front server (TLS, access rules, headers)",
        "bind the app to 127.0.0.1 or a unix socket, and let the front server listen on 80/443";
    "proxy-missing-forwarded", Warning, None, "https://docs.djangoproject.com/en/stable/ref/settings/#secure-proxy-ssl-header",
        "the upstream is not told the client's address and scheme (X-Forwarded-For, X-Forwarded-Proto)",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;";
    "static-via-app", Warning, None, "https://docs.djangoproject.com/en/stable/howto/static-files/deployment/",
        "/static/ is proxied to the app instead of served from disk",
        "serve it with alias /path/to/static/; (and expires/cache headers)";
    "upstream-keepalive", Warning, None, concat!("https://nginx.org/en/docs/", "http/ngx_http_upstream_module.html#keepalive"),
        "the upstream has keepalive but the proxy speaks HTTP/1.0 or forwards Connection: close: connections are never reused",
        "proxy_http_version 1.1; proxy_set_header Connection \"\";";
    "proxy-buffering-off", Info, None, concat!("https://nginx.org/en/docs/", "http/ngx_http_proxy_module.html#proxy_buffering"),
        "proxy_buffering off in front of an app server: a slow client holds a (sync) worker for the whole download",
        "keep buffering on except for streaming endpoints (SSE, long polling), or set X-Accel-Buffering per answer";
    "location-shadowed", Warning, None, concat!("https://nginx.org/en/docs/", "http/ngx_http_core_module.html#location"),
        "this location can never match: an earlier regex location takes every request it would",
        "remove it, or reorder the regex locations (the first match wins)";
    "if-is-evil", Warning, Some("if_is_evil"), "https://www.nginx.com/resources/wiki/start/topics/depth/ifisevil/",
        "if inside a location does more than return or rewrite: the if block is a location of its own and the result is surprising",
        "use return/rewrite only, or map + a variable, or try_files";
    "version-disclosure", Info, Some("version_disclosure"), concat!("https://nginx.org/en/docs/", "http/ngx_http_core_module.html#server_tokens"),
        "server_tokens on sends the exact version in every answer and error page",
        "server_tokens off;";
    "unsupported", Info, None, "https://nginx.org/en/docs/dirindex.html",
        "a directive Portico does not implement (nginx would apply it; Portico ignores it)",
        "see grammar/DIRECTIVES.md; remove it or keep nginx for this site";
    "missing-file", Warning, None, concat!("https://nginx.org/en/docs/", "http/ngx_http_ssl_module.html#ssl_certificate"),
        "a certificate or key file the config names is not there: nginx -t and the start would fail",
        "commit it, map its directory with --map, or ignore with --strict off";
    "unresolved-host", Info, None, concat!("https://nginx.org/en/docs/", "http/ngx_http_upstream_module.html#server"),
        "a host name nginx resolves when it starts: check makes no DNS lookups, so it cannot say whether it resolves",
        "with --strict this is an error: use addresses, or accept the lookup";
    "missing-resolver", Warning, Some("missing_resolver"), concat!("https://nginx.org/en/docs/", "http/ngx_http_core_module.html#resolver"),
        "proxy_pass names its host with a variable but no resolver is set: every such request fails with 502",
        "set resolver (e.g. resolver 127.0.0.53;), or proxy to an upstream block";
    "proxy-pass-normalized", Info, Some("proxy_pass_normalized"), concat!("https://nginx.org/en/docs/", "http/ngx_http_proxy_module.html#proxy_pass"),
        "proxy_pass with a URI part sends the decoded, normalized path: %2F and ../ reach the app already resolved",
        "drop the URI part (proxy_pass http://app;) to forward the path as the client sent it";
    "error-log-off", Warning, Some("error_log_off"), concat!("https://nginx.org/en/docs/", "ngx_core_module.html#error_log"),
        "error_log off does not turn logging off: it writes to a file named \"off\"",
        "error_log /dev/null crit; (or keep a real log)";
    "map-without-default", Warning, Some("hash_without_default"), concat!("https://nginx.org/en/docs/", "http/ngx_http_map_module.html#map"),
        "a map without default gives an empty value for everything it does not list",
        "say what the rest gets: default 0; (or default \"\"; to show it is meant)";
    "add-header-content-type", Warning, Some("add_header_content_type"), concat!("https://nginx.org/en/docs/", "http/ngx_http_core_module.html#default_type"),
        "add_header Content-Type adds a second Content-Type to answers that have one",
        "use default_type (or types { }) to set the type";
    "expect", Error, None, concat!("https://nginx.org/en/docs/", "http/request_processing.html"),
        "a route expectation does not hold: the config sends the request elsewhere",
        "fix the config, or update the expectation if the change is intended";
}

/// The rule with this id.
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// A reference for a compiler diagnostic (what `nginx -t` checks).
pub fn compiler_rule_url() -> &'static str {
    "https://nginx.org/en/docs/dirindex.html"
}

/// Runs every rule.
pub fn run(model: &Model, plan: &Plan, settings: &Settings, out: &mut Vec<Finding>) {
    let upstreams = upstream_names(model);
    let used_outside_headers = variables_used_outside_headers(model);
    model.walk(&mut |at| {
        let n = at.node;
        match n.name() {
            "alias" => alias_traversal(at, out),
            "add_header" | "more_set_headers" => {
                add_header_multiline(n, out);
                if n.name() == "add_header"
                    && n.arg(0)
                        .is_some_and(|h| h.eq_ignore_ascii_case("content-type"))
                {
                    out.push(Finding::new(
                        "add-header-content-type",
                        "add_header Content-Type: the answer then carries two Content-Type headers",
                        n.span(),
                    ));
                }
            }
            "error_log" => error_log_off(n, out),
            "proxy_set_header" => host_spoofing(n, out),
            "proxy_pass" => {
                ssrf(at, out);
                proxy_forwarded(at, out);
                keepalive(at, &upstreams, out);
                static_via_app(at, out);
                app_port_pass(n, out);
                unresolved_pass(n, &upstreams, out);
                // A lone file's http level (where resolver usually is) is another file's.
                if !model.top_is_http {
                    missing_resolver(at, &upstreams, out);
                }
                proxy_pass_normalized(at, out);
            }
            "if" => {
                origins(n, out);
                if_is_evil(at, out);
            }
            "valid_referers" if n.args().any(|a| a == "none") => {
                let i = n.args().position(|a| a == "none").unwrap_or(0);
                out.push(Finding::new(
                    "valid-referers-none",
                    "valid_referers none: a request without a Referer passes",
                    n.arg_span(i),
                ));
            }
            "server_tokens" if n.arg(0) == Some("on") => out.push(Finding::new(
                "version-disclosure",
                "server_tokens on discloses the nginx version",
                n.arg_span(0),
            )),
            "return" | "rewrite" => return_before_access(at, out),
            "proxy_buffering" if n.arg(0) == Some("off") => proxy_buffering(at, out),
            "listen" => app_port_listen(at, out),
            "server" if at.parent().is_some_and(|p| p.name() == "upstream") => {
                app_port_peer(n, out);
                unresolved_peer(n, out);
            }
            "server_name" => server_name_anchors(n, out),
            "map"
                if n.is_block()
                    && !n
                        .children
                        .iter()
                        .any(|c| c.name() == "default" || c.name() == "include")
                    && used_outside_headers
                        .contains(n.arg(1).unwrap_or("").trim_start_matches('$')) =>
            {
                out.push(Finding::new(
                    "map-without-default",
                    format!(
                        "map of {} has no default: unlisted values give an empty {}",
                        n.arg(0).unwrap_or("?"),
                        n.arg(1).unwrap_or("variable")
                    ),
                    n.span(),
                ))
            }
            "location" => location_anchors(n, out),
            _ => {}
        }
        if n.is_block() {
            redefinition(at, "add_header", "add-header-redefinition", out);
            redefinition(at, "proxy_set_header", "proxy-set-header-redefinition", out);
            allow_without_deny(n, out);
            shadowed_locations(n, out);
        }
        http_splitting(at, out);
        redos(n, out);
        missing_file(n, settings, out);
    });
    for http in model.http_bodies() {
        for n in http {
            allow_without_deny_level(http, n, out);
        }
        shadowed_in(http, out);
    }
    // The main level (the walk covers the http contexts).
    if !model.top_is_http {
        for n in model.top.iter().filter(|n| n.name() == "error_log") {
            error_log_off(n, out);
        }
    }
    // A lone file's servers share sockets with servers of other files, and its http level
    // is another file's: judge those only on a whole nginx.conf.
    if !model.top_is_http {
        default_server(plan, out);
        for http in model.top.iter().filter(|n| n.name() == "http") {
            let tokens = http.all("server_tokens").last().and_then(|d| d.arg(0));
            if tokens.is_none() && !http.has("include") {
                out.push(Finding::new(
                    "version-disclosure",
                    "server_tokens is not set: nginx's default (on) discloses its version",
                    http.span(),
                ));
            }
        }
    }
}

/// Variables used somewhere other than a header value. In add_header / proxy_set_header an
/// empty value means "send no such header", the idiom of a map without default; a variable
/// used nowhere (here) cannot do harm either.
fn variables_used_outside_headers(model: &Model) -> HashSet<String> {
    let mut elsewhere = HashSet::new();
    model.walk(&mut |at| {
        let n = at.node;
        let header = matches!(
            n.name(),
            "add_header" | "proxy_set_header" | "more_set_headers"
        );
        // A map's own source and key column are not uses of what it defines.
        let skip = usize::from(n.name() == "map") * 2;
        for a in n.args().skip(skip) {
            if !header {
                elsewhere.extend(vars(a).into_iter().map(str::to_string));
            }
        }
    });
    elsewhere
}

fn error_log_off(n: &Node, out: &mut Vec<Finding>) {
    if n.arg(0) == Some("off") {
        out.push(Finding::new(
            "error-log-off",
            "error_log off writes the errors to a file named \"off\"",
            n.arg_span(0),
        ));
    }
}

fn upstream_names(model: &Model) -> HashMap<String, bool> {
    let mut names = HashMap::new();
    for http in model.http_bodies() {
        for n in http.iter().filter(|n| n.name() == "upstream") {
            if let Some(name) = n.arg(0) {
                names.insert(name.to_string(), n.has("keepalive"));
            }
        }
    }
    names
}

/// A location's modifier and name: `(modifier, name)`.
fn location_match<'a>(n: &Node<'a>) -> (&'a str, &'a str) {
    match (n.arg(0), n.arg(1)) {
        (Some(m), Some(name)) => (m, name),
        (Some(name), None) => {
            // `location ~/x` is not split by nginx: `=`/`~`/`~*`/`^~` glued to the name.
            for m in ["^~", "~*", "~", "="] {
                if let Some(rest) = name.strip_prefix(m)
                    && (!rest.is_empty() && m != "~" || m == "~" && !rest.starts_with('*'))
                {
                    return (m, rest);
                }
            }
            if let Some(rest) = name.strip_prefix('@') {
                return ("@", rest);
            }
            ("", name)
        }
        _ => ("", ""),
    }
}

fn is_regex_modifier(m: &str) -> bool {
    m == "~" || m == "~*"
}

// ---- gixy's checks ------------------------------------------------------------------------

fn alias_traversal(at: At, out: &mut Vec<Finding>) {
    let n = at.node;
    let Some(location) = at.enclosing("location") else {
        return;
    };
    let (modifier, name) = location_match(location);
    if !matches!(modifier, "" | "^~") || name.ends_with('/') {
        return;
    }
    let Some(alias) = n.arg(0) else { return };
    if alias.contains('$') {
        return;
    }
    if alias.ends_with('/') {
        out.push(Finding::new(
                "alias-traversal",
                format!(
                    "location {name} has no trailing slash but its alias {alias} does: {name}../ reaches {}",
                    Path::new(alias.trim_end_matches('/'))
                        .parent()
                        .map_or("/".into(), |p| p.display().to_string())
                ),
                n.arg_span(0),
            )
        );
    } else {
        let mut f = Finding::new(
            "alias-traversal",
            format!(
                "location {name} and alias {alias} both lack the trailing slash: {name}_x reaches {alias}_x (sibling directories)"
            ),
            n.arg_span(0),
        );
        f.level = Level::Warning;
        out.push(f);
    }
}

/// `add_header` / `proxy_set_header` in a block that also inherits some: the inherited ones
/// are dropped.
fn redefinition(at: At, directive: &'static str, rule: &'static str, out: &mut Vec<Finding>) {
    let n = at.node;
    if !matches!(n.name(), "server" | "location" | "if" | "limit_except") {
        return;
    }
    let own: Vec<&Node> = n.all(directive).collect();
    let Some(first) = own.first() else { return };
    // What this block would inherit: the innermost enclosing level that has any.
    let chain_with_self = At {
        node: n,
        chain: at.chain,
        http: at.http,
    };
    let parent = chain_with_self.inherited(&[directive]);
    if parent.is_empty() {
        return;
    }
    let names_here: HashSet<String> = own
        .iter()
        .filter_map(|d| d.arg(0))
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let dropped: BTreeSet<String> = parent
        .iter()
        .filter_map(|d| d.arg(0))
        .filter(|name| !names_here.contains(&name.to_ascii_lowercase()))
        .map(str::to_string)
        .collect();
    if dropped.is_empty() {
        return;
    }
    let list: Vec<String> = dropped.into_iter().collect();
    out.push(Finding::new(
        rule,
        format!(
            "{directive} here drops the inherited {}: {}",
            if list.len() == 1 { "header" } else { "headers" },
            list.join(", ")
        ),
        first.span(),
    ));
}

fn host_spoofing(n: &Node, out: &mut Vec<Finding>) {
    if n.arg(0).is_some_and(|h| h.eq_ignore_ascii_case("host"))
        && n.arg(1).is_some_and(|v| vars(v).contains(&"http_host"))
    {
        out.push(Finding::new(
            "host-spoofing",
            "proxy_set_header Host $http_host: the upstream trusts a Host nginx did not check",
            n.arg_span(1),
        ));
    }
}

/// Variables a client controls fully.
fn request_controlled(var: &str) -> bool {
    var.starts_with("http_")
        || var.starts_with("arg_")
        || var.starts_with("cookie_")
        || var.bytes().all(|b| b.is_ascii_digit())
        || matches!(
            var,
            "host"
                | "request_uri"
                | "uri"
                | "document_uri"
                | "args"
                | "query_string"
                | "request"
                | "request_body"
                | "is_args"
        )
}

fn ssrf(at: At, out: &mut Vec<Finding>) {
    let n = at.node;
    let Some(url) = n.arg(0) else { return };
    if at.enclosing("location").is_some_and(|l| l.has("internal")) {
        return;
    }
    let host_part = host_part(url);
    let named = named_captures(at);
    let bad: Vec<&str> = vars(host_part)
        .into_iter()
        .filter(|v| request_controlled(v) || named.contains(*v))
        .collect();
    if let Some(v) = bad.first() {
        out.push(Finding::new(
            "ssrf",
            format!("proxy_pass takes its host from ${v}, which the client controls"),
            n.arg_span(0),
        ));
    }
}

/// The host part of a proxy_pass URL: up to the first `/`, or to a variable that holds a
/// path (`$request_uri` starts with `/`).
fn host_part(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let mut end = rest.find('/').unwrap_or(rest.len());
    for path_var in [
        "$request_uri",
        "$uri",
        "$document_uri",
        "$is_args",
        "${request_uri}",
        "${uri}",
    ] {
        if let Some(i) = rest.find(path_var) {
            end = end.min(i);
        }
    }
    &rest[..end]
}

/// Names of the named captures of the regexes around `at` (locations, server_name).
fn named_captures(at: At) -> HashSet<String> {
    let mut names = HashSet::new();
    for level in at.chain {
        let pattern = match level.name() {
            "location" => {
                let (m, name) = location_match(level);
                if !is_regex_modifier(m) {
                    continue;
                }
                name.to_string()
            }
            "if" => match if_condition(level) {
                Some((_, op, Some(re))) if op.contains('~') => re,
                _ => continue,
            },
            _ => continue,
        };
        for (_, name, _) in regex_scan::scan(&pattern).captures {
            if let Some(name) = name {
                names.insert(name);
            }
        }
    }
    names
}

/// The words of `if (...)`, without the parentheses: (left, operator, right).
fn if_condition(n: &Node) -> Option<(String, String, Option<String>)> {
    let words: Vec<&str> = n.args().collect();
    let joined = words.join(" ");
    let inner = joined
        .trim()
        .strip_prefix('(')?
        .trim_end()
        .strip_suffix(')')?;
    let args: Vec<&str> = inner.split_whitespace().collect();
    match args.as_slice() {
        [left] => Some((left.to_string(), String::new(), None)),
        [left, op, rest @ ..] if !rest.is_empty() => {
            // The regex is one argument of nginx's; use the original words to keep spaces.
            let right = if words.len() >= 3 {
                words[2..].join(" ")
            } else {
                rest.join(" ")
            };
            let right = right
                .trim_end()
                .strip_suffix(')')
                .unwrap_or(&right)
                .to_string();
            Some((left.to_string(), op.to_string(), Some(right)))
        }
        _ => None,
    }
}

fn http_splitting(at: At, out: &mut Vec<Finding>) {
    let n = at.node;
    let value = match n.name() {
        "add_header" | "proxy_set_header" => n.arg(1),
        "return" => match (n.arg(0), n.arg(1)) {
            (Some("301" | "302" | "303" | "307" | "308"), Some(url)) => Some(url),
            (Some(url), None) if !url.bytes().all(|b| b.is_ascii_digit()) => Some(url),
            _ => None,
        },
        "rewrite" => {
            let replacement = n.arg(1);
            let redirect = matches!(n.arg(2), Some("redirect" | "permanent"))
                || replacement.is_some_and(|r| {
                    r.starts_with("http://")
                        || r.starts_with("https://")
                        || r.starts_with("$scheme")
                });
            if redirect { replacement } else { None }
        }
        "proxy_pass" => n.arg(0),
        _ => None,
    };
    let Some(value) = value else { return };
    for v in vars(value) {
        let bad = match v {
            "uri" | "document_uri" | "request_filename" | "fastcgi_path_info" => Some(format!(
                "${v} is decoded: %0d%0a in the request becomes a line break"
            )),
            _ if v.bytes().all(|b| b.is_ascii_digit()) || !is_builtin_like(v) => {
                capture_with_newline(at, v).map(|re| {
                    format!(
                        "${v} is a capture of \"{re}\", which can match a line feed (decoded %0a)"
                    )
                })
            }
            _ => None,
        };
        if let Some(why) = bad {
            let i = match n.name() {
                "add_header" | "proxy_set_header" => 1,
                "return" => n.d.args.len().saturating_sub(1),
                "rewrite" => 1,
                _ => 0,
            };
            out.push(Finding::new(
                "http-splitting",
                format!("{} can be split into extra headers: {why}", n.name()),
                n.arg_span(i),
            ));
            return;
        }
    }
}

/// A variable name that is not a capture (built-in or set/map defined).
fn is_builtin_like(v: &str) -> bool {
    crate::config::vars::Builtins::get().knows(v, &HashSet::new())
}

/// The regex (around `at` or of the directive itself) whose capture `v` can hold `\n`.
fn capture_with_newline(at: At, v: &str) -> Option<String> {
    let mut patterns = Vec::new();
    if at.node.name() == "rewrite"
        && let Some(re) = at.node.arg(0)
    {
        patterns.push(re.to_string());
    }
    for level in at.chain.iter().rev() {
        match level.name() {
            "location" => {
                let (m, name) = location_match(level);
                if is_regex_modifier(m) {
                    patterns.push(name.to_string());
                }
            }
            "if" => {
                if let Some((_, op, Some(re))) = if_condition(level)
                    && op.contains('~')
                {
                    patterns.push(re);
                }
            }
            _ => {}
        }
    }
    let numbered = v.bytes().all(|b| b.is_ascii_digit());
    for p in patterns {
        let scan = regex_scan::scan(&p);
        let has = if numbered {
            scan.captures.iter().any(|c| c.0.to_string() == v) || v == "0"
        } else {
            scan.captures.iter().any(|c| c.1.as_deref() == Some(v))
        };
        if has {
            // The innermost regex that defines the capture is the one that sets it.
            return scan.capture_can_newline(v).then_some(p);
        }
    }
    None
}

fn origins(n: &Node, out: &mut Vec<Finding>) {
    let Some((left, op, Some(re))) = if_condition(n) else {
        return;
    };
    let header = match left.as_str() {
        "$http_origin" => "Origin",
        "$http_referer" => "Referer",
        _ => return,
    };
    if !matches!(op.as_str(), "~" | "~*" | "!~" | "!~*") {
        return;
    }
    let mut problems: Vec<&str> = Vec::new();
    for alt in alternatives(&re) {
        for p in origin_problems(alt, header) {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
    }
    if !problems.is_empty() {
        let span = n.arg_span(n.d.args.len().saturating_sub(1));
        out.push(Finding::new(
            "origins",
            format!(
                "the {header} check \"{re}\" accepts other domains: {}",
                problems.join("; ")
            ),
            span,
        ));
    }
}

/// What is wrong with one alternative of an Origin/Referer regex.
fn origin_problems(re: &str, header: &str) -> Vec<&'static str> {
    let mut problems = Vec::new();
    if !re.starts_with('^') {
        problems.push("not anchored at the start (https://evil.com/?https://example.com matches)");
    }
    let after_scheme = re.find("://").map_or(re, |i| &re[i + 3..]);
    let path_bound = header == "Referer" && after_scheme.contains('/');
    if !re.ends_with('$') && !path_bound {
        problems.push("not anchored at the end (https://example.com.evil.com matches)");
    }
    if unescaped_dot(after_scheme) {
        problems.push("a dot is not escaped (it matches any character)");
    }
    problems
}

/// The top-level alternatives of a regex, with groups that wrap a whole alternative
/// removed: `((^a)|(^b)$)` gives `^a` and `^b$`.
fn alternatives(re: &str) -> Vec<&str> {
    let re = strip_wrapping(re);
    let b = re.as_bytes();
    let (mut depth, mut in_class, mut start) = (0i32, false, 0);
    let mut parts = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => in_class = true,
            b']' => in_class = false,
            b'(' if !in_class => depth += 1,
            b')' if !in_class => depth -= 1,
            b'|' if !in_class && depth == 0 => {
                parts.push(&re[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&re[start..]);
    if parts.len() == 1 {
        return parts;
    }
    parts.into_iter().flat_map(alternatives).collect()
}

/// `(x)` or `(?:x)` around the whole pattern, removed (repeatedly).
fn strip_wrapping(mut re: &str) -> &str {
    loop {
        let inner = re
            .strip_prefix("(?:")
            .or_else(|| re.strip_prefix('('))
            .and_then(|r| r.strip_suffix(')'));
        let Some(inner) = inner else { return re };
        // The parentheses must match each other, not `(a)|(b)`.
        let mut depth = 0i32;
        let mut ok = true;
        let mut escaped = false;
        for c in inner.bytes() {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth < 0 {
                        ok = false;
                        break;
                    }
                }
                _ => {}
            }
        }
        if !ok || depth != 0 {
            return re;
        }
        re = inner;
    }
}

/// A `.` outside a class and not escaped, between word characters (a domain's dot).
fn unescaped_dot(re: &str) -> bool {
    let b = re.as_bytes();
    let mut in_class = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => in_class = true,
            b']' => in_class = false,
            b'.' if !in_class => {
                let before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b')');
                let after = b
                    .get(i + 1)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'(');
                if before && after {
                    return true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

fn add_header_multiline(n: &Node, out: &mut Vec<Finding>) {
    for (i, a) in n.d.args.iter().enumerate() {
        if a.value.contains('\n') {
            out.push(Finding::new(
                "add-header-multiline",
                format!("the value of {} spans several lines", n.name()),
                n.arg_span(i),
            ));
            return;
        }
    }
}

fn if_is_evil(at: At, out: &mut Vec<Finding>) {
    let n = at.node;
    if at.parent().is_none_or(|p| p.name() != "location") {
        return;
    }
    // An if that answers by itself (CORS preflights: add_header then return) is safe.
    if n.has("return") {
        return;
    }
    let other: Vec<&str> = n
        .children
        .iter()
        .map(|c| c.name())
        .filter(|name| !matches!(*name, "return" | "rewrite" | "set" | "break"))
        .collect();
    if let Some(first) = other.first() {
        out.push(Finding::new(
            "if-is-evil",
            format!("if in a location does more than return/rewrite ({first})"),
            n.span(),
        ));
    }
}

// ---- regexes --------------------------------------------------------------------------------

fn redos(n: &Node, out: &mut Vec<Finding>) {
    let (pattern, i) = match n.name() {
        "location" => {
            let (m, name) = location_match(n);
            if !is_regex_modifier(m) {
                return;
            }
            (name.to_string(), n.d.args.len().saturating_sub(1))
        }
        "rewrite" => match n.arg(0) {
            Some(p) => (p.to_string(), 0),
            None => return,
        },
        "if" => match if_condition(n) {
            Some((_, op, Some(re))) if op.contains('~') => (re, n.d.args.len().saturating_sub(1)),
            _ => return,
        },
        "server_name" => {
            for (i, a) in n.args().enumerate() {
                if let Some(p) = a.strip_prefix('~') {
                    push_redos(p, n.arg_span(i), out);
                }
            }
            return;
        }
        _ => return,
    };
    push_redos(&pattern, n.arg_span(i), out);
}

/// A location regex that ends in a file extension without `$` (`\.php`): gixy's definition.
fn location_anchors(n: &Node, out: &mut Vec<Finding>) {
    let (m, name) = location_match(n);
    if !is_regex_modifier(m) || name.ends_with('$') || !ends_with_extension(name) {
        return;
    }
    // `/\.ht`: a dot file anywhere (`.htaccess`), meant to match as a prefix of a segment.
    if name.rfind("\\.").is_some_and(|i| name[..i].ends_with('/')) {
        return;
    }
    let mut f = Finding::new(
        "regex-unanchored",
        format!(
            "location regex \"{name}\" has neither ^ nor $: it matches anywhere in the URI (e.g. \\.php matches /x.php/y.jpg)"
        ),
        n.arg_span(n.d.args.len().saturating_sub(1)),
    );
    f.level = Level::Info;
    out.push(f);
}

/// Whether a pattern ends with `\.ext`, `\.(a|b)` or `\.[a-z]+`.
fn ends_with_extension(pattern: &str) -> bool {
    static RE: std::sync::OnceLock<Option<pcre2::bytes::Regex>> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        pcre2::bytes::Regex::new(r"\\\.(?:[A-Za-z0-9]+|\((?:\?:)?[A-Za-z0-9|]+\)|\[[^\]]+\][+*]?)$")
            .ok()
    })
    .as_ref()
    .is_some_and(|re| re.is_match(pattern.as_bytes()).unwrap_or(false))
}

fn push_redos(pattern: &str, span: crate::config::span::Span, out: &mut Vec<Finding>) {
    if let Some(why) = regex_scan::scan(pattern).redos {
        out.push(Finding::new(
            "regex-redos",
            format!("catastrophic backtracking: {why}"),
            span,
        ));
    }
}

fn server_name_anchors(n: &Node, out: &mut Vec<Finding>) {
    for (i, a) in n.args().enumerate() {
        let Some(p) = a.strip_prefix('~') else {
            continue;
        };
        let mut missing = Vec::new();
        if !p.starts_with('^') {
            missing.push("^");
        }
        if !p.ends_with('$') {
            missing.push("$");
        }
        if !missing.is_empty() {
            out.push(Finding::new(
                "regex-unanchored",
                format!("server_name regex \"{p}\" lacks {}", missing.join(" and ")),
                n.arg_span(i),
            ));
        }
    }
}

// ---- access -------------------------------------------------------------------------------

fn allow_without_deny(n: &Node, out: &mut Vec<Finding>) {
    if !matches!(n.name(), "server" | "location" | "limit_except") {
        return;
    }
    check_access_level(&n.children, out);
}

fn allow_without_deny_level(http: &[Node], n: &Node, out: &mut Vec<Finding>) {
    // The http level itself, once (called for each top node; act on the first only).
    if std::ptr::eq(n, &http[0]) {
        check_access_level(http, out);
    }
}

fn check_access_level(level: &[Node], out: &mut Vec<Finding>) {
    let allows: Vec<&Node> = level.iter().filter(|c| c.name() == "allow").collect();
    let Some(first) = allows.first() else { return };
    if level.iter().any(|c| c.name() == "include") {
        return; // an unread include may hold the deny
    }
    if allows.iter().any(|a| a.arg(0) == Some("all")) {
        return;
    }
    let deny_all = level
        .iter()
        .any(|c| c.name() == "deny" && c.arg(0) == Some("all"));
    if !deny_all {
        out.push(Finding::new(
            "allow-without-deny",
            "allow without deny all: every other address is allowed too",
            first.span(),
        ));
    }
}

fn return_before_access(at: At, out: &mut Vec<Finding>) {
    let n = at.node;
    let redirects = match n.name() {
        "return" => n
            .arg(0)
            .is_none_or(|c| c.parse::<u16>().is_ok_and(|c| c < 400) || c.parse::<u16>().is_err()),
        "rewrite" => matches!(n.arg(2), Some("redirect" | "permanent")),
        _ => false,
    };
    if !redirects {
        return;
    }
    // Access rules that apply to the requests reaching this return: those of its own block's
    // level (inherited as nginx inherits them) and, for a server-level return, of any location.
    let rules = at.inherited(&["allow", "deny"]);
    let blocked = !rules.is_empty();
    let server_level = at.parent().is_some_and(|p| p.name() == "server");
    let inner_deny = server_level
        && at
            .parent()
            .is_some_and(|s| s.all("location").any(|l| l.has("deny")));
    if blocked || inner_deny {
        out.push(Finding::new(
            "return-before-access",
            format!(
                "{} runs before the access phase: the deny rules here never apply to it",
                n.name()
            ),
            n.span(),
        ));
    }
}

// ---- sockets --------------------------------------------------------------------------------

fn default_server(plan: &Plan, out: &mut Vec<Finding>) {
    for socket in &plan.sockets {
        if socket.servers.len() < 2 || socket.opts.default_server {
            continue;
        }
        let Some(server) = plan.servers.get(socket.default) else {
            continue;
        };
        out.push(
            Finding::new(
                "default-server-missing",
                format!(
                    "{} servers share {} and none is default_server: this one (read first) takes every unknown Host",
                    socket.servers.len(),
                    socket.addr
                ),
                server.place.span,
            ),
        );
    }
}

/// Ports app servers bind by convention (gunicorn/uvicorn/Django 8000, node 3000, flask 5000,
/// php-fpm 9000). 8080 is left out: front servers commonly listen there.
fn app_port(port: u16) -> bool {
    matches!(port, 3000 | 5000 | 9000) || (8000..=8099).contains(&port) && port != 8080
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_private() || v4.is_link_local()),
        IpAddr::V6(v6) => !(v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00),
    }
}

fn app_port_listen(at: At, out: &mut Vec<Finding>) {
    let n = at.node;
    let Some(addr) = n.arg(0) else { return };
    let Ok(parsed) = crate::plan::listen::parse_addr(addr) else {
        return;
    };
    let crate::plan::ListenAddr::Tcp(sock) = parsed else {
        return;
    };
    if !app_port(sock.port()) || !(sock.ip().is_unspecified() || is_public(sock.ip())) {
        return;
    }
    let Some(server) = at.parent() else { return };
    if !proxies(server) {
        return;
    }
    out.push(Finding::new(
        "app-port-public",
        format!(
            "listen {addr}: the front server takes app-server port {} on every address; if the app binds it too, one of them fails, and if the app binds elsewhere this is where clients expect the app",
            sock.port()
        ),
        n.arg_span(0),
    ));
}

fn proxies(n: &Node) -> bool {
    n.children
        .iter()
        .any(|c| matches!(c.name(), "proxy_pass" | "uwsgi_pass" | "fastcgi_pass") || proxies(c))
}

fn host_port(authority: &str) -> (String, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((h, p)) = rest.split_once(']')
    {
        return (
            h.to_string(),
            p.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h.to_string(), p.parse().ok()),
        _ => (authority.to_string(), None),
    }
}

fn public_app_peer(authority: &str) -> Option<String> {
    let (host, port) = host_port(authority);
    let ip: IpAddr = host.parse().ok()?;
    let port = port?;
    (app_port(port) && (ip.is_unspecified() || is_public(ip))).then(|| format!("{host}:{port}"))
}

fn app_port_pass(n: &Node, out: &mut Vec<Finding>) {
    let Some(url) = n.arg(0) else { return };
    let Some((_, rest)) = url.split_once("://") else {
        return;
    };
    let authority = rest.split('/').next().unwrap_or("");
    if let Some(peer) = public_app_peer(authority) {
        out.push(Finding::new(
            "app-port-public",
            format!("the app is reached at {peer}: an app server on a public address can be reached around the front server"),
            n.arg_span(0),
        ));
    }
}

fn app_port_peer(n: &Node, out: &mut Vec<Finding>) {
    let Some(addr) = n.arg(0) else { return };
    if let Some(peer) = public_app_peer(addr) {
        out.push(Finding::new(
            "app-port-public",
            format!("upstream server {peer}: an app server on a public address can be reached around the front server"),
            n.arg_span(0),
        ));
    }
}

// ---- proxying -------------------------------------------------------------------------------

fn header_names(nodes: &[&Node]) -> HashMap<String, String> {
    nodes
        .iter()
        .filter_map(|d| {
            Some((
                d.arg(0)?.to_ascii_lowercase(),
                d.arg(1).unwrap_or("").to_string(),
            ))
        })
        .collect()
}

fn proxy_forwarded(at: At, out: &mut Vec<Finding>) {
    let n = at.node;
    if at.unknown() {
        return;
    }
    let headers = header_names(&at.inherited(&["proxy_set_header"]));
    if headers.contains_key("forwarded") {
        return;
    }
    let missing: Vec<&str> = ["X-Forwarded-For", "X-Forwarded-Proto"]
        .into_iter()
        .filter(|h| !headers.contains_key(&h.to_ascii_lowercase()))
        .collect();
    if !missing.is_empty() {
        out.push(Finding::new(
            "proxy-missing-forwarded",
            format!(
                "proxied without {}: the app sees the proxy as the client{}",
                missing.join(" or "),
                if missing.contains(&"X-Forwarded-Proto") {
                    " and cannot tell https from http"
                } else {
                    ""
                }
            ),
            n.span(),
        ));
    }
}

fn keepalive(at: At, upstreams: &HashMap<String, bool>, out: &mut Vec<Finding>) {
    let n = at.node;
    let Some(url) = n.arg(0) else { return };
    let Some((_, rest)) = url.split_once("://") else {
        return;
    };
    let name = rest.split('/').next().unwrap_or("");
    if upstreams.get(name) != Some(&true) || at.unknown() {
        return;
    }
    let version = at
        .inherited(&["proxy_http_version"])
        .last()
        .and_then(|d| d.arg(0))
        .unwrap_or("1.0");
    let headers = header_names(&at.inherited(&["proxy_set_header"]));
    let mut missing = Vec::new();
    if version != "1.1" {
        missing.push("proxy_http_version 1.1");
    }
    if headers.get("connection").is_none_or(|v| !v.is_empty()) {
        missing.push("proxy_set_header Connection \"\"");
    }
    if !missing.is_empty() {
        out.push(Finding::new(
            "upstream-keepalive",
            format!(
                "upstream {name} keeps connections alive, but without {} every request closes its connection",
                missing.join(" and ")
            ),
            n.span(),
        ));
    }
}

fn static_via_app(at: At, out: &mut Vec<Finding>) {
    let Some(location) = at.parent().filter(|p| p.name() == "location") else {
        return;
    };
    let (m, name) = location_match(location);
    if is_regex_modifier(m) || m == "@" {
        return;
    }
    if name == "/static" || name.starts_with("/static/") {
        out.push(Finding::new(
            "static-via-app",
            format!("location {name} proxies to the app; static files are better served from disk"),
            at.node.span(),
        ));
    }
}

fn proxy_buffering(at: At, out: &mut Vec<Finding>) {
    let n = at.node;
    let Some(block) = at.parent() else { return };
    let streaming_words = [
        "ws",
        "socket",
        "stream",
        "sse",
        "event",
        "live",
        "cable",
        "push",
        "notif",
        "hub",
        "subscribe",
        "poll",
        "grpc",
        "upload",
    ];
    let streaming_name = at.chain.iter().any(|l| {
        l.name() == "location"
            && streaming_words
                .iter()
                .any(|w| location_match(l).1.to_ascii_lowercase().contains(w))
    });
    let upgrade = header_names(&at.inherited(&["proxy_set_header"])).contains_key("upgrade");
    if streaming_name
        || upgrade
        || !(proxies(block) || block.name() == "server" || block.name() == "http")
    {
        return;
    }
    out.push(Finding::new(
        "proxy-buffering-off",
        "proxy_buffering off: nginx reads the answer only as fast as the client does, so the app worker waits on slow clients",
        n.span(),
    ));
}

fn missing_resolver(at: At, upstreams: &HashMap<String, bool>, out: &mut Vec<Finding>) {
    let n = at.node;
    if at.unknown() {
        return;
    }
    let Some(url) = n.arg(0) else { return };
    let host = host_part(url);
    if !host.contains('$') || upstreams.contains_key(host) || url.contains("unix:") {
        return;
    }
    let resolver = at.chain.iter().rev().any(|l| l.has("resolver"))
        || at.http.iter().any(|d| d.name() == "resolver");
    if !resolver {
        out.push(Finding::new(
            "missing-resolver",
            format!("proxy_pass host {host} is a variable and no resolver is set: nginx cannot look it up (unless it names an upstream)"),
            n.arg_span(0),
        ));
    }
}

fn proxy_pass_normalized(at: At, out: &mut Vec<Finding>) {
    let n = at.node;
    let Some(url) = n.arg(0) else { return };
    let Some(location) = at.enclosing("location") else {
        return;
    };
    if location_match(location).0 == "=" || url.starts_with('$') {
        return;
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest
        .strip_prefix("unix:")
        .map_or(rest, |r| r.split_once(':').map_or("", |(_, p)| p));
    if !rest.contains('/') {
        return;
    }
    out.push(Finding::new(
        "proxy-pass-normalized",
        format!("proxy_pass {url} replaces the location's part of a normalized, decoded path"),
        n.arg_span(0),
    ));
}

// ---- locations ------------------------------------------------------------------------------

fn shadowed_locations(n: &Node, out: &mut Vec<Finding>) {
    if matches!(n.name(), "server" | "location") {
        shadowed_in(&n.children, out);
    }
}

fn shadowed_in(level: &[Node], out: &mut Vec<Finding>) {
    let mut seen: Vec<(String, bool)> = Vec::new();
    let mut catch_all: Option<String> = None;
    for l in level.iter().filter(|c| c.name() == "location") {
        let (m, name) = location_match(l);
        if !is_regex_modifier(m) {
            continue;
        }
        let caseless = m == "~*";
        if let Some(first) = &catch_all {
            out.push(Finding::new(
                "location-shadowed",
                format!("location {m} {name} never matches: the earlier location {first} matches every URI"),
                l.arg_span(l.d.args.len().saturating_sub(1)),
            ));
            continue;
        }
        if seen.iter().any(|(p, c)| p == name && (*c || !caseless)) {
            out.push(Finding::new(
                "location-shadowed",
                format!(
                    "location {m} {name} repeats an earlier regex location: only the first is used"
                ),
                l.arg_span(l.d.args.len().saturating_sub(1)),
            ));
            continue;
        }
        seen.push((name.to_string(), caseless));
        if regex_scan::matches_everything(name) {
            catch_all = Some(format!("{m} {name}"));
        }
    }
}

// ---- the machine: files and names check cannot verify -------------------------------------

fn missing_file(n: &Node, settings: &Settings, out: &mut Vec<Finding>) {
    if !matches!(
        n.name(),
        "ssl_certificate"
            | "ssl_certificate_key"
            | "ssl_trusted_certificate"
            | "ssl_client_certificate"
            | "ssl_dhparam"
    ) {
        return;
    }
    let Some(path) = n.arg(0) else { return };
    if path.contains('$') || path.starts_with("data:") || path.starts_with("engine:") {
        return;
    }
    let full = settings.conf_prefix.join(path);
    let mapped = settings.map_path(&full);
    if !mapped.exists() {
        let shown = if mapped == full {
            full.display().to_string()
        } else {
            format!("{} (read as {})", full.display(), mapped.display())
        };
        out.push(Finding::new(
            "missing-file",
            format!("{} {shown} does not exist here", n.name()),
            n.arg_span(0),
        ));
    }
}

fn needs_dns(host: &str) -> bool {
    !host.is_empty()
        && host.parse::<IpAddr>().is_err()
        && host != "localhost"
        && !host.starts_with("unix:")
        && !host.contains('$')
}

fn unresolved_pass(n: &Node, upstreams: &HashMap<String, bool>, out: &mut Vec<Finding>) {
    let Some(url) = n.arg(0) else { return };
    let Some((_, rest)) = url.split_once("://") else {
        return;
    };
    let authority = rest.split('/').next().unwrap_or("");
    if upstreams.contains_key(authority) || authority.starts_with("unix:") {
        return;
    }
    let (host, _) = host_port(authority);
    if needs_dns(&host) {
        out.push(Finding::new(
            "unresolved-host",
            format!("{host} is resolved by DNS when nginx starts (check makes no lookups)"),
            n.arg_span(0),
        ));
    }
}

fn unresolved_peer(n: &Node, out: &mut Vec<Finding>) {
    let Some(addr) = n.arg(0) else { return };
    if addr.starts_with("unix:") {
        return;
    }
    let (host, _) = host_port(addr);
    if needs_dns(&host) {
        out.push(Finding::new(
            "unresolved-host",
            format!("{host} is resolved by DNS when nginx starts (check makes no lookups)"),
            n.arg_span(0),
        ));
    }
}

// ---- helpers ---------------------------------------------------------------------------------

/// The variable names referenced in a value: `$name`, `${name}`, `$1`.
pub fn vars(value: &str) -> Vec<&str> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            if b.get(i + 1) == Some(&b'{')
                && let Some(end) = value[i + 2..].find('}')
            {
                out.push(&value[i + 2..i + 2 + end]);
                i += end + 3;
                continue;
            }
            let start = i + 1;
            let mut j = start;
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            } else {
                while b
                    .get(j)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    j += 1;
                }
            }
            if j > start {
                out.push(&value[start..j]);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}
