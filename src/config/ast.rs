//! The syntax tree: directives, their arguments and blocks, each with its span.
//! Syntax only: nothing here knows what a directive means.

use super::span::Span;

/// How an argument was written. nginx itself forgets this after tokenizing; Portico keeps it
/// so that `fmt` can print arguments as they were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quote {
    Bare,
    Single,
    Double,
}

/// One word of a directive, with nginx's escapes already applied to `value`.
#[derive(Clone, Debug)]
pub struct Arg {
    pub value: String,
    pub quote: Quote,
    pub span: Span,
}

/// `name arg...;` or `name arg... { ... }`.
#[derive(Clone, Debug)]
pub struct Directive {
    pub name: Arg,
    pub args: Vec<Arg>,
    pub block: Option<Block>,
    /// Offset of the `;` or `{` that ended the directive's words. nginx reports a directive's
    /// errors at the line of this byte, so Portico does too.
    pub end: u32,
}

impl Directive {
    pub fn name(&self) -> &str {
        &self.name.value
    }

    /// From the first byte of the name to the terminator (or the block's closing brace).
    pub fn span(&self) -> Span {
        let end = match &self.block {
            Some(b) => b.close.map_or(self.end + 1, |c| c + 1),
            None => self.end + 1,
        };
        Span {
            file: self.name.span.file,
            start: self.name.span.start,
            end,
        }
    }

    /// The span of the terminator (`;` or `{`).
    pub fn end_span(&self) -> Span {
        Span {
            file: self.name.span.file,
            start: self.end,
            end: self.end + 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Block {
    pub directives: Vec<Directive>,
    /// Offset of the closing `}`; `None` when the file ended first.
    pub close: Option<u32>,
}

/// A `#` comment, kept for `fmt`.
#[derive(Clone, Debug)]
pub struct Comment {
    pub text: String,
    pub span: Span,
}

/// One parsed file.
#[derive(Clone, Debug, Default)]
pub struct File {
    pub directives: Vec<Directive>,
    pub comments: Vec<Comment>,
}

/// Structural equality, ignoring spans: what the print-then-parse round trip must keep.
pub fn same_tree(a: &[Directive], b: &[Directive]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name.value == y.name.value
                && x.args.len() == y.args.len()
                && x.args.iter().zip(&y.args).all(|(p, q)| p.value == q.value)
                && match (&x.block, &y.block) {
                    (None, None) => true,
                    (Some(p), Some(q)) => same_tree(&p.directives, &q.directives),
                    _ => false,
                }
        })
}
