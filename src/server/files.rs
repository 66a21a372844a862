//! Static files (issue 5 completes this): the path the plan mapped, an index for a directory
//! URI, the MIME type by extension, 404/403 as nginx answers.

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{Exchange, respond};
use crate::plan::route::Decision;

pub async fn serve<S>(
    io: &mut S,
    ex: &Exchange<'_>,
    decision: &Decision,
    path: &str,
) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let s = &ex.conf.settings;
    let mut path = path.to_string();
    if decision.uri.ends_with('/') {
        let found = s
            .index()
            .iter()
            .map(|t| format!("{path}{}", t.source))
            .find(|p| std::path::Path::new(p).is_file());
        match found {
            Some(p) => path = p,
            None => {
                let status = if std::path::Path::new(&path).is_dir() {
                    403
                } else {
                    404
                };
                return page(io, ex, status).await;
            }
        }
    }
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let ext = path
                .rsplit_once('.')
                .map(|(_, e)| e.to_ascii_lowercase())
                .unwrap_or_default();
            let types = s.types();
            let content_type = types.get(&ext).cloned().unwrap_or_else(|| s.default_type());
            respond(
                io,
                ex,
                decision.status.unwrap_or(200),
                &[],
                &content_type,
                &bytes,
            )
            .await?;
            Ok(ex.keepalive)
        }
        Err(e) => {
            let status = match e.kind() {
                std::io::ErrorKind::NotFound => 404,
                std::io::ErrorKind::PermissionDenied => 403,
                _ if std::path::Path::new(&path).is_dir() => {
                    // A directory without the trailing slash: nginx redirects.
                    let location = format!("{}/", decision.uri);
                    let extra = vec![("Location".to_string(), location)];
                    let body = crate::plan::pages::default_page(301, s.server_tokens())
                        .unwrap_or_default();
                    respond(io, ex, 301, &extra, "text/html", body.as_bytes()).await?;
                    return Ok(ex.keepalive);
                }
                _ => 500,
            };
            page(io, ex, status).await
        }
    }
}

async fn page<S: AsyncWrite + Unpin>(
    io: &mut S,
    ex: &Exchange<'_>,
    status: u16,
) -> std::io::Result<bool> {
    let body = crate::plan::pages::default_page(status, ex.conf.settings.server_tokens())
        .unwrap_or_default();
    respond(io, ex, status, &[], "text/html", body.as_bytes()).await?;
    Ok(ex.keepalive)
}
