//! nginx's configuration syntax: text to [`ast::File`], recovering at `;` and `}` so that one
//! run reports every syntax error.
//!
//! The lexical rules follow nginx's own tokenizer exactly (see `grammar/nginx.ebnf`):
//! - words are separated by space, tab, CR and LF; `;` ends a directive, `{` opens a block,
//!   `}` closes one, but only where a word starts: inside a bare word `}`, `#`, `"` and `'`
//!   are ordinary bytes;
//! - a bare word ends at whitespace, `;` or `{`, except that `{` right after `$` belongs to the
//!   word (`${name}`); a backslash makes the next byte ordinary;
//! - a quoted word must be followed by whitespace, `;`, `{`, `)` or the end of the file;
//! - in every word, `\"`, `\'` and `\\` stand for the quoted byte and `\t`, `\r`, `\n` for the
//!   control characters; any other backslash is kept as written.
//!
//! Any input, valid UTF-8 or not, parses without a panic; nesting is bounded so that the
//! parser's recursion is too.

use nom::IResult;
use nom::bytes::complete::{take_till, take_while};

use super::ast::{Arg, Block, Comment, Directive, File, Quote};
use super::diag::Diagnostic;
use super::span::{FileId, Span};

/// Blocks nested deeper than this are reported and skipped (real configs nest a handful deep).
pub const MAX_DEPTH: usize = 100;

/// Parses one source text. Returns the tree and every syntax error, in file order.
pub fn parse(file: FileId, text: &str) -> (File, Vec<Diagnostic>) {
    let mut p = Parser {
        lexer: Lexer {
            file,
            text,
            pos: 0,
            need_space: false,
            unterminated: false,
            comments: Vec::new(),
        },
        errors: Vec::new(),
        peeked: None,
    };
    let (directives, _) = p.block(0, false);
    let comments = std::mem::take(&mut p.lexer.comments);
    (
        File {
            directives,
            comments,
        },
        p.errors,
    )
}

/// Applies nginx's escapes to the raw text of a word.
pub fn unescape(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_string();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some(&q @ ('"' | '\'' | '\\')) => {
                    chars.next();
                    out.push(q);
                    continue;
                }
                Some('t') => {
                    chars.next();
                    out.push('\t');
                    continue;
                }
                Some('r') => {
                    chars.next();
                    out.push('\r');
                    continue;
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

#[derive(Debug)]
enum Token {
    Word(Arg),
    Semi(u32),
    Open(u32),
    Close(u32),
    Eof(u32),
    /// A lexical error at this offset; the statement it is in is dropped.
    Error(u32, String),
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn whitespace(i: &str) -> IResult<&str, &str> {
    take_while(is_space)(i)
}

fn comment(i: &str) -> IResult<&str, &str> {
    let (rest, _) = nom::character::complete::char('#')(i)?;
    let (rest, _) = take_till(|c| c == '\n')(rest)?;
    Ok((rest, &i[..i.len() - rest.len()]))
}

/// A quoted word, quotes included. Fails (as `Incomplete`-like error) when the closing quote
/// is missing.
fn quoted(i: &str) -> IResult<&str, &str> {
    let q = i.chars().next().ok_or_else(|| nom_error(i))?;
    let mut escaped = false;
    for (n, c) in i.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == q {
            return Ok((&i[n + 1..], &i[..n + 1]));
        }
    }
    Err(nom_error(i))
}

/// A bare word: up to whitespace, `;` or `{` (but `${` and escaped bytes stay in the word).
fn bare(i: &str) -> IResult<&str, &str> {
    let mut escaped = false;
    let mut variable = false;
    for (n, c) in i.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '{' && variable {
            continue;
        }
        variable = false;
        match c {
            '\\' => escaped = true,
            '$' => variable = true,
            ';' | '{' | ' ' | '\t' | '\r' | '\n' => return Ok((&i[n..], &i[..n])),
            _ => {}
        }
    }
    Ok(("", i))
}

fn nom_error(i: &str) -> nom::Err<nom::error::Error<&str>> {
    nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Verify))
}

struct Lexer<'a> {
    file: FileId,
    text: &'a str,
    pos: usize,
    /// Set after a closing quote: nginx then requires a separator.
    need_space: bool,
    /// Set when the file ended inside a quoted word.
    unterminated: bool,
    comments: Vec<Comment>,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn next(&mut self) -> Token {
        loop {
            let rest = self.rest();
            let Some(c) = rest.chars().next() else {
                return Token::Eof(self.pos as u32);
            };
            if self.need_space {
                self.need_space = false;
                if !(is_space(c) || c == ';' || c == '{' || c == ')') {
                    let at = self.pos as u32;
                    return Token::Error(at, format!("unexpected \"{c}\""));
                }
            }
            let (after_ws, _) = whitespace(rest).unwrap_or((rest, ""));
            self.pos = self.text.len() - after_ws.len();
            let start = self.pos;
            let Some(c) = after_ws.chars().next() else {
                return Token::Eof(self.pos as u32);
            };
            match c {
                '#' => {
                    let (after, text) = comment(after_ws).unwrap_or(("", after_ws));
                    self.pos = self.text.len() - after.len();
                    let span = Span::new(self.file, start, self.pos);
                    self.comments.push(Comment {
                        text: text.to_string(),
                        span,
                    });
                }
                ';' => {
                    self.pos += 1;
                    return Token::Semi(start as u32);
                }
                '{' => {
                    self.pos += 1;
                    return Token::Open(start as u32);
                }
                '}' => {
                    self.pos += 1;
                    return Token::Close(start as u32);
                }
                '"' | '\'' => match quoted(after_ws) {
                    Ok((after, word)) => {
                        self.pos = self.text.len() - after.len();
                        self.need_space = true;
                        let raw = &word[1..word.len() - 1];
                        let quote = if c == '"' {
                            Quote::Double
                        } else {
                            Quote::Single
                        };
                        let span = Span::new(self.file, start, self.pos);
                        return Token::Word(Arg {
                            value: unescape(raw),
                            quote,
                            span,
                        });
                    }
                    Err(_) => {
                        self.pos = self.text.len();
                        self.unterminated = true;
                        return Token::Eof(self.pos as u32);
                    }
                },
                _ => {
                    let (after, word) = bare(after_ws).unwrap_or(("", after_ws));
                    self.pos = self.text.len() - after.len();
                    let span = Span::new(self.file, start, self.pos);
                    return Token::Word(Arg {
                        value: unescape(word),
                        quote: Quote::Bare,
                        span,
                    });
                }
            }
        }
    }
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    errors: Vec<Diagnostic>,
    peeked: Option<Token>,
}

/// How a block ended.
enum End {
    Close(u32),
    Eof,
}

impl Parser<'_> {
    fn next(&mut self) -> Token {
        self.peeked.take().unwrap_or_else(|| self.lexer.next())
    }

    fn error(&mut self, at: u32, message: String) {
        let span = Span {
            file: self.lexer.file,
            start: at,
            end: at + 1,
        };
        self.errors
            .push(Diagnostic::error("syntax", message).at(span));
    }

    /// Parses directives up to the `}` that closes this block (or the end of the file).
    fn block(&mut self, depth: usize, nested: bool) -> (Vec<Directive>, End) {
        let mut directives = Vec::new();
        let mut words: Vec<Arg> = Vec::new();
        let mut poisoned = false;
        loop {
            match self.next() {
                Token::Word(arg) => words.push(arg),
                Token::Error(at, message) => {
                    if !poisoned {
                        self.error(at, message);
                    }
                    poisoned = true;
                }
                Token::Semi(at) => {
                    if words.is_empty() && !poisoned {
                        self.error(at, "unexpected \";\"".into());
                    } else if !poisoned {
                        directives.push(directive(words, None, at));
                    }
                    words = Vec::new();
                    poisoned = false;
                }
                Token::Open(at) => {
                    if words.is_empty() && !poisoned {
                        self.error(at, "unexpected \"{\"".into());
                        poisoned = true;
                    }
                    let (children, end) = if depth + 1 >= MAX_DEPTH {
                        self.error(at, format!("blocks are nested deeper than {MAX_DEPTH}"));
                        poisoned = true;
                        (Vec::new(), self.skip_block())
                    } else {
                        self.block(depth + 1, true)
                    };
                    let close = match end {
                        End::Close(c) => Some(c),
                        End::Eof => None,
                    };
                    if !poisoned {
                        let block = Block {
                            directives: children,
                            close,
                        };
                        directives.push(directive(words, Some(block), at));
                    }
                    words = Vec::new();
                    poisoned = false;
                    if close.is_none() {
                        return (directives, End::Eof);
                    }
                }
                Token::Close(at) => {
                    if !words.is_empty() || !nested {
                        self.error(at, "unexpected \"}\"".into());
                    }
                    words = Vec::new();
                    poisoned = false;
                    if nested {
                        return (directives, End::Close(at));
                    }
                }
                Token::Eof(at) => {
                    if !words.is_empty() || poisoned || self.lexer.unterminated {
                        self.error(
                            at,
                            "unexpected end of file, expecting \";\" or \"}\"".into(),
                        );
                    } else if nested {
                        self.error(at, "unexpected end of file, expecting \"}\"".into());
                    }
                    return (directives, End::Eof);
                }
            }
        }
    }

    /// Skips a block too deep to keep, without recursion.
    fn skip_block(&mut self) -> End {
        let mut depth = 1usize;
        loop {
            match self.next() {
                Token::Open(_) => depth += 1,
                Token::Close(at) => {
                    depth -= 1;
                    if depth == 0 {
                        return End::Close(at);
                    }
                }
                Token::Eof(_) => return End::Eof,
                _ => {}
            }
        }
    }
}

fn directive(mut words: Vec<Arg>, block: Option<Block>, end: u32) -> Directive {
    let name = words.remove(0);
    Directive {
        name,
        args: words,
        block,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Vec<String>> {
        let (file, errors) = parse(FileId(0), text);
        assert!(errors.is_empty(), "{errors:?}");
        file.directives
            .iter()
            .map(|d| {
                std::iter::once(&d.name)
                    .chain(&d.args)
                    .map(|a| a.value.clone())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn words_follow_nginx_rules() {
        assert_eq!(words("a b}c;"), [["a", "b}c"]]);
        assert_eq!(words("a b#c;"), [["a", "b#c"]]);
        assert_eq!(words("a ${x}y;"), [["a", "${x}y"]]);
        assert_eq!(
            words(r#"a "x\"y" 'p\'q' \;z;"#),
            [["a", "x\"y", "p'q", "\\;z"]]
        );
        assert_eq!(words(r"a \#arg\ 1;"), [["a", r"\#arg\ 1"]]);
        assert_eq!(words(r#"a "t\tn\nr\r\d";"#), [["a", "t\tn\nr\r\\d"]]);
        assert_eq!(
            words(r#"if ($a = "b") { }"#),
            [["if", "($a", "=", "b", ")"]]
        );
        assert_eq!(words("a 'x;{}' # c\n b;"), [["a", "x;{}", "b"]]);
    }

    #[test]
    fn quote_must_be_followed_by_a_separator() {
        let (_, errors) = parse(FileId(0), "a \"b\"c;");
        assert_eq!(errors[0].message, "unexpected \"c\"");
    }

    #[test]
    fn recovers_and_reports_every_error() {
        let (file, errors) = parse(FileId(0), "a;\n;\nb \"x\"y;\nc;\n}\nd {\n");
        let msgs: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "unexpected \";\"",
                "unexpected \"y\"",
                "unexpected \"}\"",
                "unexpected end of file, expecting \"}\""
            ]
        );
        let names: Vec<_> = file.directives.iter().map(|d| d.name()).collect();
        assert_eq!(names, ["a", "c", "d"]);
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let text = "a {".repeat(100_000);
        let (_, errors) = parse(FileId(0), &text);
        assert!(!errors.is_empty());
    }
}
