//! Values with variables (`"$scheme://$host$request_uri"`), compiled once into parts so that a
//! request only concatenates: literal text, variables and regex captures (`$1`).

use std::borrow::Cow;
use std::fmt;

use crate::config::vars;

/// A variable as the runtime knows it: the common built-ins get their own tag so evaluating
/// them is a match, not a string comparison; everything else is looked up by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    Host,
    RemoteAddr,
    RemotePort,
    Scheme,
    ServerName,
    ServerPort,
    ServerAddr,
    ServerProtocol,
    RequestUri,
    /// `$uri` and `$document_uri`.
    Uri,
    /// `$args` and `$query_string`.
    Args,
    IsArgs,
    RequestMethod,
    Request,
    ContentType,
    ContentLength,
    ProxyHost,
    ProxyPort,
    ProxyAddXForwardedFor,
    /// nginx's own `Content-Length` and `Transfer-Encoding` lines to the upstream. Only
    /// [`crate::plan::UpstreamHeaders`] makes these: a config's `$proxy_internal_*` is a
    /// [`Var::Named`], found after its `set`s and `map`s as nginx would.
    ProxyInternalBodyLength,
    ProxyInternalChunked,
    DocumentRoot,
    RealpathRoot,
    RequestFilename,
    /// `$http_NAME`: a request header; the name with `_` for `-`, lower case.
    Http(String),
    /// `$arg_NAME`: a query argument.
    Arg(String),
    /// `$cookie_NAME`.
    Cookie(String),
    /// `$sent_http_NAME`: a response header.
    SentHttp(String),
    /// `$upstream_http_NAME`: a header of the upstream's response.
    UpstreamHttp(String),
    /// Any other variable: user variables (`set`, `map`, named captures) and built-ins that
    /// only the runtime knows (`$status`, `$request_time`, ...).
    Named(String),
}

impl Var {
    pub fn from_name(name: &str) -> Var {
        let name = name.to_ascii_lowercase();
        let prefixed = |p: &str| name.strip_prefix(p).map(str::to_string);
        match name.as_str() {
            "host" => Var::Host,
            "remote_addr" => Var::RemoteAddr,
            "remote_port" => Var::RemotePort,
            "scheme" => Var::Scheme,
            "server_name" => Var::ServerName,
            "server_port" => Var::ServerPort,
            "server_addr" => Var::ServerAddr,
            "server_protocol" => Var::ServerProtocol,
            "request_uri" => Var::RequestUri,
            "uri" | "document_uri" => Var::Uri,
            "args" | "query_string" => Var::Args,
            "is_args" => Var::IsArgs,
            "request_method" => Var::RequestMethod,
            "request" => Var::Request,
            "content_type" => Var::ContentType,
            "content_length" => Var::ContentLength,
            "proxy_host" => Var::ProxyHost,
            "proxy_port" => Var::ProxyPort,
            "proxy_add_x_forwarded_for" => Var::ProxyAddXForwardedFor,
            "document_root" => Var::DocumentRoot,
            "realpath_root" => Var::RealpathRoot,
            "request_filename" => Var::RequestFilename,
            _ => {
                if let Some(h) = prefixed("http_") {
                    Var::Http(h)
                } else if let Some(a) = prefixed("arg_") {
                    Var::Arg(a)
                } else if let Some(c) = prefixed("cookie_") {
                    Var::Cookie(c)
                } else if let Some(h) = prefixed("sent_http_") {
                    Var::SentHttp(h)
                } else if let Some(h) = prefixed("upstream_http_") {
                    Var::UpstreamHttp(h)
                } else {
                    Var::Named(name)
                }
            }
        }
    }
}

/// Where a template's variables get their values: the request being served.
pub trait Resolve {
    /// The value of `var`, or `None` when it is not found (nginx's "not found" is empty).
    fn var(&self, var: &Var) -> Option<Cow<'_, str>>;
    /// Regex capture `$n` of the last successful match.
    fn capture(&self, n: usize) -> Cow<'_, str>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Var(Var),
    /// `$1`..`$9` (and `$0`).
    Capture(usize),
}

/// A compiled value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Template {
    pub source: String,
    pub parts: Vec<Part>,
}

impl Template {
    /// Compiles `value` as nginx's script compiler does; the error is nginx's message.
    pub fn compile(value: &str) -> Result<Template, String> {
        let refs = vars::references(value).map_err(|m| format!("{m} in \"{value}\""))?;
        let mut parts = Vec::new();
        let mut lit = String::new();
        let b = value.as_bytes();
        let (mut i, mut next_ref) = (0, refs.iter().peekable());
        while i < b.len() {
            if let Some(r) = next_ref.peek().filter(|r| r.range.start == i) {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var(Var::from_name(&r.name)));
                i = r.range.end;
                next_ref.next();
            } else if b[i] == b'$' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Capture((b[i + 1] - b'0') as usize));
                i += 2;
            } else {
                let ch = value[i..].chars().next().unwrap_or('\0');
                lit.push(ch);
                i += ch.len_utf8().max(1);
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            source: value.to_string(),
            parts,
        })
    }

    /// A template of literal text only.
    pub fn literal(value: &str) -> Template {
        Template {
            source: value.to_string(),
            parts: if value.is_empty() {
                Vec::new()
            } else {
                vec![Part::Lit(value.to_string())]
            },
        }
    }

    /// The text, when the template has no variables.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    pub fn has_variables(&self) -> bool {
        self.as_literal().is_none()
    }

    /// Whether the value needs what is known only once the body was read and the upstream
    /// answered (`$upstream_*`, `$request_body`): such an `add_header` is evaluated when the
    /// answer is sent, not when the request is routed.
    pub fn uses_upstream(&self) -> bool {
        self.parts.iter().any(|p| match p {
            Part::Var(Var::UpstreamHttp(_)) => true,
            Part::Var(Var::Named(n)) => n.starts_with("upstream_") || n == "request_body",
            _ => false,
        })
    }

    pub fn uses_captures(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Capture(_)))
    }

    pub fn eval(&self, r: &dyn Resolve) -> String {
        if let Some(s) = self.as_literal() {
            return s.to_string();
        }
        let mut out = String::new();
        self.eval_into(r, &mut out);
        out
    }

    pub fn eval_into(&self, r: &dyn Resolve, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => {
                    if let Some(value) = r.var(v) {
                        out.push_str(&value);
                    }
                }
                Part::Capture(n) => out.push_str(&r.capture(*n)),
            }
        }
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl serde::Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R;
    impl Resolve for R {
        fn var(&self, v: &Var) -> Option<Cow<'_, str>> {
            match v {
                Var::Host => Some("example.com".into()),
                Var::Http(h) if h == "x_a" => Some("1".into()),
                _ => None,
            }
        }
        fn capture(&self, n: usize) -> Cow<'_, str> {
            format!("<{n}>").into()
        }
    }

    #[test]
    fn compiles_and_evaluates() {
        let t = Template::compile("https://$host${http_x_a}/$1x$missing").unwrap();
        assert_eq!(t.eval(&R), "https://example.com1/<1>x");
        assert!(Template::compile("plain").unwrap().as_literal() == Some("plain"));
        assert!(Template::compile("${host").is_err());
        assert_eq!(
            Var::from_name("HTTP_User_Agent"),
            Var::Http("user_agent".into())
        );
    }
}
