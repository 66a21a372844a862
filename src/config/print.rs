//! Prints a tree back as nginx configuration text: the inverse of [`super::parse`], so that
//! parsing what is printed gives the same tree. Comments are kept, each on its own line.

use super::ast::{Arg, Comment, Directive, File};

/// Prints a file with four-space indentation.
pub fn print(file: &File) -> String {
    let mut out = String::new();
    let mut comments = file.comments.iter().peekable();
    print_block(&file.directives, 0, &mut comments, &mut out);
    for c in comments {
        out.push_str(c.text.trim_end());
        out.push('\n');
    }
    out
}

type Comments<'a> = std::iter::Peekable<std::slice::Iter<'a, Comment>>;

fn print_block(directives: &[Directive], depth: usize, comments: &mut Comments, out: &mut String) {
    let indent = "    ".repeat(depth);
    for d in directives {
        while let Some(c) = comments.next_if(|c| c.span.start < d.name.span.start) {
            out.push_str(&indent);
            out.push_str(c.text.trim_end());
            out.push('\n');
        }
        out.push_str(&indent);
        out.push_str(&word(&d.name));
        for a in &d.args {
            out.push(' ');
            out.push_str(&word(a));
        }
        // Comments inside the directive's words have no place of their own: put them before.
        match &d.block {
            None => out.push_str(";\n"),
            Some(b) => {
                out.push_str(" {\n");
                print_block(&b.directives, depth + 1, comments, out);
                let close = b.close.unwrap_or(u32::MAX);
                while let Some(c) = comments.next_if(|c| c.span.start < close) {
                    out.push_str(&indent);
                    out.push_str("    ");
                    out.push_str(c.text.trim_end());
                    out.push('\n');
                }
                out.push_str(&indent);
                out.push_str("}\n");
            }
        }
    }
}

/// An argument as it can be written: bare when nothing in it is special, else double-quoted.
pub fn word(arg: &Arg) -> String {
    quote(&arg.value)
}

pub fn quote(v: &str) -> String {
    let special = |c: char| {
        matches!(
            c,
            ' ' | '\t' | '\r' | '\n' | ';' | '{' | '}' | '#' | '"' | '\'' | '\\'
        )
    };
    if !v.is_empty() && !v.contains(special) {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::super::ast::same_tree;
    use super::super::parse::parse;
    use super::super::span::FileId;
    use super::*;

    #[test]
    fn round_trip() {
        let text = "# top\nhttp {\n  map $a $b { default \"\"; '~x y' 1; }\n  log_format x '{\"a\":\"$b\"}' \\#q\\ r;\n  # inner\n}\n";
        let (a, errors) = parse(FileId(0), text);
        assert!(errors.is_empty());
        let printed = print(&a);
        let (b, errors) = parse(FileId(0), &printed);
        assert!(errors.is_empty(), "{printed}");
        assert!(same_tree(&a.directives, &b.directives), "{printed}");
        assert!(printed.contains("# inner") && printed.starts_with("# top"));
    }
}
