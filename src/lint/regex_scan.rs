//! A small reader of PCRE patterns, enough for the rules: which capture groups can match a
//! line feed (header splitting), and whether a pattern has the shapes that backtrack
//! catastrophically (a repeated group whose body is ambiguous: `(a+)+`, `(.*,)*`, `(a|ab)*`).
//! It never fails: what it does not understand it reads as "any character", which can only
//! make a check more careful, never crash it.

/// The characters an item can match: ASCII by bitmap, everything else as one flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Chars {
    ascii: u128,
    other: bool,
}

impl Chars {
    fn none() -> Chars {
        Chars::default()
    }
    fn any() -> Chars {
        Chars {
            ascii: u128::MAX,
            other: true,
        }
    }
    fn byte(b: u8) -> Chars {
        let mut c = Chars::none();
        c.add(b);
        c
    }
    fn add(&mut self, b: u8) {
        if b < 128 {
            self.ascii |= 1u128 << b;
        } else {
            self.other = true;
        }
    }
    fn add_range(&mut self, from: u8, to: u8) {
        for b in from..=to.min(127) {
            self.add(b);
        }
        if to >= 128 {
            self.other = true;
        }
    }
    fn union(self, o: Chars) -> Chars {
        Chars {
            ascii: self.ascii | o.ascii,
            other: self.other | o.other,
        }
    }
    fn negate(self) -> Chars {
        Chars {
            ascii: !self.ascii,
            // Every non-ASCII character is outside an ASCII-only class.
            other: true,
        }
    }
    pub fn overlaps(self, o: Chars) -> bool {
        self.ascii & o.ascii != 0 || (self.other && o.other)
    }
    pub fn has(self, b: u8) -> bool {
        b < 128 && self.ascii & (1u128 << b) != 0
    }
    fn is_empty(self) -> bool {
        self.ascii == 0 && !self.other
    }
}

#[derive(Debug)]
enum Atom {
    Chars(Chars),
    Group {
        alternatives: Vec<Vec<Item>>,
        atomic: bool,
    },
    /// Anchors and other zero-width assertions.
    Empty,
}

#[derive(Debug)]
struct Item {
    atom: Atom,
    min: u32,
    /// `None`: unbounded.
    max: Option<u32>,
    possessive: bool,
}

impl Item {
    fn unbounded(&self) -> bool {
        self.max.is_none() && !self.possessive
    }
    fn optional(&self) -> bool {
        self.min == 0 || matches!(self.atom, Atom::Empty)
    }
}

/// What the rules need to know about a pattern.
#[derive(Debug, Default)]
pub struct Scan {
    /// Capture groups: (number, name, whether it can match a line feed).
    pub captures: Vec<(usize, Option<String>, bool)>,
    /// A description of the first catastrophic shape found.
    pub redos: Option<String>,
    /// Whether the whole match (`$0`) can hold a line feed.
    top_newline: bool,
}

impl Scan {
    /// Whether capture `$n` (or a named one) can hold a line feed.
    pub fn capture_can_newline(&self, var: &str) -> bool {
        match var.parse::<usize>() {
            Ok(0) => self.captures.iter().any(|c| c.2) || self.top_newline,
            Ok(n) => self.captures.iter().any(|c| c.0 == n && c.2),
            Err(_) => self
                .captures
                .iter()
                .any(|c| c.1.as_deref() == Some(var) && c.2),
        }
    }
}

/// Reads `pattern`.
pub fn scan(pattern: &str) -> Scan {
    let mut p = Parser {
        s: pattern.as_bytes(),
        i: 0,
        dotall: false,
        next_capture: 1,
        captures: Vec::new(),
        depth: 0,
    };
    let alternatives = p.alternatives();
    let mut scan = Scan {
        captures: std::mem::take(&mut p.captures),
        redos: None,
        top_newline: false,
    };
    let top = Atom::Group {
        alternatives,
        atomic: false,
    };
    scan.top_newline = chars_of(&top).has(b'\n');
    scan.redos = find_redos(&top, pattern);
    scan
}

struct Parser<'s> {
    s: &'s [u8],
    i: usize,
    dotall: bool,
    next_capture: usize,
    captures: Vec<(usize, Option<String>, bool)>,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn alternatives(&mut self) -> Vec<Vec<Item>> {
        let mut alts = vec![Vec::new()];
        while let Some(c) = self.peek() {
            match c {
                b'|' => {
                    self.i += 1;
                    alts.push(Vec::new());
                }
                b')' if self.depth > 0 => break,
                _ => {
                    let atom = self.atom();
                    let item = self.quantified(atom);
                    if let Some(last) = alts.last_mut() {
                        last.push(item);
                    }
                }
            }
        }
        alts
    }

    fn quantified(&mut self, atom: Atom) -> Item {
        let (mut min, mut max) = (1, Some(1));
        match self.peek() {
            Some(b'*') => {
                self.i += 1;
                (min, max) = (0, None);
            }
            Some(b'+') => {
                self.i += 1;
                (min, max) = (1, None);
            }
            Some(b'?') => {
                self.i += 1;
                (min, max) = (0, Some(1));
            }
            Some(b'{') => {
                if let Some((lo, hi, len)) = braces(&self.s[self.i..]) {
                    self.i += len;
                    (min, max) = (lo, hi);
                }
            }
            _ => {}
        }
        let mut possessive = false;
        match self.peek() {
            Some(b'?') if (min, max) != (1, Some(1)) => self.i += 1,
            Some(b'+') if (min, max) != (1, Some(1)) => {
                self.i += 1;
                possessive = true;
            }
            _ => {}
        }
        Item {
            atom,
            min,
            max,
            possessive,
        }
    }

    fn atom(&mut self) -> Atom {
        let Some(c) = self.peek() else {
            return Atom::Empty;
        };
        self.i += 1;
        match c {
            b'^' | b'$' => Atom::Empty,
            b'.' => {
                let mut any = Chars::any();
                if !self.dotall {
                    any.ascii &= !(1u128 << b'\n');
                }
                Atom::Chars(any)
            }
            b'[' => Atom::Chars(self.class()),
            b'\\' => self.escape(),
            b'(' => self.group(),
            _ => Atom::Chars(Chars::byte(c)),
        }
    }

    fn escape(&mut self) -> Atom {
        let Some(c) = self.peek() else {
            return Atom::Chars(Chars::byte(b'\\'));
        };
        self.i += 1;
        match c {
            b'b' | b'B' | b'A' | b'z' | b'Z' | b'G' => Atom::Empty,
            _ => Atom::Chars(escape_chars(c)),
        }
    }

    fn class(&mut self) -> Chars {
        let mut set = Chars::none();
        let negated = self.peek() == Some(b'^');
        if negated {
            self.i += 1;
        }
        let mut first = true;
        while let Some(c) = self.peek() {
            if c == b']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            self.i += 1;
            let lo = match c {
                b'\\' => match self.peek() {
                    Some(e) => {
                        self.i += 1;
                        let chars = escape_chars(e);
                        if chars.ascii.count_ones() != 1 {
                            set = set.union(chars);
                            continue;
                        }
                        chars.ascii.trailing_zeros() as u8
                    }
                    None => b'\\',
                },
                b'[' if self.s[self.i..].starts_with(b":") => {
                    // A POSIX class `[:alpha:]`: read as any character.
                    if let Some(end) = find(&self.s[self.i..], b":]") {
                        self.i += end + 2;
                    }
                    set = set.union(Chars::any());
                    continue;
                }
                _ => c,
            };
            if self.peek() == Some(b'-') && self.s.get(self.i + 1).is_some_and(|&n| n != b']') {
                self.i += 1;
                let hi = self.peek().unwrap_or(lo);
                self.i += 1;
                set.add_range(lo, hi.max(lo));
            } else {
                set.add(lo);
            }
        }
        if negated { set.negate() } else { set }
    }

    fn group(&mut self) -> Atom {
        let mut capture = None;
        let mut name = None;
        let mut atomic = false;
        if self.peek() == Some(b'?') {
            self.i += 1;
            match self.peek() {
                Some(b':') | Some(b'=') | Some(b'!') => self.i += 1,
                Some(b'>') => {
                    self.i += 1;
                    atomic = true;
                }
                Some(b'<') if matches!(self.s.get(self.i + 1), Some(b'=') | Some(b'!')) => {
                    self.i += 2
                }
                Some(b'<') | Some(b'P') | Some(b'\'') => {
                    if self.peek() == Some(b'P') {
                        self.i += 1;
                    }
                    self.i += 1;
                    let start = self.i;
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                    {
                        self.i += 1;
                    }
                    name = Some(String::from_utf8_lossy(&self.s[start..self.i]).into_owned());
                    self.i += 1;
                    capture = Some(self.next_capture);
                    self.next_capture += 1;
                }
                _ => {
                    // Inline flags `(?i)`, `(?s)`, `(?i:...)`.
                    let start = self.i;
                    while self.peek().is_some_and(|c| c != b')' && c != b':') {
                        self.i += 1;
                    }
                    let flags = &self.s[start..self.i];
                    if let Some(minus) = flags.iter().position(|&c| c == b'-') {
                        if flags[..minus].contains(&b's') {
                            self.dotall = true;
                        }
                    } else if flags.contains(&b's') {
                        self.dotall = true;
                    }
                    if self.peek() == Some(b')') {
                        self.i += 1;
                        return Atom::Empty;
                    }
                    self.i += 1;
                }
            }
        } else {
            capture = Some(self.next_capture);
            self.next_capture += 1;
        }
        self.depth += 1;
        let alternatives = if self.depth > 64 {
            self.i = self.s.len();
            vec![vec![Item {
                atom: Atom::Chars(Chars::any()),
                min: 0,
                max: None,
                possessive: false,
            }]]
        } else {
            self.alternatives()
        };
        self.depth -= 1;
        if self.peek() == Some(b')') {
            self.i += 1;
        }
        let atom = Atom::Group {
            alternatives,
            atomic,
        };
        if let Some(n) = capture {
            let newline = chars_of(&atom).has(b'\n');
            self.captures.push((n, name, newline));
        }
        atom
    }
}

fn find(s: &[u8], needle: &[u8]) -> Option<usize> {
    s.windows(needle.len()).position(|w| w == needle)
}

/// `{n}`, `{n,}`, `{n,m}` at the start of `s`: (min, max, length).
fn braces(s: &[u8]) -> Option<(u32, Option<u32>, usize)> {
    let end = s.iter().position(|&c| c == b'}')?;
    let inner = std::str::from_utf8(&s[1..end]).ok()?;
    let (lo, hi) = match inner.split_once(',') {
        Some((lo, "")) => (lo.parse().ok()?, None),
        Some((lo, hi)) => (lo.parse().ok()?, Some(hi.parse().ok()?)),
        None => {
            let n = inner.parse().ok()?;
            (n, Some(n))
        }
    };
    Some((lo, hi, end + 1))
}

fn escape_chars(c: u8) -> Chars {
    let mut set = Chars::none();
    match c {
        b'd' => set.add_range(b'0', b'9'),
        b'w' => {
            set.add_range(b'0', b'9');
            set.add_range(b'a', b'z');
            set.add_range(b'A', b'Z');
            set.add(b'_');
        }
        b's' => {
            for b in [b' ', b'\t', b'\n', b'\r', 0x0b, 0x0c] {
                set.add(b);
            }
        }
        b'D' | b'W' | b'S' => return escape_chars(c.to_ascii_lowercase()).negate(),
        b'n' => set.add(b'\n'),
        b'r' => set.add(b'\r'),
        b't' => set.add(b'\t'),
        b'x' | b'p' | b'P' | b'h' | b'v' | b'R' | b'X' | b'N' => return Chars::any(),
        _ => set.add(c),
    }
    set
}

/// Every character an atom can match (anywhere in it, for a group).
fn chars_of(atom: &Atom) -> Chars {
    match atom {
        Atom::Chars(c) => *c,
        Atom::Empty => Chars::none(),
        Atom::Group { alternatives, .. } => alternatives
            .iter()
            .flatten()
            .fold(Chars::none(), |acc, i| acc.union(chars_of(&i.atom))),
    }
}

/// Characters a sequence can start with (over-approximated past optional items).
fn first_chars(items: &[Item]) -> Chars {
    let mut set = Chars::none();
    for item in items {
        let c = match &item.atom {
            Atom::Chars(c) => *c,
            Atom::Empty => continue,
            Atom::Group { alternatives, .. } => alternatives
                .iter()
                .fold(Chars::none(), |acc, a| acc.union(first_chars(a))),
        };
        set = set.union(c);
        if !item.optional() {
            break;
        }
    }
    set
}

fn find_redos(atom: &Atom, pattern: &str) -> Option<String> {
    let Atom::Group { alternatives, .. } = atom else {
        return None;
    };
    for item in alternatives.iter().flatten() {
        if let Atom::Group {
            alternatives: inner,
            atomic,
            ..
        } = &item.atom
        {
            if item.unbounded()
                && !atomic
                && let Some(why) = ambiguous_body(inner)
            {
                return Some(format!("{why} under a repeated group in \"{pattern}\""));
            }
            if let Some(found) = find_redos(&item.atom, pattern) {
                return Some(found);
            }
        }
    }
    None
}

/// Whether a repeated group's body can match one string in many ways.
fn ambiguous_body(alternatives: &[Vec<Item>]) -> Option<&'static str> {
    // Alternatives that can start alike: `(a|ab)*`, `(\w|\d)+`.
    if alternatives.len() > 1 {
        let firsts: Vec<Chars> = alternatives.iter().map(|a| first_chars(a)).collect();
        for (i, a) in firsts.iter().enumerate() {
            if firsts[i + 1..].iter().any(|b| a.overlaps(*b)) {
                return Some("overlapping alternatives");
            }
        }
    }
    // A repeated item inside whose characters every mandatory neighbour shares: `(a+)+`,
    // `(.*,)*`, `(\w+\s?)*`. A neighbour the item cannot match (`(\.[a-z]+)*`) splits the
    // repetitions unambiguously.
    for alt in alternatives {
        for (i, item) in alt.iter().enumerate() {
            let repeated = item.unbounded() || nested_unbounded(&item.atom);
            if !repeated {
                continue;
            }
            let chars = chars_of(&item.atom);
            if chars.is_empty() {
                continue;
            }
            let separated = alt
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && !o.optional() && !chars_of(&o.atom).overlaps(chars));
            if !separated {
                return Some("a nested quantifier");
            }
        }
    }
    None
}

fn nested_unbounded(atom: &Atom) -> bool {
    match atom {
        Atom::Group {
            alternatives,
            atomic: false,
            ..
        } => alternatives
            .iter()
            .flatten()
            .any(|i| i.unbounded() || nested_unbounded(&i.atom)),
        _ => false,
    }
}

/// Patterns that match every request URI: a regex location after one of them never matches.
pub fn matches_everything(pattern: &str) -> bool {
    matches!(
        pattern,
        "" | "/" | "^/" | "." | ".*" | "^.*" | "^.*$" | "^/.*" | "^/.*$" | "^(.*)$" | "(.*)"
    )
}

#[cfg(test)]
mod tests {
    use super::scan;

    #[test]
    fn catastrophic_shapes_are_found() {
        for p in [
            "(a+)+",
            "^(.*)*$",
            "(a|ab)*c",
            "^/(\\w+\\s?)*$",
            "(.*,)*x",
            "((ab)*)+",
        ] {
            assert!(scan(p).redos.is_some(), "{p}");
        }
    }

    #[test]
    fn safe_shapes_are_not() {
        for p in [
            "\\.php$",
            "^/(?<name>[a-z]+)/(.*)$",
            "(\\.[a-z]+)*",
            "^/static/(.*)$",
            "(GET|POST)",
            "(?:[a-z]|-)+",
            "^(?>a+)+$",
            "^https?://(www\\.)?example\\.com$",
        ] {
            assert!(scan(p).redos.is_none(), "{p}: {:?}", scan(p).redos);
        }
    }

    #[test]
    fn captures_that_can_hold_a_line_feed() {
        let s = scan("^/v1/((?<action>[^.]*)\\.json)?$");
        assert!(s.capture_can_newline("1"));
        assert!(s.capture_can_newline("action"));
        let s = scan("^/(.*)/([a-z]+)$");
        assert!(!s.capture_can_newline("1") && !s.capture_can_newline("2"));
        assert!(scan("(\\s+)").capture_can_newline("1"));
        assert!(scan("(?s)(.*)").capture_can_newline("1"));
    }
}
