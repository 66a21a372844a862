//! `portico fmt`: one canonical layout (four-space indentation, one directive a line,
//! arguments quoted only when they must be), keeping every comment where it was (own line,
//! or after a directive on the same line) and single blank lines between groups.
//! The result always parses back to the same tree, or is not given.

use super::super::config::ast::{Comment, Directive, same_tree};
use super::super::config::parse::parse;
use super::super::config::print::word;
use super::super::config::span::FileId;

/// Formats a file's text; `Err` with the syntax errors' messages when it does not parse.
pub fn format(text: &str) -> Result<String, String> {
    let (tree, errors) = parse(FileId(0), text);
    if let Some(e) = errors.first() {
        return Err(e.message.clone());
    }
    let mut p = Printer {
        text,
        comments: &tree.comments,
        next: 0,
        out: String::new(),
    };
    p.block(&tree.directives, 0, text.len() as u32);
    let out = p.out;
    let (again, errors) = parse(FileId(0), &out);
    if !errors.is_empty()
        || !same_tree(&tree.directives, &again.directives)
        || again.comments.len() != tree.comments.len()
    {
        return Err("formatting would change the configuration (please report this)".into());
    }
    Ok(out)
}

struct Printer<'t> {
    text: &'t str,
    comments: &'t [Comment],
    next: usize,
    out: String,
}

impl Printer<'_> {
    /// Whether the source has a blank line between two offsets.
    fn blank_between(&self, from: u32, to: u32) -> bool {
        let (from, to) = (from as usize, (to as usize).min(self.text.len()));
        if from >= to {
            return false;
        }
        // The lines wholly inside the gap (not the first's rest nor the last's start).
        let lines: Vec<&str> = self.text[from..to].split('\n').collect();
        lines.len() >= 3
            && lines[1..lines.len() - 1]
                .iter()
                .any(|l| l.trim().is_empty())
    }

    fn same_line(&self, from: u32, to: u32) -> bool {
        let (from, to) = (from as usize, (to as usize).min(self.text.len()));
        from <= to && !self.text[from..to].contains('\n')
    }

    /// Comments starting before `limit`, each on a line of its own.
    fn comments_before(&mut self, limit: u32, indent: &str, last_end: &mut Option<u32>) {
        while let Some(c) = self.comments.get(self.next) {
            if c.span.start >= limit {
                break;
            }
            if let Some(end) = *last_end
                && self.blank_between(end, c.span.start)
            {
                self.out.push('\n');
            }
            self.out.push_str(indent);
            self.out.push_str(c.text.trim_end());
            self.out.push('\n');
            *last_end = Some(c.span.end);
            self.next += 1;
        }
    }

    /// A comment right after `after` on the same line, appended to the current line.
    /// Only a comment that starts before `before` (the next directive) counts.
    fn trailing(&mut self, after: u32, before: u32) {
        if let Some(c) = self.comments.get(self.next)
            && c.span.start >= after
            && c.span.start < before
            && self.same_line(after, c.span.start)
        {
            self.out.push(' ');
            self.out.push_str(c.text.trim_end());
            self.next += 1;
        }
    }

    fn block(&mut self, directives: &[Directive], depth: usize, close: u32) {
        let indent = "    ".repeat(depth);
        let mut last_end: Option<u32> = None;
        for (i, d) in directives.iter().enumerate() {
            let next = directives.get(i + 1).map_or(close, |n| n.name.span.start);
            // Comments before the directive, and any inside its words, go before it.
            self.comments_before(d.end, &indent, &mut last_end);
            if let Some(end) = last_end
                && self.blank_between(end, d.name.span.start)
            {
                self.out.push('\n');
            }
            self.out.push_str(&indent);
            self.out.push_str(&word(&d.name));
            for a in &d.args {
                self.out.push(' ');
                self.out.push_str(&word(a));
            }
            match &d.block {
                None => {
                    self.out.push(';');
                    self.trailing(d.end + 1, next);
                    self.out.push('\n');
                    last_end = Some(d.end + 1);
                }
                Some(b) => {
                    self.out.push_str(" {");
                    let end = b.close.unwrap_or(close);
                    let first = b.directives.first().map_or(end, |c| c.name.span.start);
                    self.trailing(d.end + 1, first);
                    self.out.push('\n');
                    self.block(&b.directives, depth + 1, end);
                    self.out.push_str(&indent);
                    self.out.push('}');
                    self.trailing(end + 1, next);
                    self.out.push('\n');
                    last_end = Some(end + 1);
                }
            }
        }
        self.comments_before(close, &indent, &mut last_end);
    }
}

/// A short line diff of `old` and `new` (for `fmt --check`): hunks of `-`/`+` lines with
/// their line numbers. Large files get a summary instead of a quadratic diff.
pub fn diff(name: &str, old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut s = format!("--- {name}\n+++ {name} (formatted)\n");
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        s.push_str("(file too large for a diff)\n");
        return s;
    }
    // Longest common subsequence table, from the end.
    let (n, m) = (a.len(), b.len());
    let mut t = vec![0u32; (n + 1) * (m + 1)];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i * (m + 1) + j] = if a[i] == b[j] {
                t[(i + 1) * (m + 1) + j + 1] + 1
            } else {
                t[(i + 1) * (m + 1) + j].max(t[i * (m + 1) + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut shown = 0;
    while (i < n || j < m) && shown < 200 {
        if i < n && j < m && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < n && (j == m || t[(i + 1) * (m + 1) + j] >= t[i * (m + 1) + j + 1]) {
            s.push_str(&format!("-{:>5} {}\n", i + 1, a[i]));
            i += 1;
            shown += 1;
        } else {
            s.push_str(&format!("+{:>5} {}\n", j + 1, b[j]));
            j += 1;
            shown += 1;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn keeps_comments_and_is_idempotent() {
        let text = "# top\n\nhttp {\n  server { listen 80; # the port\n\n\n  location / { return 200; } }\n  # inner\n}\n";
        let once = format(text).unwrap();
        assert_eq!(
            once,
            "# top\n\nhttp {\n    server {\n        listen 80; # the port\n\n        location / {\n            return 200;\n        }\n    }\n    # inner\n}\n"
        );
        assert_eq!(format(&once).unwrap(), once);
    }

    #[test]
    fn refuses_what_does_not_parse() {
        assert!(format("http {").is_err());
    }
}
