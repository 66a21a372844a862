//! `portico check`'s linter: rules over a compiled configuration that nginx accepts but that
//! is dangerous or wrong in practice (gixy's checks and more), each with a stable id, a level,
//! a one-line why and a reference; inline suppression (`# portico-ignore: RULE reason`);
//! route expectations (`--expect`); the output formats; `fmt`.
//!
//! It reads the include-expanded syntax tree (for spans as written) and the plan (for what
//! nginx makes of it: sockets, inheritance). It must not touch the machine: no sockets, no DNS,
//! nothing written; the only file access is reading (the config through `Fs`, cert files to
//! see whether they exist).

pub mod expect;
pub mod fmt;
pub mod model;
pub mod output;
pub mod regex_scan;
pub mod rules;

use std::path::{Path, PathBuf};

use crate::config::span::{FileId, SourceMap, Span};
use crate::config::{Compiled, Diagnostic, Severity};
use crate::plan::Plan;

pub use rules::{RULES, Rule};

/// How bad a finding is. Ordered: `Info < Warning < Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// One problem found: by the compiler (what `nginx -t` checks) or by a lint rule.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The rule id (a lint rule's, or the compiler diagnostic's code).
    pub rule: &'static str,
    pub level: Level,
    pub message: String,
    pub span: Option<Span>,
    pub notes: Vec<String>,
    /// From the compiler (the config is invalid when such a finding is an error).
    pub compiler: bool,
    /// Where a finding comes from a route expectation: the expectation file and line.
    pub external: Option<(PathBuf, usize)>,
}

impl Finding {
    pub fn new(rule: &'static str, message: impl Into<String>, span: Span) -> Finding {
        let level = rules::rule(rule).map_or(Level::Warning, |r| r.level);
        Finding {
            rule,
            level,
            message: message.into(),
            span: Some(span),
            notes: Vec::new(),
            compiler: false,
            external: None,
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Finding {
        self.notes.push(note.into());
        self
    }

    fn from_diagnostic(d: &Diagnostic) -> Finding {
        // Portico's own verdict on directives it does not implement is not nginx's: for a
        // linter of nginx configs it is advice (rule `unsupported`, level info), which matters
        // only to whoever means to serve the config with Portico (`--fail-on info`).
        let portico_only = is_portico_only(d);
        Finding {
            rule: if portico_only { "unsupported" } else { d.code },
            level: match d.severity {
                _ if portico_only => Level::Info,
                Severity::Error => Level::Error,
                Severity::Warning => Level::Warning,
            },
            message: d.message.clone(),
            span: d.span.or(d.line_at),
            notes: d.notes.clone(),
            compiler: !portico_only,
            external: None,
        }
    }
}

/// Diagnostics about what Portico does not implement (nginx accepts these configs).
fn is_portico_only(d: &Diagnostic) -> bool {
    matches!(d.code, "unsupported" | "unsupported-closes")
}

/// Whether `nginx -t` would refuse the configuration: an error other than Portico's own
/// "not supported yet".
pub fn invalid(compiled: &Compiled) -> bool {
    compiled
        .diagnostics
        .iter()
        .any(|d| d.is_error() && !is_portico_only(d))
}

/// What `check` was asked for, beyond the files.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Missing certificate files and host names that need DNS become errors.
    pub strict: bool,
    /// `--map FROM=TO`: paths the config names under FROM are read from TO.
    pub maps: Vec<(PathBuf, PathBuf)>,
    /// The directory relative file names in the config start from (nginx's conf prefix).
    pub conf_prefix: PathBuf,
}

impl Settings {
    /// A path as the config names it, mapped onto the checkout.
    pub fn map_path(&self, path: &Path) -> PathBuf {
        for (from, to) in &self.maps {
            if let Ok(rest) = path.strip_prefix(from) {
                return to.join(rest);
            }
        }
        path.to_path_buf()
    }
}

/// Runs every rule over a compiled configuration and its plan, and adds the compiler's own
/// diagnostics; suppressed findings are dropped. Sorted by file and position.
pub fn lint(compiled: &Compiled, plan: &Plan, settings: &Settings) -> Vec<Finding> {
    let mut findings: Vec<Finding> = compiled
        .diagnostics
        .iter()
        .map(Finding::from_diagnostic)
        .collect();
    // Rules read the tree as written. On a config with syntax errors the tree is a guess (the
    // parser skipped to a `;` or `}`), so only the compiler's errors are reported; other
    // errors (a missing include, an unknown variable) leave the rest of the tree as meant.
    let syntax_errors = compiled.sources.syntax_errors.iter().any(|e| !e.is_empty());
    if !syntax_errors {
        let model = model::Model::new(&compiled.sources, compiled.mode);
        rules::run(&model, plan, settings, &mut findings);
    }
    if settings.strict {
        for f in &mut findings {
            if matches!(f.rule, "missing-file" | "unresolved-host") {
                f.level = Level::Error;
            }
        }
    }
    // A file included in several places gives the same finding once per place: keep one.
    let mut seen = std::collections::HashSet::new();
    findings.retain(|f| {
        seen.insert((
            f.rule,
            f.span.map(|s| (s.file, s.start, s.end)),
            f.message.clone(),
        ))
    });
    let suppressions = Suppressions::new(compiled);
    let map = &compiled.sources.map;
    findings.retain(|f| f.level == Level::Error && f.compiler || !suppressions.covers(f, map));
    findings.sort_by_key(|f| f.span.map_or((u32::MAX, u32::MAX), |s| (s.file.0, s.start)));
    findings
}

/// `# portico-ignore: RULE[,RULE...] reason` comments, by file and line. A comment covers
/// findings on its own line and on the next line; `all` covers every rule.
struct Suppressions {
    /// (file, line, rules).
    entries: Vec<(FileId, usize, Vec<String>)>,
}

impl Suppressions {
    fn new(compiled: &Compiled) -> Suppressions {
        let map: &SourceMap = &compiled.sources.map;
        let mut entries = Vec::new();
        for (i, tree) in compiled.sources.trees.iter().enumerate() {
            let file = FileId(i as u32);
            for c in &tree.comments {
                let Some(rules) = parse_suppression(&c.text) else {
                    continue;
                };
                let line = map.get(file).line_of(c.span.start);
                entries.push((file, line, rules));
            }
        }
        Suppressions { entries }
    }

    fn covers(&self, f: &Finding, map: &SourceMap) -> bool {
        let Some(span) = f.span else { return false };
        if self.entries.is_empty() {
            return false;
        }
        let at = map.get(span.file).line_of(span.start);
        self.entries.iter().any(|(file, line, rules)| {
            *file == span.file
                && (at == *line || at == line + 1)
                && rules.iter().any(|r| r == f.rule || r == "all")
        })
    }
}

/// The rule ids of a `portico-ignore:` comment, if it is one.
pub fn parse_suppression(comment: &str) -> Option<Vec<String>> {
    let text = comment.trim_start_matches('#').trim();
    let rest = text.strip_prefix("portico-ignore:")?.trim();
    let ids = rest.split_whitespace().next()?;
    Some(
        ids.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    )
}
