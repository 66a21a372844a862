//! TLS over real sockets: certificates chosen by SNI as nginx chooses servers, `$https` and
//! `$scheme`, `ssl_reject_handshake`, protocol limits, and `-t` refusing what nginx refuses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::serve::{Echo, Portico};

fn tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls_dir().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Result of one HTTPS request: the certificate the server showed and the raw response.
struct Answer {
    cert: CertificateDer<'static>,
    version: rustls::ProtocolVersion,
    response: String,
}

fn https_get(
    port: u16,
    sni: &str,
    path: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Answer, String> {
    https_get_at("127.0.0.1", port, sni, path, versions)
}

fn https_get_at(
    ip: &str,
    port: u16,
    sni: &str,
    path: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Answer, String> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(client_config(versions), name).unwrap();
    let mut sock = TcpStream::connect((ip, port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let read = tls.read_to_end(&mut out);
    if out.is_empty() {
        return Err(format!("no response: {read:?}"));
    }
    Ok(Answer {
        cert: conn.peer_certificates().unwrap()[0].clone().into_owned(),
        version: conn.protocol_version().unwrap(),
        response: String::from_utf8_lossy(&out).into_owned(),
    })
}

fn cert(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(tls_dir().join(format!("{name}.pem"))).unwrap()
}

fn body(r: &str) -> &str {
    r.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const ALL: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[test]
fn certificates_follow_sni_and_variables_say_https() {
    let dir = tls_dir();
    let echo = Echo::start();
    let p = Portico::start(
        "tls-sni",
        &format!(
            "ssl_certificate {d}/localhost.pem; ssl_certificate_key {d}/localhost.key;
             ssl_session_cache shared:SSL:1m; ssl_session_timeout 1d;
             ssl_protocols TLSv1.2 TLSv1.3;
             ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256;
             ssl_prefer_server_ciphers off;
             server {{ listen 127.0.0.1:0 ssl; server_name localhost;
                 location / {{ return 200 \"$server_name $https $scheme\"; }}
                 location /vars {{ return 200 \"$ssl_server_name $ssl_protocol $ssl_cipher\"; }}
                 location /app/ {{ proxy_set_header X-Forwarded-Proto $scheme;
                                  proxy_pass http://127.0.0.1:{port}; }} }}
             server {{ listen 127.0.0.2:0 ssl; server_name b.test;
                 ssl_certificate {d}/b.test.pem; ssl_certificate_key {d}/b.test.key;
                 location / {{ return 200 \"$server_name $https\"; }} }}
             server {{ listen 127.0.0.3:0; server_name plain;
                 location / {{ return 200 \"[$https] $scheme\"; }} }}",
            d = dir.display(),
            port = echo.port
        ),
    );
    let (a, b) = (p.ports[0], p.ports[1]);
    let r = https_get(a, "localhost", "/", ALL).unwrap();
    assert_eq!(r.cert, cert("localhost"));
    assert_eq!(body(&r.response), "localhost on https", "{}", r.response);
    let r = https_get(a, "localhost", "/app/x", ALL).unwrap();
    assert!(
        r.response.contains("X-Forwarded-Proto: https\r\n"),
        "{}",
        r.response
    );
    // TLSv1.2 with the suites ssl_ciphers names (an RSA one for this RSA certificate).
    let r = https_get(a, "localhost", "/vars", TLS12).unwrap();
    assert_eq!(r.version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(
        body(&r.response),
        "localhost TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256"
    );
    let r = https_get(a, "localhost", "/vars", ALL).unwrap();
    assert!(
        body(&r.response).starts_with("localhost TLSv1.3 TLS_"),
        "{}",
        r.response
    );
    // The second socket's server has its own certificate (ECDSA), the one SNI names.
    let r = https_get_at("127.0.0.2", b, "b.test", "/", ALL).unwrap();
    assert_eq!(r.cert, cert("b.test"));
    assert_eq!(body(&r.response), "b.test on");
    let mut s = TcpStream::connect(("127.0.0.3", p.ports[2])).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut plain = String::new();
    s.read_to_string(&mut plain).unwrap();
    assert_eq!(body(&plain), "[] http", "{plain}");
}

#[test]
fn sni_picks_among_servers_of_one_socket_and_can_reject() {
    let d = tls_dir();
    let p = Portico::start(
        "tls-one-socket",
        &format!(
            "server {{ listen 127.0.0.1:0 ssl default_server; server_name localhost;
                 ssl_certificate {d}/localhost.pem; ssl_certificate_key {d}/localhost.key;
                 return 200 default; }}
             server {{ listen 127.0.0.1:0 ssl; server_name b.test *.b.test;
                 ssl_certificate {d}/b.test.pem; ssl_certificate_key {d}/b.test.key;
                 return 200 b; }}
             server {{ listen 127.0.0.1:0 ssl; server_name reject.test;
                 ssl_reject_handshake on; return 200 never; }}",
            d = d.display()
        ),
    );
    let port = p.port();
    assert_eq!(
        https_get(port, "b.test", "/", ALL).unwrap().cert,
        cert("b.test")
    );
    // No server of that name: the default server's certificate (the client then refuses a
    // name it does not match; what matters is which one was offered).
    let err = https_get(port, "other.test", "/", ALL)
        .err()
        .unwrap_or_default();
    assert!(
        err.contains("NotValidForName") || err.contains("certificate"),
        "{err}"
    );
    assert_eq!(
        https_get(port, "localhost", "/", ALL).unwrap().cert,
        cert("localhost")
    );
    // Plain HTTP to the TLS port: nginx's own 400.
    let plain = crate::serve::get(port, "/", "");
    assert!(plain.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{plain}");
    assert!(
        plain.contains("<center>The plain HTTP request was sent to HTTPS port</center>"),
        "{plain}"
    );
    // ssl_reject_handshake: no certificate at all.
    let err = https_get(port, "reject.test", "/", ALL)
        .err()
        .unwrap_or_default();
    assert!(
        err.to_lowercase().contains("alert")
            || err.contains("handshake")
            || err.contains("no response"),
        "{err}"
    );
}

#[test]
fn ssl_protocols_limits_versions() {
    let d = tls_dir();
    // One TLS server, with `protocols` (an ssl_protocols line, or nothing) in it.
    let start = |name: &str, protocols: &str| {
        Portico::start(
            name,
            &format!(
                "server {{ listen 127.0.0.1:0 ssl; {protocols}
                     ssl_certificate {d}/localhost.pem; ssl_certificate_key {d}/localhost.key;
                     return 200 ok; }}",
                d = d.display()
            ),
        )
    };
    let p = start("tls-protocols", "ssl_protocols TLSv1.3;");
    assert_eq!(
        https_get(p.port(), "localhost", "/", ALL).unwrap().version,
        rustls::ProtocolVersion::TLSv1_3
    );
    assert!(https_get(p.port(), "localhost", "/", TLS12).is_err());

    // Without ssl_protocols, nginx 1.22's default: TLSv1.2 (its TLSv1 and TLSv1.1 are not
    // spoken; TLSv1.3 joined the default only in 1.23.4).
    let p = start("tls-protocols-default", "");
    assert_eq!(
        https_get(p.port(), "localhost", "/", ALL).unwrap().version,
        rustls::ProtocolVersion::TLSv1_2
    );
    const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    assert!(https_get(p.port(), "localhost", "/", TLS13).is_err());
}

#[test]
fn test_mode_refuses_what_nginx_refuses() {
    let d = tls_dir();
    let dir = crate::support::scratch("tls-check");
    let cases = [
        (
            format!(
                "server {{ listen 127.0.0.1:8443 ssl; ssl_certificate {}/missing.pem; ssl_certificate_key {}/localhost.key; }}",
                dir.display(),
                d.display()
            ),
            format!(
                "cannot load certificate \"{}/missing.pem\": BIO_new_file() failed",
                dir.display()
            ),
        ),
        (
            "server {\n listen 127.0.0.1:8443 ssl;\n}".to_string(),
            "no \"ssl_certificate\" is defined for the \"listen ... ssl\" directive in".to_string(),
        ),
        (
            format!(
                "server {{ listen 127.0.0.1:8443 ssl; ssl_certificate {}/localhost.pem; }}",
                d.display()
            ),
            format!(
                "no \"ssl_certificate_key\" is defined for certificate \"{}/localhost.pem\"",
                d.display()
            ),
        ),
        (
            format!(
                "server {{ listen 127.0.0.1:8443 ssl; ssl_certificate {d}/localhost.pem; ssl_certificate_key {d}/b.test.key; }}",
                d = d.display()
            ),
            String::new(),
        ),
    ];
    for (http, expected) in cases {
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, format!("events {{}}\nhttp {{\n{http}\n}}\n")).unwrap();
        let v = crate::support::portico_test(&dir, &conf);
        if expected.is_empty() {
            // A key that does not match its certificate: nginx -t says nothing; handshakes
            // fail later. Portico agrees on the verdict and warns.
            assert!(v.ok, "{}", v.stderr);
            assert!(
                v.stderr.contains("[warn]") && v.stderr.contains("mismatch"),
                "{}",
                v.stderr
            );
            continue;
        }
        assert!(!v.ok, "{http}");
        let first = v.first_error.unwrap_or_default();
        assert!(first.contains(&expected), "{first}\nexpected: {expected}");
        if let Some(nginx) = crate::support::nginx_binary() {
            let n = crate::support::nginx_test(&nginx, &dir, &conf);
            assert!(!n.ok, "nginx accepted {http}");
            assert!(
                n.first_error.unwrap_or_default().contains(&expected),
                "nginx differs"
            );
        }
    }
}

#[test]
fn proxy_pass_https_reaches_a_tls_upstream() {
    let d = tls_dir();
    let backend = Portico::start(
        "tls-backend",
        &format!(
            "server {{ listen 127.0.0.1:0 ssl;
                 ssl_certificate {d}/localhost.pem; ssl_certificate_key {d}/localhost.key;
                 return 200 \"secure=$https sni=[$ssl_server_name] $request_uri\"; }}",
            d = d.display()
        ),
    );
    let front = Portico::start(
        "tls-front",
        &format!(
            "server {{ listen 127.0.0.1:0; location / {{ proxy_pass https://127.0.0.1:{}; }} }}",
            backend.port()
        ),
    );
    // Asked directly, with SNI, the backend names it: the empty name below means none was sent.
    let direct = https_get(backend.port(), "localhost", "/d", ALL).unwrap();
    assert!(
        body(&direct.response).starts_with("secure=on sni=[localhost]"),
        "{}",
        direct.response
    );
    let r = crate::serve::get(front.port(), "/x?y=1", "");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    // nginx's defaults: no certificate check (the test CA is unknown to it) and no SNI.
    assert!(r.ends_with("secure=on sni=[] /x?y=1"), "{r}");
}
