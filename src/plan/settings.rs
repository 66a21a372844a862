//! Settings that inherit: a level's own value wins, otherwise the enclosing level's, otherwise
//! nginx's default. Lists follow nginx's array rule for free: `proxy_set_header`, `add_header`,
//! `error_page` and friends of an outer level are inherited only when the inner level has none
//! of its own, because a list is one value here.

use std::sync::Arc;

use serde::Serialize;

use super::template::Template;

macro_rules! settings {
    ($($(#[$doc:meta])* $field:ident : $ty:ty = $default:expr;)*) => {
        /// One level's settings; `None` means "not set here".
        #[derive(Clone, Debug, Default)]
        pub struct Settings {
            $($(#[$doc])* pub $field: Option<$ty>,)*
        }

        /// nginx's defaults, every field set: what a getter answers for a setting no level
        /// sets, without building the default per request.
        static DEFAULTS: std::sync::LazyLock<Settings> = std::sync::LazyLock::new(|| Settings {
            $($field: Some($default),)*
        });

        impl Settings {
            /// Fills what this level leaves unset from the enclosing level.
            pub fn inherit(&mut self, outer: &Settings) {
                $(if self.$field.is_none() {
                    self.$field = outer.$field.clone();
                })*
            }

            // Getters lend what the plan holds (a number by value, text and lists by
            // reference): serving reads settings on every request and copies nothing.
            $($(#[$doc])* pub fn $field(&self) -> <$ty as View>::Of<'_> {
                match &self.$field {
                    Some(v) => v.view(),
                    None => DEFAULTS.$field.as_ref().map(View::view).expect("every default is set"),
                }
            })*

            /// Name and effective value of every setting, for `portico plan`.
            pub fn describe(&self) -> Vec<(&'static str, String, bool)> {
                vec![$((stringify!($field), format!("{:?}", self.$field()), self.$field.is_some()),)*]
            }
        }
    };
}

/// How a setting's getter hands its value out: small `Copy` values by value, the rest by
/// reference into the plan.
pub trait View {
    type Of<'a>
    where
        Self: 'a;
    fn view(&self) -> Self::Of<'_>;
}

macro_rules! by_value {
    ($($t:ty),*) => {$(
        impl View for $t {
            type Of<'a> = $t;
            fn view(&self) -> $t {
                *self
            }
        }
    )*};
}

by_value!(
    bool,
    u64,
    (u64, u64),
    (u64, Option<u64>),
    ServerTokens,
    NextUpstream
);

impl View for String {
    type Of<'a> = &'a str;
    fn view(&self) -> &str {
        self
    }
}

impl<T> View for Vec<T> {
    type Of<'a>
        = &'a [T]
    where
        T: 'a;
    fn view(&self) -> &[T] {
        self
    }
}

impl<T> View for Option<T> {
    type Of<'a>
        = Option<&'a T>
    where
        T: 'a;
    fn view(&self) -> Option<&T> {
        self.as_ref()
    }
}

macro_rules! by_reference {
    ($($t:ty),*) => {$(
        impl View for $t {
            type Of<'a> = &'a $t;
            fn view(&self) -> &$t {
                self
            }
        }
    )*};
}

by_reference!(
    Root,
    RealIpHeader,
    SessionCache,
    Arc<super::LookupMap<String, String>>,
    Arc<Vec<AccessRule>>
);

/// `root` or `alias`.
#[derive(Clone, Debug, Serialize)]
pub struct Root {
    pub path: Template,
    pub alias: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrorPage {
    pub codes: Vec<u16>,
    /// `=` (the status of the page's own answer) or `=code`.
    pub overwrite: Option<Option<u16>>,
    pub uri: Template,
}

#[derive(Clone, Debug, Serialize)]
pub struct AddHeader {
    pub name: String,
    pub value: Template,
    pub always: bool,
}

/// `proxy_redirect`: how `Location` and `Refresh` headers of proxied answers are rewritten.
#[derive(Clone, Debug)]
pub enum ProxyRedirect {
    /// The `proxy_pass` URL becomes the location's name.
    Default,
    Off,
    Replace {
        from: Template,
        to: Template,
    },
    Regex {
        regex: super::regex::Regex,
        to: Template,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServerTokens {
    On,
    Off,
    Build,
}

/// `proxy_next_upstream`: when to try the next server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NextUpstream {
    pub error: bool,
    pub timeout: bool,
    pub invalid_header: bool,
    pub denied: bool,
    pub non_idempotent: bool,
    /// Statuses: 500, 502, 503, 504, 403, 404, 429.
    pub statuses: Vec16,
}

/// A small set of statuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Vec16 {
    pub bits: u16,
}

impl NextUpstream {
    pub const STATUSES: [u16; 7] = [500, 502, 503, 504, 403, 404, 429];
    pub fn on_status(&self, status: u16) -> bool {
        Self::STATUSES
            .iter()
            .position(|s| *s == status)
            .is_some_and(|i| self.statuses.bits & (1 << i) != 0)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AccessLog {
    pub path: Template,
    pub format: String,
    pub buffer: Option<u64>,
    pub flush: Option<u64>,
    pub condition: Option<Template>,
}

/// Where `real_ip_header` takes the client's address from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum RealIpHeader {
    XRealIp,
    XForwardedFor,
    ProxyProtocol,
    /// Another header, by its lower-case name.
    Other(String),
}

/// One `allow` or `deny` rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessRule {
    pub allow: bool,
    /// `None` for `all`.
    pub net: Option<(std::net::IpAddr, u8)>,
    /// `unix:`: connections over a unix socket.
    pub unix: bool,
}

impl AccessRule {
    /// Reads `all`, `unix:`, an address or a CIDR; `Err` is nginx's message (and, for a CIDR
    /// with host bits, a warning to give).
    pub fn parse(allow: bool, value: &str) -> Result<(AccessRule, Option<String>), String> {
        let rule = |net, unix| AccessRule { allow, net, unix };
        if value == "all" {
            return Ok((rule(None, false), None));
        }
        if value == "unix:" {
            return Ok((rule(None, true), None));
        }
        let (addr, bits) = match value.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (value, None),
        };
        let ip: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("invalid parameter \"{value}\""))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match bits {
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("invalid parameter \"{value}\""))?,
            None => max,
        };
        let masked = mask(ip, len);
        let warning =
            (masked != ip).then(|| format!("low address bits of {value} are meaningless"));
        Ok((rule(Some((masked, len)), false), warning))
    }

    /// Whether the rule applies to a client (`None`: a unix-socket client).
    pub fn matches(&self, client: Option<std::net::IpAddr>) -> bool {
        match (client, &self.net) {
            (None, _) => self.net.is_none(),
            (Some(_), None) => !self.unix,
            (Some(ip), Some((net, len))) => {
                let ip = match (ip, net) {
                    (std::net::IpAddr::V6(v6), std::net::IpAddr::V4(_)) => {
                        match v6.to_ipv4_mapped() {
                            Some(v4) => std::net::IpAddr::V4(v4),
                            None => return false,
                        }
                    }
                    _ => ip,
                };
                ip.is_ipv4() == net.is_ipv4() && mask(ip, *len) == *net
            }
        }
    }
}

fn mask(ip: std::net::IpAddr, len: u8) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            std::net::IpAddr::V4((u32::from(a) & m).into())
        }
        std::net::IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            std::net::IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

const KB: u64 = 1024;
const SEC: u64 = 1000;

settings! {
    /// `root` or `alias` (nginx's default root is `html`, under the prefix).
    root: Root = Root { path: Template::literal("html"), alias: false };
    index: Vec<Template> = vec![Template::literal("index.html")];
    error_page: Vec<ErrorPage> = Vec::new();
    recursive_error_pages: bool = false;
    add_header: Vec<AddHeader> = Vec::new();
    default_type: String = "text/plain".to_string();
    /// Extension (lower case) to MIME type.
    types: Arc<super::LookupMap<String, String>> = default_types();
    client_max_body_size: u64 = 1024 * KB;
    client_body_buffer_size: u64 = 16 * KB;
    client_body_timeout: u64 = 60 * SEC;
    client_header_timeout: u64 = 60 * SEC;
    client_header_buffer_size: u64 = KB;
    /// (number, size)
    large_client_header_buffers: (u64, u64) = (4, 8 * KB);
    send_timeout: u64 = 60 * SEC;
    /// (timeout, the `Keep-Alive: timeout=` header's seconds)
    keepalive_timeout: (u64, Option<u64>) = (75 * SEC, None);
    keepalive_requests: u64 = 1000;
    keepalive_time: u64 = 3600 * SEC;
    /// `keepalive_disable`: `msie6` (nginx's default), `safari`, `none`.
    keepalive_disable: Vec<String> = vec!["msie6".to_string()];
    server_tokens: ServerTokens = ServerTokens::On;
    port_in_redirect: bool = true;
    absolute_redirect: bool = true;
    server_name_in_redirect: bool = false;
    merge_slashes: bool = true;
    underscores_in_headers: bool = false;
    ignore_invalid_headers: bool = true;
    chunked_transfer_encoding: bool = true;
    log_not_found: bool = true;
    autoindex: bool = false;
    autoindex_exact_size: bool = true;
    autoindex_localtime: bool = false;
    autoindex_format: String = "html".to_string();
    etag: bool = true;
    /// `off`, `exact` or `before`.
    if_modified_since: String = "exact".to_string();
    /// `expires` as written (`off`, `max`, `epoch`, `1h`, `modified 1d`, `@15h`).
    expires: Vec<String> = vec!["off".to_string()];
    /// The value of `expires` when it has variables (evaluated per request).
    expires_value: Option<Template> = None;
    gzip_static: String = "off".to_string();
    /// `error_log` of an http, server or location level: (path, level); `None`: the main
    /// error log.
    error_log: Option<(String, String)> = None;
    /// `charset`: added to the Content-Type of `charset_types` answers; `off` by default.
    charset: String = "off".to_string();
    charset_types: Vec<String> = [
        "text/html",
        "text/xml",
        "text/plain",
        "text/vnd.wap.wml",
        "application/javascript",
        "application/rss+xml",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    gzip_vary: bool = false;
    /// `sendfile`: large files to plain TCP clients by sendfile(2); off by default, as in nginx.
    sendfile: bool = false;
    /// `1.0` or `1.1`.
    gzip_http_version: String = "1.1".to_string();
    /// `gzip_proxied` parameters (`off` by default: no gzip for requests with `Via`).
    gzip_proxied: Vec<String> = Vec::new();
    /// `max_ranges`; `None`: no limit.
    max_ranges: Option<u64> = None;
    tcp_nodelay: bool = true;
    disable_symlinks: bool = false;
    access_log: Vec<AccessLog> = vec![AccessLog {
        // Debian's build (--http-log-path), which Portico follows.
        path: Template::literal("/var/log/nginx/access.log"),
        format: "combined".into(),
        buffer: None,
        flush: None,
        condition: None,
    }];
    /// `allow`/`deny`, in order (inherited only when a level has none, as in nginx).
    access: Vec<AccessRule> = Vec::new();
    /// `set_real_ip_from`: the addresses trusted to name the client (all `allow` rules).
    real_ip_from: Arc<Vec<AccessRule>> = Arc::new(Vec::new());
    /// `real_ip_header`.
    real_ip_header: RealIpHeader = RealIpHeader::XRealIp;
    real_ip_recursive: bool = false;
    proxy_set_header: Vec<(String, Template)> = Vec::new();
    proxy_http_version: String = "1.0".to_string();
    proxy_pass_request_headers: bool = true;
    proxy_pass_request_body: bool = true;
    proxy_hide_header: Vec<String> = Vec::new();
    proxy_pass_header: Vec<String> = Vec::new();
    proxy_redirect: Vec<ProxyRedirect> = vec![ProxyRedirect::Default];
    /// `proxy_cookie_domain` / `proxy_cookie_path` rules (none: off).
    proxy_cookie_domain: Vec<ProxyRedirect> = Vec::new();
    proxy_cookie_path: Vec<ProxyRedirect> = Vec::new();
    proxy_buffering: bool = true;
    proxy_request_buffering: bool = true;
    proxy_buffer_size: u64 = 4 * KB;
    /// (number, size)
    proxy_buffers: (u64, u64) = (8, 4 * KB);
    proxy_busy_buffers_size: u64 = 8 * KB;
    proxy_max_temp_file_size: u64 = 1024 * 1024 * KB;
    proxy_temp_file_write_size: u64 = 8 * KB;
    proxy_connect_timeout: u64 = 60 * SEC;
    proxy_read_timeout: u64 = 60 * SEC;
    proxy_send_timeout: u64 = 60 * SEC;
    proxy_next_upstream: NextUpstream = NextUpstream { error: true, timeout: true, ..NextUpstream::default() };
    proxy_next_upstream_tries: u64 = 0;
    proxy_next_upstream_timeout: u64 = 0;
    proxy_intercept_errors: bool = false;
    proxy_ignore_client_abort: bool = false;
    proxy_method: Option<Template> = None;
    proxy_set_body: Option<Template> = None;
    proxy_ignore_headers: Vec<String> = Vec::new();
    client_body_temp_path: String = "client_body_temp".to_string();
    /// Certificate files (full paths), paired in order with `ssl_certificate_key`.
    ssl_certificate: Vec<String> = Vec::new();
    ssl_certificate_key: Vec<String> = Vec::new();
    /// nginx 1.22's default, without TLSv1.3 (1.23.4 added it and dropped TLSv1 and TLSv1.1,
    /// which rustls never offers): so TLSv1.2 only unless the configuration says more.
    ssl_protocols: Vec<String> = ["TLSv1", "TLSv1.1", "TLSv1.2"].map(String::from).to_vec();
    ssl_ciphers: String = "HIGH:!aNULL:!MD5".to_string();
    ssl_prefer_server_ciphers: bool = false;
    /// `off`, `none`, or the sizes of `builtin[:N]` / `shared:NAME:SIZE` caches in sessions.
    ssl_session_cache: SessionCache = SessionCache::None;
    ssl_session_timeout: u64 = 300 * SEC;
    ssl_session_tickets: bool = true;
    ssl_ecdh_curve: String = "auto".to_string();
    ssl_reject_handshake: bool = false;
    proxy_temp_path: String = "proxy_temp".to_string();
}

/// `ssl_session_cache`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SessionCache {
    /// Sessions are never stored.
    Off,
    /// nginx's default: clients are told sessions may be reused, but none are kept.
    None,
    /// A cache holding about this many sessions (nginx: about 4000 per megabyte).
    Sessions(usize),
}

/// nginx's built-in `types` when the configuration has none.
fn default_types() -> Arc<super::LookupMap<String, String>> {
    Arc::new(
        [
            ("html", "text/html"),
            ("gif", "image/gif"),
            ("jpg", "image/jpeg"),
        ]
        .into_iter()
        .map(|(e, t)| (e.to_string(), t.to_string()))
        .collect(),
    )
}
