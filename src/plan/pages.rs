//! nginx's reason phrases and built-in error pages.

use super::settings::ServerTokens;

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Time-out",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        415 => "Unsupported Media Type",
        416 => "Requested Range Not Satisfiable",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        494 => "Request Header Or Cookie Too Large",
        495 => "The SSL certificate error",
        496 => "No required SSL certificate was sent",
        497 => "The plain HTTP request was sent to HTTPS port",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// The page nginx sends for `status` when nothing else gives a body, or `None` for statuses
/// that have none (1xx, 2xx, 304, and unknown ones).
pub fn default_page(status: u16, tokens: ServerTokens) -> Option<String> {
    // Written once per status and `server_tokens` form: error answers are frequent (a 404
    // for every missing file), and formatting the page cost more than the rest of them.
    static PAGES: std::sync::LazyLock<Vec<Option<String>>> = std::sync::LazyLock::new(|| {
        (0..1000u16)
            .flat_map(|s| {
                [
                    write_page(s, ServerTokens::On),
                    write_page(s, ServerTokens::Off),
                ]
            })
            .collect()
    });
    if status >= 1000 {
        return None;
    }
    let off = usize::from(tokens == ServerTokens::Off);
    PAGES[usize::from(status) * 2 + off].clone()
}

fn write_page(status: u16, tokens: ServerTokens) -> Option<String> {
    let has_page = matches!(status, 301 | 302 | 303 | 307 | 308) || (400..600).contains(&status);
    let reason = reason(status);
    if !has_page || reason.is_empty() {
        return None;
    }
    let title = match status {
        494 => "400 Request Header Or Cookie Too Large".to_string(),
        495..=497 => format!("400 {reason}"),
        _ => format!("{status} {reason}"),
    };
    let tail = match tokens {
        ServerTokens::Off => "<hr><center>nginx</center>\r\n",
        _ => concat!("<hr><center>nginx/", "1.22.1", "</center>\r\n"),
    };
    let head = match status {
        494..=497 => format!(
            "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>{reason}</center>\r\n"
        ),
        _ => format!(
            "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        ),
    };
    Some(format!("{head}{tail}</body>\r\n</html>\r\n"))
}
