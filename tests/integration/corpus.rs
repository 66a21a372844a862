//! The corpus verdict test: every real-world configuration in `tests/corpus` (files nobody on
//! the project wrote; see `tests/corpus/SOURCES.md`) goes through `portico -t` and, where
//! nginx is installed, through `nginx -t`; the two must agree (same ok/failed verdict and,
//! for a failure, the same first error, file and line).
//!
//! How each file is pointed at:
//!
//! * A file with a top-level `http` or `events` block is a *main* file: `-c FILE`.
//! * Any other file is *wrapped*: a generated `events {} http { include "FILE"; }` file, the
//!   way a real deployment includes it from its `http {}`. Portico also reads the *lone* file
//!   (`-c FILE`, which it takes as the inside of `http {}` when its top level is http-level:
//!   some directive allowed in `http` but not at the main level, none the other way round,
//!   by the contexts in `grammar/directives.tsv`);
//!   an http-level lone file must give the same verdict as the wrapper. A lone file that is
//!   not http-level (`location` blocks at its top, say) is only checked not to crash.
//!
//! The prefix (`-p`) is the corpus project's root (`tests/corpus/<project>/`). nginx resolves a
//! relative `include` against the directory of the `-c` file, so the wrapper (and the lone
//! file, when it lives elsewhere) is put in the file's *configuration directory*: the nearest
//! directory at or above it that holds one of the project's main files (the `nginx.conf`
//! that includes it in the real repository), else the project root. There every file the
//! repository ships is present. Absolute paths (`/etc/nginx/...`, certificates, log files)
//! are the machine's: mostly absent, and then both must fail the same way. `nginx -t` also
//! binds listen addresses, resolves upstream names and checks users; so does `portico -t`.
//!
//! Every run works on its own scratch copy of the project tree (nginx -t creates log files),
//! and paths in messages are normalized: the copy's root becomes `<root>`, a moved lone file
//! its place in the corpus, the wrapper `<wrapper>`.
//!
//! [`KNOWN_DIFFERENCES`] lists every file that currently mismatches, with the Portico feature
//! it needs. The test fails on a mismatch not listed there and, when nginx is installed (so
//! every comparison ran), on a listed file that now matches. Without nginx, Portico still runs
//! on every file: it must never crash (exit 0 or 1, something on stderr), and an http-level
//! lone file must still agree with its wrapper.
//!
//! `cargo test --test integration corpus -- --nocapture` prints the table.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::{self, Verdict};

/// Files that currently mismatch (path under `tests/corpus`, the Portico feature missing).
/// Keep it true: the test fails when a listed file matches again.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

const WRAPPER: &str = ".portico-corpus-wrapper.conf";
const LONE_PREFIX: &str = ".portico-corpus-lone-";

#[test]
fn corpus_verdicts_match_nginx() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let files = corpus_files(&corpus);
    assert!(
        files.len() >= 80,
        "the corpus in {} looks incomplete ({} files)",
        corpus.display(),
        files.len()
    );
    let table = DirectiveContexts::load();
    let texts: HashMap<&str, String> = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(corpus.join(f)).expect("read corpus file");
            (f.as_str(), String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    let main_files: BTreeSet<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| is_main(&texts[f]))
        .collect();
    let nginx = support::nginx_binary();

    let plans: Vec<Plan> = files
        .iter()
        .map(|f| Plan::new(f, &texts[f.as_str()], &main_files, &table))
        .collect();

    // The runs are independent (each has its own scratch trees); nginx -t and portico -t may
    // wait on DNS, so run them in parallel, keeping the corpus order for the report.
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; plans.len()]);
    let workers = std::thread::available_parallelism().map_or(4, |n| n.get().clamp(2, 8));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(plan) = plans.get(i) else { break };
                    let outcome = plan.run(&corpus, nginx.as_deref());
                    results.lock().unwrap()[i] = Some(outcome);
                }
            });
        }
    });
    let outcomes: Vec<Outcome> = results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|o| o.expect("every file ran"))
        .collect();

    report(&outcomes, nginx.as_deref());
    judge(&outcomes, nginx.is_some());
}

// ---------------------------------------------------------------------------------------------
// Planning: how nginx and portico are pointed at a file.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A top-level `http` or `events` block: `-c FILE`.
    Main,
    /// Wrapped; the lone file is http-level and must agree with the wrapper.
    Http,
    /// Wrapped; the lone file is not http-level (only checked not to crash).
    Other,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Http => "http",
            Kind::Other => "wrap",
        }
    }
}

struct Plan {
    /// Path under `tests/corpus`, with `/`.
    file: String,
    /// The corpus project: the first component (`server-configs-nginx`).
    project: String,
    /// The file's path inside the project.
    rel: String,
    /// The configuration directory inside the project ("" for its root), for wrapped files.
    conf_dir: String,
    kind: Kind,
}

impl Plan {
    fn new(file: &str, text: &str, main_files: &BTreeSet<&str>, table: &DirectiveContexts) -> Plan {
        let (project, rel) = file
            .split_once('/')
            .expect("corpus files live in a project");
        let kind = if main_files.contains(file) {
            Kind::Main
        } else if table.http_level(&top_level(text)) {
            Kind::Http
        } else {
            Kind::Other
        };
        // The nearest directory at or above the file holding one of the project's main files.
        let mut conf_dir = String::new();
        let mut dir = Path::new(rel).parent();
        while let Some(d) = dir {
            let d = d.to_str().unwrap();
            let prefix = if d.is_empty() {
                format!("{project}/")
            } else {
                format!("{project}/{d}/")
            };
            let holds_main = main_files
                .iter()
                .any(|m| m.strip_prefix(&prefix).is_some_and(|r| !r.contains('/')));
            if holds_main {
                conf_dir = d.to_string();
                break;
            }
            dir = Path::new(d).parent();
        }
        Plan {
            file: file.to_string(),
            project: project.to_string(),
            rel: rel.to_string(),
            conf_dir,
            kind,
        }
    }

    fn run(&self, corpus: &Path, nginx: Option<&Path>) -> Outcome {
        let project = corpus.join(&self.project);
        let scratch = support::scratch(&format!("corpus/{}", self.file.replace('/', "__")));
        let mut outcome = Outcome {
            file: self.file.clone(),
            kind: self.kind,
            nginx: None,
            portico: Run::default(),
            lone: None,
            problems: Vec::new(),
        };

        // Each run gets its own copy of the project tree: nginx -t creates log files.
        let setup = |name: &str| -> Setup {
            let root = scratch.join(name);
            copy_tree(&project, &root);
            let file = root.join(&self.rel);
            let mut subs = Vec::new();
            let conf = if self.kind == Kind::Main {
                file.clone()
            } else {
                let wrapper = root.join(&self.conf_dir).join(WRAPPER);
                std::fs::write(
                    &wrapper,
                    format!(
                        "events {{}}\nhttp {{\n    include \"{}\";\n}}\n",
                        file.display()
                    ),
                )
                .expect("write wrapper");
                subs.push((wrapper.display().to_string(), "<wrapper>".to_string()));
                wrapper
            };
            subs.push((format!("{}/", root.display()), "<root>/".to_string()));
            subs.push((root.display().to_string(), "<root>".to_string()));
            Setup { root, conf, subs }
        };

        if let Some(nginx) = nginx {
            let s = setup("nginx");
            let v = support::nginx_test(nginx, &prefix(&s.root), &s.conf);
            outcome.nginx = Some(Run::from_verdict(&v, &s.subs));
        }

        let s = setup("portico");
        outcome.portico = run_portico(&s.root, &s.conf, &s.subs, &mut outcome.problems);

        if self.kind != Kind::Main {
            // The lone file, from the configuration directory so its includes resolve as in
            // the wrapper.
            let root = scratch.join("lone");
            copy_tree(&project, &root);
            let file = root.join(&self.rel);
            let conf_dir = root.join(&self.conf_dir);
            let mut subs = Vec::new();
            let conf = if file.parent() == Some(conf_dir.as_path()) {
                file
            } else {
                let name = Path::new(&self.rel).file_name().unwrap().to_str().unwrap();
                let moved = conf_dir.join(format!("{LONE_PREFIX}{name}"));
                std::fs::copy(&file, &moved).expect("place lone file");
                subs.push((moved.display().to_string(), format!("<root>/{}", self.rel)));
                moved
            };
            subs.push((format!("{}/", root.display()), "<root>/".to_string()));
            subs.push((root.display().to_string(), "<root>".to_string()));
            outcome.lone = Some(run_portico(&root, &conf, &subs, &mut outcome.problems));
        }

        self.compare(&mut outcome);
        outcome
    }

    fn compare(&self, o: &mut Outcome) {
        if let Some(n) = &o.nginx
            && !n.same(&o.portico)
        {
            // Where nginx's error is among Portico's (it reports them all), for the fixer.
            let later = match &n.first_error {
                Some(e) if !n.ok => match o.portico.errors.iter().position(|p| p == e) {
                    Some(k) => format!("\n      (nginx's error is portico's error #{})", k + 1),
                    None => format!(
                        "\n      (nginx's error is not among portico's {} errors)",
                        o.portico.errors.len()
                    ),
                },
                _ => String::new(),
            };
            o.problems.push(format!(
                "nginx and portico disagree:\n      nginx:   {}\n      portico: {}{later}",
                n.describe(),
                o.portico.describe()
            ));
        }
        if self.kind == Kind::Http {
            let lone = o.lone.as_ref().expect("lone run");
            if !lone.same(&o.portico) {
                o.problems.push(format!(
                    "the lone file and its wrapper disagree:\n      wrapper: {}\n      lone:    {}",
                    o.portico.describe(),
                    lone.describe()
                ));
            }
        }
    }
}

struct Setup {
    root: PathBuf,
    conf: PathBuf,
    subs: Vec<(String, String)>,
}

/// `-p` with a trailing slash, as nginx makes it.
fn prefix(root: &Path) -> PathBuf {
    PathBuf::from(format!("{}/", root.display()))
}

/// `portico -t`, also checking that it did not crash.
fn run_portico(
    root: &Path,
    conf: &Path,
    subs: &[(String, String)],
    problems: &mut Vec<String>,
) -> Run {
    let out = support::portico()
        .arg("-t")
        .arg("-p")
        .arg(prefix(root))
        .arg("-c")
        .arg(conf)
        .output()
        .expect("run portico");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    if !matches!(code, Some(0 | 1)) || stderr.trim().is_empty() {
        problems.push(format!(
            "portico crashed on {} (exit {:?}, stderr: {:?})",
            normalize(&conf.display().to_string(), subs),
            code,
            normalize(&stderr, subs)
        ));
    }
    let first_error = stderr
        .lines()
        .find_map(|l| l.split_once("[emerg] ").map(|(_, m)| m.to_string()));
    Run::from_verdict(
        &Verdict {
            ok: out.status.success(),
            first_error,
            stderr,
        },
        subs,
    )
}

// ---------------------------------------------------------------------------------------------
// Verdicts, normalized.

#[derive(Clone, Debug, Default)]
struct Run {
    ok: bool,
    first_error: Option<String>,
    /// Every `[emerg]` line (Portico reports them all; nginx stops at the first).
    errors: Vec<String>,
}

impl Run {
    fn from_verdict(v: &Verdict, subs: &[(String, String)]) -> Run {
        Run {
            ok: v.ok,
            first_error: v.first_error.as_deref().map(|e| normalize(e, subs)),
            errors: v
                .stderr
                .lines()
                .filter_map(|l| l.split_once("[emerg] "))
                .map(|(_, m)| normalize(m, subs))
                .collect(),
        }
    }

    fn same(&self, other: &Run) -> bool {
        self.ok == other.ok && (self.ok || self.first_error == other.first_error)
    }

    fn short(&self) -> &'static str {
        if self.ok { "ok" } else { "failed" }
    }

    fn describe(&self) -> String {
        match (&self.first_error, self.ok) {
            (_, true) => "ok".to_string(),
            (Some(e), false) => e.clone(),
            (None, false) => "failed, no [emerg] line".to_string(),
        }
    }
}

fn normalize(s: &str, subs: &[(String, String)]) -> String {
    subs.iter().fold(s.to_string(), |acc, (from, to)| {
        acc.replace(from.as_str(), to)
    })
}

#[derive(Clone, Debug)]
struct Outcome {
    file: String,
    kind: Kind,
    nginx: Option<Run>,
    /// The main file, or the wrapper.
    portico: Run,
    /// The lone file (wrapped files only).
    lone: Option<Run>,
    /// Mismatches and crashes.
    problems: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Report and judgement.

fn report(outcomes: &[Outcome], nginx: Option<&Path>) {
    eprintln!();
    eprintln!(
        "corpus: {} files; nginx: {}",
        outcomes.len(),
        nginx.map_or("not installed (portico only)".to_string(), |p| p
            .display()
            .to_string())
    );
    eprintln!(
        "{:13}  {:4}  {:6}  {:7}  {:6}  file",
        "match", "kind", "nginx", "portico", "lone"
    );
    for o in outcomes {
        let known = KNOWN_DIFFERENCES.iter().any(|(f, _)| *f == o.file);
        let verdict = match (o.problems.is_empty(), known, nginx.is_some()) {
            (true, false, _) => "yes",
            (true, true, true) => "yes (listed!)",
            (true, true, false) => "yes (listed)",
            (false, true, _) => "no (known)",
            (false, false, _) => "NO",
        };
        eprintln!(
            "{:13}  {:4}  {:6}  {:7}  {:6}  {}",
            verdict,
            o.kind.label(),
            o.nginx.as_ref().map_or("-", Run::short),
            o.portico.short(),
            o.lone.as_ref().map_or("-", Run::short),
            o.file,
        );
    }
    let matched = outcomes.iter().filter(|o| o.problems.is_empty()).count();
    if nginx.is_some() {
        eprintln!("{matched} of {} files match nginx", outcomes.len());
    } else {
        eprintln!(
            "{matched} of {} files pass without nginx (no crash; lone file agrees with wrapper)",
            outcomes.len()
        );
    }
    for o in outcomes.iter().filter(|o| !o.problems.is_empty()) {
        eprintln!("\n  {}:", o.file);
        for p in &o.problems {
            eprintln!("    {p}");
        }
        if let Some((_, reason)) = KNOWN_DIFFERENCES.iter().find(|(f, _)| *f == o.file) {
            eprintln!("    known: {reason}");
        }
    }
    eprintln!();
}

fn judge(outcomes: &[Outcome], compared_with_nginx: bool) {
    let mut failures = Vec::new();
    for (file, _) in KNOWN_DIFFERENCES {
        if !outcomes.iter().any(|o| o.file == *file) {
            failures.push(format!(
                "{file}: listed in KNOWN_DIFFERENCES but not in the corpus"
            ));
        }
    }
    for o in outcomes {
        let known = KNOWN_DIFFERENCES.iter().any(|(f, _)| *f == o.file);
        let crashed = o.problems.iter().any(|p| p.starts_with("portico crashed"));
        if crashed || (!o.problems.is_empty() && !known) {
            failures.push(format!("{}:\n    {}", o.file, o.problems.join("\n    ")));
        } else if known && o.problems.is_empty() && compared_with_nginx {
            failures.push(format!(
                "{}: matches now; remove it from KNOWN_DIFFERENCES",
                o.file
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "corpus verdicts:\n  {}",
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// The corpus on disk.

/// Every corpus file, relative to the corpus, sorted; without the corpus's own documents.
fn corpus_files(corpus: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read corpus dir") {
            let path = entry.expect("corpus entry").path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let rel = path.strip_prefix(base).unwrap();
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_str().expect("UTF-8 corpus path"))
                    .collect::<Vec<_>>()
                    .join("/");
                if rel != "SOURCES.md" && rel != "README.md" {
                    out.push(rel);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(corpus, corpus, &mut out);
    out.sort();
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create scratch tree");
    for entry in std::fs::read_dir(from).expect("read project dir") {
        let entry = entry.expect("project entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy corpus file");
        }
    }
}

/// A main file: a top-level `http` or `events` block.
fn is_main(text: &str) -> bool {
    top_level(text)
        .iter()
        .any(|(name, block)| *block && (name == "http" || name == "events"))
}

/// The top-level directives of a file, `(name, has a block)`, read with nginx's token rules
/// (comments, quotes, `\` escapes, `${var}`); good enough on broken files too.
fn top_level(text: &str) -> Vec<(String, bool)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut first: Option<String> = None;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b';' | b'{' => {
                if depth == 0
                    && let Some(name) = first.take()
                {
                    out.push((name, b[i] == b'{'));
                }
                first = None;
                if b[i] == b'{' {
                    depth += 1;
                }
                i += 1;
            }
            b'}' => {
                first = None;
                depth = depth.saturating_sub(1);
                i += 1;
            }
            q @ (b'"' | b'\'') => {
                let start = i + 1;
                i = start;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let word = String::from_utf8_lossy(&b[start..i.min(b.len())]).into_owned();
                first.get_or_insert(word);
                i += 1;
            }
            _ => {
                let start = i;
                while i < b.len() {
                    match b[i] {
                        b'\\' => i += 2,
                        b'{' if i > start && b[i - 1] == b'$' => i += 1,
                        b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' => break,
                        _ => i += 1,
                    }
                }
                let word = String::from_utf8_lossy(&b[start..i.min(b.len())]).into_owned();
                first.get_or_insert(word);
            }
        }
    }
    out
}

/// Where each directive may appear, from the directive table (`grammar/directives.tsv`):
/// whether some row allows it in `http`, and whether some row allows it at the main level.
struct DirectiveContexts(HashMap<String, (bool, bool)>);

impl DirectiveContexts {
    fn load() -> DirectiveContexts {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grammar/directives.tsv");
        let text = std::fs::read_to_string(&path).expect("read grammar/directives.tsv");
        let mut map: HashMap<String, (bool, bool)> = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let cols: Vec<&str> = line.split('\t').collect();
            let (name, contexts) = (cols[0], cols[2]);
            let entry = map.entry(name.to_string()).or_default();
            for c in contexts.split(',') {
                entry.0 |= c == "http" || c == "any";
                entry.1 |= c == "main" || c == "any";
            }
        }
        assert!(
            map.contains_key("server"),
            "{} has no directives",
            path.display()
        );
        DirectiveContexts(map)
    }

    /// Some top-level directive allowed in `http` but not at the main level; none the other
    /// way round (Portico's rule for reading a lone file as the inside of `http {}`).
    fn http_level(&self, top: &[(String, bool)]) -> bool {
        let (mut http_only, mut main_only) = (false, false);
        for (name, _) in top {
            let (http, main) = self.0.get(name).copied().unwrap_or_default();
            http_only |= http && !main;
            main_only |= main && !http;
        }
        http_only && !main_only
    }
}
