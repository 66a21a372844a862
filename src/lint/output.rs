//! Findings rendered for people and for CI: rich text (codespan, colour on a terminal only),
//! JSON, SARIF 2.1.0 (code scanning), GitHub workflow annotations, Checkstyle XML.
//! Rendering happens once, at the edge; nothing here decides what is a finding.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use codespan_reporting::diagnostic as cs;
use codespan_reporting::term;
use serde_json::{Value, json};

use super::{Finding, Level, rules};
use crate::config::span::SourceMap;

/// The output formats of `portico check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The source line, a caret, the rule id and a help line.
    Text,
    /// One JSON document: the findings and a summary.
    Json,
    /// SARIF 2.1.0, for GitHub code scanning and other SARIF viewers.
    Sarif,
    /// GitHub Actions workflow commands (`::error file=...`): annotations on the diff.
    Github,
    /// Checkstyle XML (Jenkins, GitLab via converters, many IDEs).
    Checkstyle,
}

/// A finding with its place resolved to a file name and 1-based line and column.
#[derive(Clone, Debug)]
pub struct Located {
    pub finding: Finding,
    /// As shown: mapped onto the checkout, relative to the current directory when inside it.
    pub file: Option<String>,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
}

/// Resolves each finding's place; `show` turns a file name into the name to print.
pub fn locate(
    findings: &[Finding],
    map: &SourceMap,
    show: &dyn Fn(&str) -> String,
) -> Vec<Located> {
    findings
        .iter()
        .map(|f| {
            if let Some((path, line)) = &f.external {
                return Located {
                    finding: f.clone(),
                    file: Some(show(&path.display().to_string())),
                    line: *line,
                    column: 1,
                    end_line: *line,
                    end_column: 1,
                };
            }
            match f.span {
                Some(span) if (span.file.0 as usize) < map.len() => {
                    let file = map.get(span.file);
                    let (line, column) = file.line_col(span.start);
                    let (end_line, end_column) = file.line_col(span.end.max(span.start));
                    Located {
                        finding: f.clone(),
                        file: Some(show(&file.name())),
                        line,
                        column,
                        end_line,
                        end_column,
                    }
                }
                _ => Located {
                    finding: f.clone(),
                    file: None,
                    line: 1,
                    column: 1,
                    end_line: 1,
                    end_column: 1,
                },
            }
        })
        .collect()
}

fn help_and_url(f: &Finding) -> (Option<&'static str>, &'static str) {
    match rules::rule(f.rule) {
        Some(r) => (Some(r.help), r.url),
        None => (None, rules::compiler_rule_url()),
    }
}

/// The rich form of one configuration's findings.
pub fn text(findings: &[Finding], map: &SourceMap, color: bool) -> String {
    let config = term::Config::default();
    let styles = term::Styles::default();
    let mut buffer = term::termcolor::Buffer::ansi();
    let mut plain = String::new();
    for f in findings {
        let severity = match f.level {
            Level::Error => cs::Severity::Error,
            Level::Warning => cs::Severity::Warning,
            Level::Info => cs::Severity::Note,
        };
        let mut notes = f.notes.clone();
        let (help, url) = help_and_url(f);
        if let Some(h) = help {
            notes.push(format!("help: {h}"));
            notes.push(format!("see: {url}"));
        }
        if let Some((path, line)) = &f.external {
            notes.insert(0, format!("expected at {}:{line}", path.display()));
        }
        let mut c = cs::Diagnostic::new(severity)
            .with_message(&f.message)
            .with_code(f.rule)
            .with_notes(notes);
        if let Some(span) = f.span {
            let range = span.start as usize..span.end as usize;
            c = c.with_labels(vec![cs::Label::primary(span.file.0 as usize, range)]);
        }
        let rendered = if color {
            let mut w = term::StylesWriter::new(&mut buffer, &styles);
            term::emit_to_write_style(&mut w, &config, map, &c)
        } else {
            term::emit_to_string(&mut plain, &config, map, &c)
        };
        if rendered.is_err() {
            let _ = writeln!(plain, "{}[{}]: {}", f.level.as_str(), f.rule, f.message);
        }
    }
    if color {
        String::from_utf8_lossy(buffer.as_slice()).into_owned() + &plain
    } else {
        plain
    }
}

fn located_json(l: &Located) -> Value {
    let f = &l.finding;
    let (help, url) = help_and_url(f);
    json!({
        "rule": f.rule,
        "level": f.level.as_str(),
        "message": f.message,
        "file": l.file,
        "line": l.line,
        "column": l.column,
        "end_line": l.end_line,
        "end_column": l.end_column,
        "notes": f.notes,
        "help": help,
        "url": url,
        "source": if f.compiler { "compiler" } else if f.external.is_some() { "expect" } else { "lint" },
    })
}

/// `--format json`.
pub fn json(located: &[Located]) -> String {
    let count = |lv: Level| located.iter().filter(|l| l.finding.level == lv).count();
    let doc = json!({
        "findings": located.iter().map(located_json).collect::<Vec<_>>(),
        "summary": {
            "errors": count(Level::Error),
            "warnings": count(Level::Warning),
            "infos": count(Level::Info),
        },
    });
    format!("{doc:#}\n")
}

fn sarif_level(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warning => "warning",
        Level::Info => "note",
    }
}

/// `--format sarif`: one run of the `portico` driver, every rule described.
pub fn sarif(located: &[Located]) -> String {
    let mut rule_index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut descriptors: Vec<Value> = rules::RULES
        .iter()
        .enumerate()
        .map(|(i, r)| {
            rule_index.insert(r.id, i);
            let mut props = json!({ "tags": ["nginx"] });
            if let Some(g) = r.gixy {
                props["gixy"] = json!(g);
            }
            json!({
                "id": r.id,
                "name": r.id,
                "shortDescription": { "text": r.summary },
                "fullDescription": { "text": format!("{} ({})", r.summary, r.help) },
                "help": { "text": r.help },
                "helpUri": r.url,
                "defaultConfiguration": { "level": sarif_level(r.level) },
                "properties": props,
            })
        })
        .collect();
    // Compiler diagnostics (what nginx -t checks) get a descriptor per code seen.
    for l in located {
        let id = l.finding.rule;
        if !rule_index.contains_key(id) {
            rule_index.insert(id, descriptors.len());
            descriptors.push(json!({
                "id": id,
                "name": id,
                "shortDescription": { "text": format!("nginx configuration check: {id}") },
                "helpUri": rules::compiler_rule_url(),
                "defaultConfiguration": { "level": sarif_level(l.finding.level) },
            }));
        }
    }
    let results: Vec<Value> = located
        .iter()
        .map(|l| {
            let f = &l.finding;
            let mut message = f.message.clone();
            for n in &f.notes {
                message.push('\n');
                message.push_str(n);
            }
            let mut result = json!({
                "ruleId": f.rule,
                "ruleIndex": rule_index[f.rule],
                "level": sarif_level(f.level),
                "message": { "text": message },
            });
            if let Some(file) = &l.file {
                result["locations"] = json!([{
                    "physicalLocation": {
                        "artifactLocation": { "uri": uri_of(file) },
                        "region": {
                            "startLine": l.line,
                            "startColumn": l.column,
                            "endLine": l.end_line,
                            "endColumn": l.end_column.max(if l.end_line == l.line { l.column } else { 1 }),
                        },
                    },
                }]);
            }
            result
        })
        .collect();
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "portico",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": descriptors,
                },
            },
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    });
    format!("{doc:#}\n")
}

/// A file name as a SARIF artifact URI: relative paths stay relative (code scanning resolves
/// them against the checkout), absolute ones become `file://` URIs.
fn uri_of(file: &str) -> String {
    let encoded: String = file
        .chars()
        .map(|c| match c {
            ' ' => "%20".to_string(),
            '%' => "%25".to_string(),
            '#' => "%23".to_string(),
            '?' => "%3F".to_string(),
            c => c.to_string(),
        })
        .collect();
    if file.starts_with('/') {
        format!("file://{encoded}")
    } else {
        encoded
    }
}

/// `--format github`: one workflow command per finding.
pub fn github(located: &[Located]) -> String {
    let mut s = String::new();
    for l in located {
        let f = &l.finding;
        let command = match f.level {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "notice",
        };
        let mut props = Vec::new();
        if let Some(file) = &l.file {
            props.push(format!("file={}", gh_property(file)));
            props.push(format!("line={}", l.line));
            props.push(format!("col={}", l.column));
            props.push(format!("endLine={}", l.end_line));
        }
        props.push(format!(
            "title={}",
            gh_property(&format!("portico {}", f.rule))
        ));
        let mut message = f.message.clone();
        if let (Some(help), _) = help_and_url(f) {
            message.push_str("\nhelp: ");
            message.push_str(help);
        }
        let _ = writeln!(s, "::{command} {}::{}", props.join(","), gh_data(&message));
    }
    s
}

fn gh_data(v: &str) -> String {
    v.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn gh_property(v: &str) -> String {
    gh_data(v).replace(':', "%3A").replace(',', "%2C")
}

/// `--format checkstyle`.
pub fn checkstyle(located: &[Located]) -> String {
    let mut by_file: BTreeMap<String, Vec<&Located>> = BTreeMap::new();
    for l in located {
        by_file
            .entry(l.file.clone().unwrap_or_default())
            .or_default()
            .push(l);
    }
    let mut s =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<checkstyle version=\"4.3\">\n");
    for (file, items) in by_file {
        let _ = writeln!(s, "  <file name=\"{}\">", xml(&file));
        for l in items {
            let f = &l.finding;
            let severity = match f.level {
                Level::Error => "error",
                Level::Warning => "warning",
                Level::Info => "info",
            };
            let _ = writeln!(
                s,
                "    <error line=\"{}\" column=\"{}\" severity=\"{severity}\" message=\"{}\" source=\"portico.{}\"/>",
                l.line,
                l.column,
                xml(&f.message),
                xml(f.rule)
            );
        }
        s.push_str("  </file>\n");
    }
    s.push_str("</checkstyle>\n");
    s
}

fn xml(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            '\n' => s.push_str("&#10;"),
            // XML 1.0 has no way to write other control characters.
            c if (c as u32) < 0x20 && c != '\t' => s.push('?'),
            c => s.push(c),
        }
    }
    s
}
