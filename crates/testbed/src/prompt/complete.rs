//! Tab completion at the prompt, as a pure function of the line, the
//! cursor and the [`Vocabulary`]: at the start of a word, the variables
//! (the nodes first among them) and the global functions; after `x.`, the
//! methods and properties of what `x` holds. Functions and methods come
//! with their `(`. Nothing is offered inside a string or a comment.

use testbed_driver::{ValueKind, Vocabulary};

/// The candidates for the word that ends at byte `pos` of `line`: where
/// that word starts, and what it may become (sorted, each once).
pub fn complete(line: &str, pos: usize, vocabulary: &Vocabulary) -> (usize, Vec<String>) {
    let Some(before) = line.get(..pos) else {
        return (pos, Vec::new());
    };
    let code = code_mask(before);
    if code.last() == Some(&false) {
        // Inside a string or a comment.
        return (pos, Vec::new());
    }
    let start = word_start(before, before.len());
    let word = &before[start..];
    if word.starts_with(|c: char| c.is_ascii_digit()) {
        return (pos, Vec::new());
    }
    let mut candidates: Vec<String> = match before[..start].strip_suffix('.') {
        Some(receiver) => {
            let kinds: &[ValueKind] = match receiver_kind(receiver, &code, vocabulary) {
                Receiver::Known(ValueKind::Node) => &[ValueKind::Node],
                Receiver::Known(ValueKind::Link) => &[ValueKind::Link],
                Receiver::Known(ValueKind::Other) => &[],
                Receiver::Unknown => &[ValueKind::Node, ValueKind::Link],
            };
            kinds
                .iter()
                .flat_map(|kind| vocabulary.members_of(*kind))
                .filter(|m| m.name.starts_with(word))
                .map(|m| {
                    if m.property {
                        m.name.clone()
                    } else {
                        format!("{}(", m.name)
                    }
                })
                .collect()
        }
        None => {
            let variables = vocabulary
                .variables
                .iter()
                .filter(|v| v.name.starts_with(word))
                .map(|v| v.name.clone());
            let functions = vocabulary
                .functions
                .iter()
                .filter(|f| f.name.starts_with(word))
                .map(|f| format!("{}(", f.name));
            variables.chain(functions).collect()
        }
    };
    candidates.sort();
    candidates.dedup();
    (start, candidates)
}

/// What is before a `.`.
#[derive(Debug, PartialEq, Eq)]
enum Receiver {
    Known(ValueKind),
    /// Not a name the vocabulary knows (a loop variable, an element of an
    /// array): could be a node or a link.
    Unknown,
}

/// The kind of value `text` (the line up to a `.`) ends with: a variable,
/// a call of a global function (`link(a, b)`, `node("x")`), or a method or
/// property (`link(a, b).delay("5ms")`).
fn receiver_kind(text: &str, code: &[bool], vocabulary: &Vocabulary) -> Receiver {
    let trimmed = text.trim_end();
    let (name, start, call) = if trimmed.ends_with(')') {
        let Some(open) = matching_open(trimmed, code) else {
            return Receiver::Unknown;
        };
        let callee = &trimmed[..open];
        let start = word_start(callee, callee.len());
        (&callee[start..], start, true)
    } else {
        let start = word_start(trimmed, trimmed.len());
        (&trimmed[start..], start, false)
    };
    if name.is_empty() {
        // A parenthesized expression, an array's element.
        return Receiver::Unknown;
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Receiver::Known(ValueKind::Other);
    }
    if trimmed[..start].ends_with('.') {
        // A member of something: what members of that name give, if they
        // agree.
        let mut kinds = vocabulary
            .members
            .iter()
            .filter(|m| m.name == name && m.property != call)
            .map(|m| m.returns);
        return match kinds.next() {
            Some(kind) if kinds.all(|k| k == kind) => Receiver::Known(kind),
            _ => Receiver::Unknown,
        };
    }
    let known = if call {
        vocabulary.functions.iter().find(|f| f.name == name)
    } else {
        vocabulary.variables.iter().find(|v| v.name == name)
    };
    known.map_or(Receiver::Unknown, |n| Receiver::Known(n.kind))
}

/// The byte index of the `(` that the last `)` of `text` closes.
fn matching_open(text: &str, code: &[bool]) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices().rev() {
        if !code.get(i).copied().unwrap_or(true) {
            continue;
        }
        match c {
            ')' | ']' => depth += 1,
            '(' | '[' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Where the identifier that ends at `end` starts.
fn word_start(text: &str, end: usize) -> usize {
    text[..end]
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_word_char(*c))
        .last()
        .map_or(end, |(i, _)| i)
}

/// For each byte of `text`, whether it is code (not inside a string, a
/// character or a comment). The opening quote of a string is not code; a
/// string or comment still open at the end marks the last byte as not
/// code either.
fn code_mask(text: &str) -> Vec<bool> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Code,
        Quoted(char),
        Escaped(char),
        LineComment,
        BlockComment,
    }
    let bytes = text.as_bytes();
    let mut mask = vec![true; bytes.len()];
    let mut state = State::Code;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|(_, n)| *n);
        let width = c.len_utf8();
        let is_code = match state {
            State::Code => match c {
                '"' | '`' | '\'' => {
                    state = State::Quoted(c);
                    false
                }
                '/' if next == Some('/') => {
                    state = State::LineComment;
                    false
                }
                '/' if next == Some('*') => {
                    chars.next();
                    mask[i + 1] = false;
                    state = State::BlockComment;
                    false
                }
                _ => true,
            },
            State::Quoted(q) => {
                if c == '\\' && q != '`' {
                    state = State::Escaped(q);
                } else if c == q {
                    state = State::Code;
                }
                false
            }
            State::Escaped(q) => {
                state = State::Quoted(q);
                false
            }
            State::LineComment => false,
            State::BlockComment => {
                if c == '*' && next == Some('/') {
                    chars.next();
                    mask[i + 1] = false;
                    state = State::Code;
                }
                false
            }
        };
        for b in &mut mask[i..i + width] {
            *b = is_code;
        }
    }
    // A closed string ends on its quote (not code), but the cursor after
    // it is in code again.
    if state == State::Code {
        if let Some(last) = mask.last_mut() {
            *last = true;
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_driver::{Member, Name};

    fn vocabulary() -> Vocabulary {
        let name = |n: &str, kind| Name {
            name: n.to_owned(),
            kind,
        };
        let member = |of, n: &str, property, returns| Member {
            of,
            name: n.to_owned(),
            property,
            returns,
        };
        Vocabulary {
            variables: vec![
                name("ctl", ValueKind::Node),
                name("compute1", ValueKind::Node),
                name("compute2", ValueKind::Node),
                name("l", ValueKind::Link),
                name("count", ValueKind::Other),
            ],
            functions: vec![
                name("start_all", ValueKind::Other),
                name("snapshot", ValueKind::Other),
                name("subtest", ValueKind::Other),
                name("partition", ValueKind::Other),
                name("node", ValueKind::Node),
                name("nodes", ValueKind::Other),
                name("link", ValueKind::Link),
            ],
            members: vec![
                member(ValueKind::Node, "succeed", false, ValueKind::Other),
                member(ValueKind::Node, "start", false, ValueKind::Other),
                member(ValueKind::Node, "shutdown", false, ValueKind::Other),
                member(ValueKind::Node, "crash", false, ValueKind::Other),
                member(ValueKind::Node, "name", true, ValueKind::Other),
                member(ValueKind::Link, "delay", false, ValueKind::Link),
                member(ValueKind::Link, "down", false, ValueKind::Link),
            ],
        }
    }

    fn at_end(line: &str) -> (usize, Vec<String>) {
        complete(line, line.len(), &vocabulary())
    }

    #[test]
    fn a_word_becomes_a_variable_or_a_function() {
        assert_eq!(
            at_end("comp"),
            (0, vec!["compute1".into(), "compute2".into()])
        );
        assert_eq!(at_end("ct"), (0, vec!["ctl".into()]));
        assert_eq!(at_end("start_"), (0, vec!["start_all(".into()]));
        assert_eq!(
            at_end("let x = s"),
            (
                8,
                vec!["snapshot(".into(), "start_all(".into(), "subtest(".into()]
            )
        );
        assert_eq!(
            at_end("partition([[ctl], [co"),
            (
                19,
                vec!["compute1".into(), "compute2".into(), "count".into()]
            )
        );
        assert_eq!(at_end("zzz"), (0, Vec::<String>::new()));
        // An empty word offers everything.
        assert_eq!(at_end("").1.len(), 12);
    }

    #[test]
    fn after_a_dot_come_the_members_of_what_is_before_it() {
        assert_eq!(at_end("ctl.suc"), (4, vec!["succeed(".into()]));
        assert_eq!(
            at_end("compute1.s"),
            (
                9,
                vec!["shutdown(".into(), "start(".into(), "succeed(".into()]
            )
        );
        assert_eq!(at_end("ctl.na"), (4, vec!["name".into()]));
        assert_eq!(at_end("l.d"), (2, vec!["delay(".into(), "down(".into()]));
        assert_eq!(
            at_end("link(ctl, compute1).d"),
            (20, vec!["delay(".into(), "down(".into()])
        );
        assert_eq!(at_end("node(\"edge-1)\").cr"), (16, vec!["crash(".into()]));
        // A known value that is neither: nothing; a number: nothing.
        assert_eq!(at_end("count.s"), (6, Vec::<String>::new()));
        assert_eq!(at_end("1.5"), (3, Vec::<String>::new()));
        // An unknown receiver (a loop variable, an array element): nodes'
        // and links' members.
        assert_eq!(at_end("n.d"), (2, vec!["delay(".into(), "down(".into()]));
        assert_eq!(at_end("nodes()[0].cr"), (11, vec!["crash(".into()]));
        // What a method or a property gives: a link's `delay` the link,
        // a node's `name` a string.
        assert_eq!(
            at_end("link(ctl, compute1).delay(\"5ms\").d"),
            (33, vec!["delay(".into(), "down(".into()])
        );
        assert_eq!(at_end("ctl.name.d"), (9, Vec::<String>::new()));
        assert_eq!(at_end("ctl.succeed(\"x\").d"), (17, Vec::<String>::new()));
        assert_eq!(
            at_end("x.unknown().d"),
            (12, vec!["delay(".into(), "down(".into()])
        );
    }

    #[test]
    fn the_cursor_may_be_inside_the_line() {
        let line = "ctl.su(\"true\")";
        assert_eq!(
            complete(line, 6, &vocabulary()),
            (4, vec!["succeed(".into()])
        );
        assert_eq!(
            complete(line, 99, &vocabulary()),
            (99, Vec::<String>::new())
        );
        // Not on a character boundary.
        assert_eq!(complete("é", 1, &vocabulary()), (1, Vec::<String>::new()));
    }

    #[test]
    fn nothing_is_offered_inside_strings_and_comments() {
        for line in [
            "ctl.succeed(\"sys",
            "ctl.succeed(\"a \\\" comp",
            "ctl.succeed(`multi comp",
            "let c = 'c",
            "// comp",
            "x /* comp",
        ] {
            assert_eq!(at_end(line).1, Vec::<String>::new(), "{line}");
        }
        assert_eq!(
            at_end("ctl.succeed(\"true\"); comp"),
            (21, vec!["compute1".into(), "compute2".into()])
        );
        assert_eq!(at_end("/* x */ ct"), (8, vec!["ctl".into()]));
        assert_eq!(at_end("\"a\" + ct"), (6, vec!["ctl".into()]));
    }

    #[test]
    fn the_code_mask_marks_strings_and_comments() {
        let mask: String = code_mask("a\"b\"c//d")
            .iter()
            .map(|c| if *c { 'c' } else { '-' })
            .collect();
        assert_eq!(mask, "c---c---");
    }
}
