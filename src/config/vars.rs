//! Variables: the built-in table (`grammar/variables.tsv`), the `$name` / `${name}`
//! references inside arguments, the variables a configuration defines (`set`, `map`, regex
//! named captures, ...) and nginx's check that every referenced variable exists.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::ast::Directive;

pub const TABLE: &str = include_str!("../../grammar/variables.tsv");

/// Built-in variables: exact names, and prefixes such as `http_` (`$http_user_agent`).
pub struct Builtins {
    exact: HashMap<&'static str, Option<&'static str>>,
    prefixes: Vec<&'static str>,
}

impl Builtins {
    pub fn get() -> &'static Builtins {
        static CELL: OnceLock<Builtins> = OnceLock::new();
        CELL.get_or_init(|| {
            let mut exact = HashMap::new();
            let mut prefixes = Vec::new();
            for line in TABLE
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
            {
                let mut cols = line.split('\t');
                let name = cols.next().unwrap_or_default();
                let dynamic = cols.nth(1).filter(|d| *d != "-");
                if name.ends_with('_') {
                    prefixes.push(name);
                } else {
                    exact.insert(name, dynamic);
                }
            }
            Builtins { exact, prefixes }
        })
    }

    /// Whether `name` is a built-in variable, given the dynamic modules loaded.
    pub fn knows(&self, name: &str, loaded: &HashSet<String>) -> bool {
        match self.exact.get(name) {
            Some(None) => true,
            Some(Some(module)) => loaded.contains(*module),
            None => self.prefixes.iter().any(|p| name.starts_with(p)),
        }
    }
}

/// A `$` reference found in an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    /// Byte range of `$name` / `${name}` within the argument's value.
    pub range: std::ops::Range<usize>,
}

/// The references in a value, as nginx's script compiler reads them. Numeric names (`$1`)
/// are regex captures and are left out.
pub fn references(value: &str) -> Result<Vec<Reference>, String> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        if i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let braced = i < b.len() && b[i] == b'{';
        if braced {
            i += 1;
        }
        let name_start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let name = &value[name_start..i];
        if braced {
            if i >= b.len() || b[i] != b'}' {
                return Err(format!(
                    "the closing bracket in \"{name}\" variable is missing"
                ));
            }
            i += 1;
        }
        if name.is_empty() {
            return Err("invalid variable name".to_string());
        }
        out.push(Reference {
            name: name.to_string(),
            range: start..i,
        });
    }
    Ok(out)
}

/// Named groups of a PCRE pattern: `(?<name>`, `(?P<name>` and `(?'name'`.
pub fn named_captures(regex: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = regex;
    while let Some(i) = rest.find("(?") {
        rest = &rest[i + 2..];
        let body = rest.strip_prefix('P').unwrap_or(rest);
        let (open, close) = match body.as_bytes().first() {
            Some(b'<') => ('<', '>'),
            Some(b'\'') => ('\'', '\''),
            _ => continue,
        };
        let body = &body[open.len_utf8()..];
        if matches!(body.as_bytes().first(), Some(b'=' | b'!')) {
            continue; // a lookbehind, not a name
        }
        if let Some(end) = body.find(close) {
            let name = &body[..end];
            if !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Which arguments of a directive nginx compiles as scripts (so their `$` are references),
/// and which it reads as regexes or as the name of a variable it defines.
pub struct Roles<'a> {
    pub scripts: Vec<&'a str>,
    pub regexes: Vec<&'a str>,
    pub defines: Vec<&'a str>,
}

/// The roles of a directive's arguments in the http context.
pub fn roles<'a>(d: &'a Directive) -> Roles<'a> {
    let a: Vec<&'a str> = d.args.iter().map(|a| a.value.as_str()).collect();
    let mut r = Roles {
        scripts: vec![],
        regexes: vec![],
        defines: vec![],
    };
    match d.name() {
        "return" => r.scripts.extend(a.iter().copied()),
        "rewrite" => {
            r.regexes.extend(a.first().copied());
            r.scripts.extend(a.get(1).copied());
        }
        "set" | "auth_request_set" => {
            r.defines
                .extend(a.first().map(|v| v.trim_start_matches('$')));
            r.scripts.extend(a.get(1).copied());
        }
        "if" => if_condition(&a, &mut r),
        "location" if a.len() == 2 && matches!(a[0], "~" | "~*") => r.regexes.push(a[1]),
        "location" if a.len() == 1 && a[0].starts_with('~') => {
            r.regexes
                .push(a[0].trim_start_matches("~*").trim_start_matches('~'));
        }
        "server_name" => r
            .regexes
            .extend(a.iter().filter_map(|v| v.strip_prefix('~'))),
        // `~regex replacement`: the first word is a regex, not a script.
        "proxy_redirect" | "proxy_cookie_domain" | "proxy_cookie_path"
            if a.first().is_some_and(|v| v.starts_with('~')) =>
        {
            r.regexes
                .push(a[0].trim_start_matches("~*").trim_start_matches('~'));
            r.scripts.extend(a.iter().skip(1).copied());
        }
        "root"
        | "alias"
        | "try_files"
        | "index"
        | "proxy_pass"
        | "fastcgi_pass"
        | "uwsgi_pass"
        | "scgi_pass"
        | "grpc_pass"
        | "proxy_redirect"
        | "proxy_cookie_domain"
        | "proxy_cookie_path"
        | "proxy_set_body"
        | "proxy_method"
        | "proxy_cache_key"
        | "proxy_no_cache"
        | "proxy_cache_bypass"
        | "proxy_cache"
        | "proxy_store"
        | "proxy_ssl_name"
        | "fastcgi_cache_key"
        | "uwsgi_cache_key"
        | "scgi_cache_key"
        | "auth_basic"
        | "auth_basic_user_file"
        | "auth_request"
        | "sub_filter"
        | "secure_link"
        | "secure_link_md5"
        | "limit_req_zone"
        | "limit_conn_zone"
        | "hash"
        | "expires"
        | "charset"
        | "source_charset"
        | "mirror"
        | "log_format"
        | "access_log"
        | "limit_rate"
        | "limit_rate_after" => {
            let from = usize::from(d.name() == "log_format");
            r.scripts.extend(
                a.iter()
                    .skip(from)
                    .filter(|v| !v.starts_with("escape="))
                    .copied(),
            );
            if matches!(d.name(), "limit_req_zone" | "limit_conn_zone") {
                r.scripts.truncate(1);
            }
        }
        "error_page" => r.scripts.extend(a.last().copied()),
        "add_header" | "add_trailer" | "proxy_set_header" | "fastcgi_param" | "uwsgi_param"
        | "scgi_param" | "grpc_set_header" | "proxy_hide_header" => {
            if d.name() != "proxy_hide_header" {
                r.scripts.extend(a.get(1).copied());
            }
        }
        "map" | "split_clients" => {
            r.scripts.extend(a.first().copied());
            r.defines
                .extend(a.get(1).map(|v| v.trim_start_matches('$')));
        }
        "geo" => {
            if a.len() == 2 {
                r.scripts.push(a[0]);
            }
            r.defines
                .extend(a.last().map(|v| v.trim_start_matches('$')));
        }
        "perl_set" => r
            .defines
            .extend(a.first().map(|v| v.trim_start_matches('$'))),
        _ => {}
    }
    r
}

/// `if ($a)`, `if ($a = b)`, `if ($a ~ re)`, `if (-f $file)`.
fn if_condition<'a>(a: &[&'a str], r: &mut Roles<'a>) {
    let words: Vec<&'a str> = a
        .iter()
        .map(|w| w.strip_prefix('(').unwrap_or(w))
        .map(|w| w.strip_suffix(')').unwrap_or(w))
        .filter(|w| !w.is_empty())
        .collect();
    match words.as_slice() {
        [var, op, value, ..] if matches!(*op, "~" | "~*" | "!~" | "!~*") => {
            r.scripts.push(var);
            r.regexes.push(value);
        }
        [var, _op, value, ..] => {
            r.scripts.push(var);
            r.scripts.push(value);
        }
        [op, file] if op.starts_with('-') || op.starts_with("!-") => r.scripts.push(file),
        [var, ..] => r.scripts.push(var),
        [] => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_references() {
        let names = |v| {
            references(v)
                .unwrap()
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("$scheme://$host${uri}x$1"), ["scheme", "host", "uri"]);
        assert!(references("${uri").is_err());
        assert!(references("a$").is_err());
    }

    #[test]
    fn finds_named_captures() {
        assert_eq!(
            named_captures(r"^/(?<a>\w+)/(?P<b>x)(?'c'y)(?<=z)"),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn builtins() {
        let b = Builtins::get();
        let none = HashSet::new();
        assert!(
            b.knows("host", &none) && b.knows("http_x_real_ip", &none) && b.knows("args", &none)
        );
        // A bare prefix is a variable too (nginx -t accepts `$http_` and `$arg_`).
        assert!(b.knows("http_", &none) && b.knows("arg_", &none));
        assert!(!b.knows("nope", &none) && !b.knows("geoip_city", &none));
    }
}
