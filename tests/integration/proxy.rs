//! The proxy's bodies over real sockets: what protects a sync app server from slow clients
//! (the upstream released before the client has read the response, request bodies read whole
//! before the upstream is bothered), what streams when buffering is off, framing (chunked,
//! close-delimited, HTTP/1.0 clients), broken upstreams, and kept-alive upstream connections.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use crate::serve::{Echo, Portico};

/// An upstream on 127.0.0.1 port 0 whose every connection is handled by `handle`.
fn upstream<F>(handle: F) -> u16
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let handle = Arc::new(handle);
    thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            let handle = handle.clone();
            thread::spawn(move || handle(s));
        }
    });
    port
}

/// Reads a request head; returns it and the bytes read past it.
fn read_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A client socket with a small receive buffer, so that it can hold a download back.
fn slow_client(port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads a response head from `s`, leaving the body.
fn response_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    read_head(s).expect("a response head")
}

fn read_all(s: &mut TcpStream, mut have: Vec<u8>) -> Vec<u8> {
    let _ = s.read_to_end(&mut have);
    have
}

/// The data of a chunked body, which must end with its last chunk.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size, 16).expect("a hex size");
        if size == 0 {
            assert_eq!(rest, "\r\n", "nothing after the last chunk");
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").expect("CRLF after data");
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

const BIG: usize = 16 * 1024 * 1024;

#[test]
fn a_slow_client_does_not_hold_the_upstream() {
    let (done_tx, done_rx) = mpsc::channel();
    let done_tx = std::sync::Mutex::new(done_tx);
    let port = upstream(move |mut s| {
        if read_head(&mut s).is_none() {
            return;
        }
        let body = pattern(BIG);
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\nConnection: close\r\n\r\n");
        let ok = s.write_all(head.as_bytes()).is_ok() && s.write_all(&body).is_ok();
        // Wait for the proxy to close its end: the upstream is free again.
        let mut rest = Vec::new();
        let closed = s.read_to_end(&mut rest).is_ok();
        let _ = done_tx.lock().unwrap().send(ok && closed);
    });
    let p = Portico::start(
        "proxy-slow-client",
        &format!(
            "server {{ listen 127.0.0.1:0; location / {{ proxy_pass http://127.0.0.1:{port}; }} }}"
        ),
    );
    let mut c = slow_client(p.port());
    c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (head, first) = response_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "content-length"), Some("16777216"));
    // The client has read almost nothing, yet the upstream has sent everything and been let go.
    let released = done_rx.recv_timeout(Duration::from_secs(15));
    assert_eq!(
        released,
        Ok(true),
        "the upstream was not released before the client read"
    );
    assert!(
        p.dir.join("proxy_temp").is_dir(),
        "the response went through proxy_temp_path"
    );
    let body = read_all(&mut c, first);
    assert_eq!(body.len(), BIG);
    assert!(body == pattern(BIG), "the body came intact");
}

#[test]
fn with_buffering_off_the_upstream_waits_for_the_client() {
    let (done_tx, done_rx) = mpsc::channel();
    let done_tx = std::sync::Mutex::new(done_tx);
    let port = upstream(move |mut s| {
        if read_head(&mut s).is_none() {
            return;
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
        let ok = s.write_all(head.as_bytes()).is_ok() && s.write_all(&pattern(BIG)).is_ok();
        let _ = done_tx.lock().unwrap().send(ok);
    });
    let p = Portico::start(
        "proxy-buffering-off",
        &format!(
            "server {{ listen 127.0.0.1:0; location / {{ proxy_buffering off; proxy_pass http://127.0.0.1:{port}; }} }}"
        ),
    );
    let mut c = slow_client(p.port());
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (head, first) = response_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        done_rx.recv_timeout(Duration::from_secs(2)).is_err(),
        "with proxy_buffering off the upstream must not get ahead of the client"
    );
    let body = read_all(&mut c, first);
    assert_eq!(body.len(), BIG);
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(true));
}

#[test]
fn an_upstream_dying_mid_body_truncates_and_closes() {
    let port = upstream(|mut s| {
        let Some((head, _)) = read_head(&mut s) else {
            return;
        };
        let reply: &[u8] = if head.starts_with("GET /sized") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial body"
        } else {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        };
        let _ = s.write_all(reply);
        // and the connection drops
    });
    let p = Portico::start(
        "proxy-dies",
        &format!(
            "server {{ listen 127.0.0.1:0; location / {{ proxy_pass http://127.0.0.1:{port}; }} }}"
        ),
    );
    // Keep-alive is asked for: the truncated answer must still end the connection.
    for (path, rest) in [("/sized", "partial body"), ("/chunked", "5\r\nhello\r\n")] {
        let mut c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let (head, first) = response_head(&mut c);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let body = read_all(&mut c, first);
        assert_eq!(String::from_utf8_lossy(&body), rest, "{path}");
    }
}

#[test]
fn request_bodies_larger_than_memory_are_spooled_whole() {
    let echo = Echo::start();
    let p = Portico::start(
        "proxy-big-request",
        &format!(
            "server {{ listen 127.0.0.1:0; client_body_buffer_size 1k; client_max_body_size 4m;
               location / {{ proxy_pass http://127.0.0.1:{}; }} }}",
            echo.port
        ),
    );
    let body = pattern(1 << 20);
    for chunked in [false, true] {
        let mut c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut req = b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
        if chunked {
            req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for piece in body.chunks(100_000) {
                req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                req.extend_from_slice(piece);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"0\r\n\r\n");
        } else {
            req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            req.extend_from_slice(&body);
        }
        c.write_all(&req).unwrap();
        let (head, first) = response_head(&mut c);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let got = read_all(&mut c, first);
        let (up_head, up_body) = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| {
                (
                    String::from_utf8_lossy(&got[..i]).into_owned(),
                    &got[i + 4..],
                )
            })
            .unwrap();
        // What the upstream received: the whole body, with its length, never chunked.
        assert_eq!(
            header(&up_head, "content-length"),
            Some("1048576"),
            "{up_head}"
        );
        assert_eq!(header(&up_head, "transfer-encoding"), None, "{up_head}");
        assert!(
            up_body == body.as_slice(),
            "chunked={chunked}: body differs"
        );
    }
    assert!(
        p.dir.join("client_body_temp").is_dir(),
        "the body went through a temp file"
    );
}

#[test]
fn request_buffering_off_streams_the_body() {
    let (head_tx, head_rx) = mpsc::channel();
    let head_tx = std::sync::Mutex::new(head_tx);
    let port = upstream(move |mut s| {
        let Some((head, mut rest)) = read_head(&mut s) else {
            return;
        };
        let _ = head_tx.lock().unwrap().send(head.clone());
        // Read the chunked body to its end.
        let mut chunk = [0u8; 4096];
        while !rest.ends_with(b"0\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            rest.len()
        );
        let _ = s.write_all(reply.as_bytes());
        let _ = s.write_all(&rest);
    });
    let p = Portico::start(
        "proxy-request-streaming",
        &format!(
            "server {{ listen 127.0.0.1:0;
               location / {{ proxy_request_buffering off; proxy_http_version 1.1;
                             proxy_pass http://127.0.0.1:{port}; }} }}"
        ),
    );
    let mut c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .unwrap();
    // The upstream has the request before the client has finished its body.
    let head = head_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the upstream got the head before the body ended");
    assert_eq!(
        header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    c.write_all(b"2\r\nde\r\n0\r\n\r\n").unwrap();
    let (head, first) = response_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = read_all(&mut c, first);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    );
}

#[test]
fn unsized_responses_are_chunked_for_http11_and_closed_for_http10() {
    let port = upstream(|mut s| {
        if read_head(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n");
    });
    let p = Portico::start(
        "proxy-framing",
        &format!(
            "server {{ listen 127.0.0.1:0; location / {{ proxy_pass http://127.0.0.1:{port}; }} }}"
        ),
    );
    // HTTP/1.1, kept alive: chunked, then a second request on the same connection.
    let mut c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let all = String::from_utf8_lossy(&read_all(&mut c, Vec::new())).into_owned();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
    assert!(
        all.contains("Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n"),
        "{all}"
    );
    let (first, second) = all.split_at(all.rfind("HTTP/1.1 200").unwrap());
    for response in [first, second] {
        let body = response.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(dechunk(body), "Wikipedia", "{all}");
    }
    // HTTP/1.0: no chunking; the end of the body is the end of the connection.
    let mut c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let all = String::from_utf8_lossy(&read_all(&mut c, Vec::new())).into_owned();
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(!all.contains("Transfer-Encoding"), "{all}");
    assert!(all.contains("Connection: close\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\nWikipedia"), "{all}");
}

/// An HTTP/1.1 upstream that keeps connections open and answers each request with the number
/// of its connection; with `close_after_first`, it drops each connection after one answer
/// (without saying so), as an app server with a short keep-alive timeout does.
fn keepalive_upstream(close_after_first: bool) -> (u16, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let port = upstream(move |mut s| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let mut pending = Vec::new();
        loop {
            let head = loop {
                if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let rest = pending.split_off(i + 4);
                    break std::mem::replace(&mut pending, rest);
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => pending.extend_from_slice(&chunk[..k]),
                }
            };
            let head = String::from_utf8_lossy(&head).into_owned();
            let body = format!("conn {n}");
            let close = header(&head, "connection").is_some_and(|v| v == "close");
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            if s.write_all(reply.as_bytes()).is_err() || close || close_after_first {
                return;
            }
        }
    });
    (port, accepted)
}

#[test]
fn upstream_keepalive_reuses_connections() {
    let (kept, kept_count) = keepalive_upstream(false);
    let (flaky, flaky_count) = keepalive_upstream(true);
    let (plain, plain_count) = keepalive_upstream(false);
    let p = Portico::start(
        "proxy-keepalive",
        &format!(
            "upstream kept {{ server 127.0.0.1:{kept}; keepalive 4; }}
             upstream flaky {{ server 127.0.0.1:{flaky}; keepalive 4; }}
             upstream plain {{ server 127.0.0.1:{plain}; }}
             server {{ listen 127.0.0.1:0;
               proxy_http_version 1.1; proxy_set_header Connection \"\";
               location /kept {{ proxy_pass http://kept; }}
               location /flaky {{ proxy_pass http://flaky; }}
               location /plain {{ proxy_pass http://plain; }} }}"
        ),
    );
    for path in ["/kept", "/flaky", "/plain"] {
        for _ in 0..5 {
            let r = crate::serve::get(p.port(), path, "");
            assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
        }
    }
    assert_eq!(
        kept_count.load(Ordering::SeqCst),
        1,
        "one connection for five requests"
    );
    // A kept connection the upstream closed is replaced without an error.
    assert_eq!(flaky_count.load(Ordering::SeqCst), 5);
    // Without `keepalive`, every request has its own connection.
    assert_eq!(plain_count.load(Ordering::SeqCst), 5);
}

#[test]
fn error_pages_cover_upstream_failures_and_intercepted_errors() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let not_found = upstream(|mut s| {
        if read_head(&mut s).is_some() {
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nX-App: 1\r\n\r\napp's 404",
            );
        }
    });
    let p = Portico::start(
        "proxy-error-pages",
        &format!(
            "server {{ listen 127.0.0.1:0;
               location /down/ {{ proxy_pass http://127.0.0.1:{closed}; error_page 502 504 = @down; }}
               location @down {{ return 200 \"fallback for $uri\"; }}
               location /plain/ {{ proxy_pass http://127.0.0.1:{closed}; error_page 502 /50x.txt; }}
               location = /50x.txt {{ return 200 \"sorry\"; }}
               location /app/ {{ proxy_pass http://127.0.0.1:{not_found}; }}
               location /intercepted/ {{ proxy_intercept_errors on; error_page 404 /nf;
                                        proxy_pass http://127.0.0.1:{not_found}; }}
               location = /nf {{ return 404 \"custom 404\"; }} }}"
        ),
    );
    let r = crate::serve::get(p.port(), "/down/x", "");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.ends_with("fallback for /down/x"), "{r}");
    // Without `=`, the page keeps the error's status.
    let r = crate::serve::get(p.port(), "/plain/x", "");
    assert!(r.starts_with("HTTP/1.1 502 Bad Gateway"), "{r}");
    assert!(r.ends_with("sorry"), "{r}");
    // Without proxy_intercept_errors the app's own 404 goes through.
    let r = crate::serve::get(p.port(), "/app/x", "");
    assert!(
        r.starts_with("HTTP/1.1 404") && r.ends_with("app's 404"),
        "{r}"
    );
    let r = crate::serve::get(p.port(), "/intercepted/x", "");
    assert!(
        r.starts_with("HTTP/1.1 404") && r.ends_with("custom 404"),
        "{r}"
    );
    assert!(!r.contains("X-App"), "{r}");
}

#[test]
fn answers_do_not_wait_for_a_body_nobody_reads_and_slow_bodies_time_out() {
    let echo = Echo::start();
    let p = Portico::start(
        "body-timeouts",
        &format!(
            "server {{ listen 127.0.0.1:0; client_body_timeout 500ms;
               location /return {{ return 200 done; }}
               location /up {{ proxy_pass http://127.0.0.1:{}; }} }}",
            echo.port
        ),
    );
    // `return` answers at once, as nginx does, though only part of the body came.
    let mut c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /return HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        .unwrap();
    let mut got = vec![0u8; 4096];
    let n = c.read(&mut got).unwrap();
    let answer = String::from_utf8_lossy(&got[..n]).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("done"),
        "{answer}"
    );
    // A proxied request whose body stalls is never sent upstream; the connection closes
    // without an answer (nginx's 408 is only logged).
    let mut c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        .unwrap();
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    assert!(all.is_empty(), "{}", String::from_utf8_lossy(&all));
}
