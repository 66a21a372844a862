//! Compile and route through large generated configurations: 1,000 servers (one name each)
//! on one socket, and one of them with N prefix locations (plus N/10 exact ones and 10
//! regexes). Lookup must stay flat as N grows: prefixes are found in a trie, names in a hash.
//!
//! `cargo bench --bench routing`

use std::net::SocketAddr;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portico::config::{self, Options, Paths, RealFs};
use portico::plan::route::{self, FileCheck, Request};
use portico::plan::{self, ListenAddr, LowerOptions, Plan};

const SERVERS: usize = 1000;

fn config_text(locations: usize) -> String {
    let mut s = String::with_capacity(locations * 64 + SERVERS * 96);
    for i in 0..SERVERS {
        s += &format!(
            "server {{ listen 127.0.0.1:8080; server_name name{i}.example.com; location / {{ return 200 \"s{i}\"; }} }}\n"
        );
    }
    s += "server {\n    listen 127.0.0.1:8080;\n    server_name big.example.com;\n";
    for r in 0..10 {
        s += &format!("    location ~ \\.ext{r}$ {{ return 200 \"re{r}\"; }}\n");
    }
    for i in 0..locations {
        s += &format!("    location /section{i}/ {{ proxy_pass http://127.0.0.1:9000; }}\n");
        if i % 10 == 0 {
            s += &format!("    location = /exact{i} {{ return 204; }}\n");
        }
    }
    s += "}\n";
    s
}

fn write(dir: &Path, locations: usize) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join(format!("big-{locations}.conf"));
    std::fs::write(&file, config_text(locations)).unwrap();
    file
}

fn compile(dir: &Path, file: &Path) -> Plan {
    let paths = Paths::new(dir, file);
    let mut compiled = config::compile(
        &RealFs,
        &Options {
            paths,
            globals: None,
            mode: None,
        },
    );
    let plan = plan::build(&mut compiled, &LowerOptions::default());
    assert!(!compiled.has_errors(), "{:?}", compiled.first_error());
    plan
}

struct NoFiles;
impl FileCheck for NoFiles {
    fn is_file(&self, _: &str) -> bool {
        false
    }
    fn is_dir(&self, _: &str) -> bool {
        false
    }
}

/// What a request borrows: its header lines and the socket's address.
struct Owned {
    headers: Vec<portico::plan::header::Line>,
    addr: ListenAddr,
}

fn owned(host: &str) -> Owned {
    use portico::plan::header::line_of;
    Owned {
        headers: vec![
            line_of("Host", host),
            line_of("User-Agent", "bench"),
            line_of("Accept", "*/*"),
        ],
        addr: ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap()),
    }
}

fn request<'a>(owned: &'a Owned, target: &'a str) -> Request<'a> {
    Request {
        method: "GET",
        target,
        version: "HTTP/1.1",
        headers: &owned.headers,
        remote: "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        local: &owned.addr,
        socket: &owned.addr,
        https: false,
        body_len: None,
        connection: 1,
        explain: false,
        tls: None,
        requests: 1,
        connection_ms: 0,
        chunked: false,
    }
}

fn benches(c: &mut Criterion) {
    let dir = std::env::temp_dir().join("portico-bench-routing");
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    for n in [1_000, 10_000] {
        let file = write(&dir, n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &file, |b, file| {
            b.iter(|| compile(&dir, file))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("route");
    for n in [10, 100, 1_000, 10_000] {
        let file = write(&dir, n);
        let plan = compile(&dir, &file);
        let (big, target) = (
            owned("big.example.com"),
            format!("/section{}/page?x=1", n - 1),
        );
        let deep = request(&big, &target);
        let decision = route::route(&plan, &deep, &NoFiles);
        assert!(matches!(decision.outcome, route::Outcome::Proxy { .. }));
        g.bench_with_input(BenchmarkId::new("prefix+proxy", n), &deep, |b, r| {
            b.iter(|| route::route(&plan, r, &NoFiles))
        });
        let name500 = owned("name500.example.com");
        let named = request(&name500, "/");
        g.bench_with_input(BenchmarkId::new("server-name+return", n), &named, |b, r| {
            b.iter(|| route::route(&plan, r, &NoFiles))
        });
    }
    g.finish();
}

criterion_group!(routing, benches);
criterion_main!(routing);
