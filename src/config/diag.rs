//! Diagnostics: what the compiler found, where, and how bad. Built everywhere, rendered once,
//! at the edge: as nginx's one-line form (`-t`), richly with the source line (`check`), or as data.

use std::fmt::Write as _;

use codespan_reporting::diagnostic as cs;
use codespan_reporting::files::{Error as FilesError, Files};
use codespan_reporting::term;

use super::span::{FileId, SourceMap, Span};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    /// nginx's level tag.
    pub fn nginx_level(self) -> &'static str {
        match self {
            Severity::Error => "emerg",
            Severity::Warning => "warn",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable id for the kind of problem (`unknown-directive`, `syntax`, ...).
    pub code: &'static str,
    /// The message, worded as nginx words it where nginx has the same check.
    pub message: String,
    /// What the diagnostic points at.
    pub span: Option<Span>,
    /// The byte whose line nginx names in `in FILE:LINE` (defaults to the span's start).
    pub line_at: Option<Span>,
    /// Whether nginx names a place for this problem (it does not for some checks made after
    /// reading, such as unknown variables); the rich form shows the span either way.
    pub nginx_located: bool,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Error, code, message)
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Severity::Warning, code, message)
    }

    fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity,
            code,
            message: message.into(),
            span: None,
            line_at: None,
            nginx_located: true,
            notes: vec![],
        }
    }

    pub fn at(mut self, span: Span) -> Diagnostic {
        self.span = Some(span);
        self
    }

    /// Names `line_at`'s line in the nginx form, while the caret points at `span`.
    pub fn line_at(mut self, span: Span) -> Diagnostic {
        self.line_at = Some(span);
        self
    }

    /// nginx reports this problem without `in FILE:LINE`.
    pub fn unlocated(mut self) -> Diagnostic {
        self.nginx_located = false;
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `(file name, line)` as nginx reports it, if the diagnostic has a place.
    pub fn location(&self, sources: &SourceMap) -> Option<(String, usize)> {
        if !self.nginx_located {
            return None;
        }
        let at = self.line_at.or(self.span)?;
        let file = sources.get(at.file);
        Some((file.name(), file.line_of(at.start)))
    }

    /// nginx's form, without the `nginx: [level] ` prefix: `MESSAGE in FILE:LINE`.
    pub fn nginx_message(&self, sources: &SourceMap) -> String {
        let from_command_line = self
            .span
            .is_some_and(|s| sources.get(s.file).origin == super::span::Origin::CommandLine);
        match self.location(sources) {
            Some(_) if from_command_line => format!("{} in command line", self.message),
            Some((name, line)) => format!("{} in {}:{}", self.message, name, line),
            None => self.message.clone(),
        }
    }

    /// The line `portico -t` prints: `portico: [emerg] MESSAGE in FILE:LINE`.
    pub fn nginx_line(&self, sources: &SourceMap) -> String {
        format!(
            "portico: [{}] {}",
            self.severity.nginx_level(),
            self.nginx_message(sources)
        )
    }
}

/// Renders diagnostics richly: the source line, a caret under the span, the code and notes.
/// Colour (ANSI) only when asked; the caller decides whether the output is a terminal.
pub fn render_rich(diagnostics: &[Diagnostic], sources: &SourceMap, color: bool) -> String {
    let config = term::Config::default();
    let styles = term::Styles::default();
    let mut buffer = term::termcolor::Buffer::ansi();
    let mut plain = String::new();
    for d in diagnostics {
        let mut c = match d.severity {
            Severity::Error => cs::Diagnostic::error(),
            Severity::Warning => cs::Diagnostic::warning(),
        }
        .with_message(&d.message)
        .with_code(d.code)
        .with_notes(d.notes.clone());
        if let Some(span) = d.span {
            let range = span.start as usize..span.end as usize;
            c = c.with_labels(vec![cs::Label::primary(span.file.0 as usize, range)]);
        }
        let rendered = if color {
            let mut w = term::StylesWriter::new(&mut buffer, &styles);
            term::emit_to_write_style(&mut w, &config, sources, &c)
        } else {
            term::emit_to_string(&mut plain, &config, sources, &c)
        };
        if rendered.is_err() {
            let _ = writeln!(plain, "{}: {}", d.severity.nginx_level(), d.message);
        }
    }
    if color {
        String::from_utf8_lossy(buffer.as_slice()).into_owned() + &plain
    } else {
        plain
    }
}

impl<'a> Files<'a> for SourceMap {
    type FileId = usize;
    type Name = String;
    type Source = &'a str;

    fn name(&'a self, id: usize) -> Result<String, FilesError> {
        self.try_get(id).map(|f| f.name())
    }

    fn source(&'a self, id: usize) -> Result<&'a str, FilesError> {
        self.try_get(id).map(|f| f.text.as_str())
    }

    fn line_index(&'a self, id: usize, byte_index: usize) -> Result<usize, FilesError> {
        Ok(self.try_get(id)?.line_of(byte_index as u32) - 1)
    }

    fn line_range(
        &'a self,
        id: usize,
        line_index: usize,
    ) -> Result<std::ops::Range<usize>, FilesError> {
        let f = self.try_get(id)?;
        f.line_range(line_index).ok_or(FilesError::LineTooLarge {
            given: line_index,
            max: f.line_count(),
        })
    }
}

impl SourceMap {
    fn try_get(&self, id: usize) -> Result<&super::span::SourceFile, FilesError> {
        if id < self.len() {
            Ok(self.get(FileId(id as u32)))
        } else {
            Err(FilesError::FileMissing)
        }
    }
}
