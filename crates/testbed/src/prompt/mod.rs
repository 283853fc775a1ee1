//! The prompt of `testbed test --interactive`: reads pieces of script and
//! hands them to a [`Session`] (the test driver) one complete piece at a
//! time.
//!
//! On a terminal the line is edited with rustyline: arrows, Emacs keys,
//! a history kept per composition in [`history_file`] (loaded at start,
//! written after each entry) and Tab completion ([`complete`]). Anything
//! else (a pipe, a file) is read line by line as it comes, as scripts that
//! feed the prompt expect.
//!
//! In both, input that is cut short (an open block or string) waits for
//! more lines under a `. ` prompt, and an empty line forces evaluation.

pub mod complete;
#[cfg(test)]
mod pty_tests;

use std::ffi::OsString;
use std::fs::DirBuilder;
use std::io::{self, BufRead, IsTerminal};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustyline::completion::Completer;
use rustyline::config::{Behavior, CompletionType, Config};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::{FileHistory, History};
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};
use testbed_driver::Vocabulary;

/// How many entries a history file keeps (the oldest go first).
pub const HISTORY_SIZE: usize = 1000;

/// What the prompt drives: the test driver, or a fake in tests.
pub trait Session {
    /// Whether `code` is cut short (more lines should follow) rather than
    /// complete or wrong.
    fn is_incomplete(&self, code: &str) -> bool;
    /// Evaluates one complete piece of input and shows the result.
    fn evaluate(&mut self, code: &str);
    /// What Tab may complete, as of now.
    fn vocabulary(&self) -> Vocabulary;
}

/// Where the history of the cluster `key` (see
/// `testbed_runtime::state::cluster_key`) is kept:
/// `$XDG_STATE_HOME/testbed/history/KEY`, else
/// `~/.local/state/testbed/history/KEY`; `None` without either variable.
pub fn history_file(key: &str) -> Option<PathBuf> {
    history_dir(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
        .map(|dir| dir.join(key))
}

/// The XDG base directory rule: a relative `XDG_STATE_HOME` is ignored.
fn history_dir(state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let state = absolute(state_home).or_else(|| absolute(home).map(|h| h.join(".local/state")))?;
    Some(state.join("testbed").join("history"))
}

/// Reads standard input until `.exit` or its end (Ctrl-D) and evaluates
/// what it reads. `history`: the history file ([`history_file`]), used
/// only on a terminal.
pub fn run(session: &mut dyn Session, history: Option<PathBuf>) -> io::Result<()> {
    let stdin = io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        match Editor::with_config(config()) {
            Ok(editor) => return edit(session, editor, history),
            Err(e) => errln!("warning: no line editing on this terminal: {e}"),
        }
    }
    read_lines(session, stdin.lock(), terminal)
}

fn config() -> Config {
    // These only fail with a history of size 0.
    Config::builder()
        .max_history_size(HISTORY_SIZE)
        .and_then(|b| b.history_ignore_dups(true))
        .unwrap_or_else(|_| Config::builder())
        .completion_type(CompletionType::List)
        // The editor draws on the terminal even when stdout is redirected
        // (`testbed test -i | tee log`).
        .behavior(Behavior::PreferTerm)
        .auto_add_history(false)
        .build()
}

/// Input not complete yet, and what a new line makes of it.
#[derive(Debug, Default)]
struct Pending(String);

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Exit,
    More,
    Evaluate(String),
}

impl Pending {
    fn prompt(&self) -> &'static str {
        if self.0.is_empty() {
            "> "
        } else {
            ". "
        }
    }

    /// `line` ends with its newline (but the last line of a file may not).
    fn push(&mut self, line: &str, session: &dyn Session) -> Step {
        if self.0.is_empty() && line.trim() == ".exit" {
            return Step::Exit;
        }
        let blank = line.trim().is_empty();
        self.0.push_str(line);
        if self.0.trim().is_empty() {
            self.0.clear();
            return Step::More;
        }
        if !blank && session.is_incomplete(&self.0) {
            return Step::More;
        }
        Step::Evaluate(std::mem::take(&mut self.0))
    }

    /// What is left at the end of the input.
    fn finish(self) -> Option<String> {
        (!self.0.trim().is_empty()).then_some(self.0)
    }
}

/// Reads `input` line by line; `prompts`: show the prompts on stderr.
fn read_lines(session: &mut dyn Session, mut input: impl BufRead, prompts: bool) -> io::Result<()> {
    let mut pending = Pending::default();
    loop {
        if prompts {
            err!("{}", pending.prompt());
        }
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        match pending.push(&line, session) {
            Step::Exit => return Ok(()),
            Step::More => {}
            Step::Evaluate(code) => session.evaluate(&code),
        }
    }
    if let Some(code) = pending.finish() {
        session.evaluate(&code);
    }
    Ok(())
}

/// Tab completion for the editor: [`complete::complete`] on the session's
/// vocabulary, refreshed after each evaluation.
struct Completion {
    vocabulary: Vocabulary,
}

impl Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete::complete(line, pos, &self.vocabulary))
    }
}

impl Hinter for Completion {
    type Hint = String;
}

impl Highlighter for Completion {}

impl Validator for Completion {}

impl Helper for Completion {}

/// The history file while it works: the first failure to read or write it
/// is a warning, and the session goes on without it (a file that could
/// not be read is not written either, so it is never clobbered).
struct HistoryFile {
    path: Option<PathBuf>,
}

impl HistoryFile {
    /// Creates its folder (mode 0700) and loads the file into `history`.
    fn open(path: Option<PathBuf>, history: &mut FileHistory) -> HistoryFile {
        let Some(path) = path else {
            errln!(
                "warning: the prompt's history is not kept: neither XDG_STATE_HOME nor HOME is set"
            );
            return HistoryFile { path: None };
        };
        if let Some(dir) = path.parent() {
            if let Err(e) = DirBuilder::new().recursive(true).mode(0o700).create(dir) {
                warn_history("create the folder of", &path, &e);
                return HistoryFile { path: None };
            }
        }
        match history.load(&path) {
            Ok(()) => {}
            Err(ReadlineError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn_history("read", &path, &e);
                return HistoryFile { path: None };
            }
        }
        HistoryFile { path: Some(path) }
    }

    /// Adds an entry and writes it to the file (mode 0600; the oldest
    /// entries go beyond [`HISTORY_SIZE`]).
    fn add(&mut self, history: &mut FileHistory, entry: &str) {
        if entry.is_empty() {
            return;
        }
        // Only fails with a history of size 0.
        let _ = history.add(entry);
        if let Some(path) = &self.path {
            if let Err(e) = history.append(path) {
                warn_history("write", path, &e);
                self.path = None;
            }
        }
    }
}

fn warn_history(what: &str, path: &Path, e: &dyn std::fmt::Display) {
    errln!(
        "warning: cannot {what} the prompt's history {}: {e}; going on without it",
        path.display()
    );
}

/// Reads with the line editor until `.exit`, Ctrl-D or the end of input.
/// Ctrl-C drops what was typed so far.
fn edit(
    session: &mut dyn Session,
    mut editor: Editor<Completion, FileHistory>,
    history: Option<PathBuf>,
) -> io::Result<()> {
    editor.set_helper(Some(Completion {
        vocabulary: session.vocabulary(),
    }));
    let mut file = HistoryFile::open(history, editor.history_mut());
    let mut pending = Pending::default();
    let mut evaluate =
        |editor: &mut Editor<Completion, FileHistory>, session: &mut dyn Session, code: &str| {
            file.add(editor.history_mut(), code.trim());
            session.evaluate(code);
            if let Some(helper) = editor.helper_mut() {
                helper.vocabulary = session.vocabulary();
            }
        };
    loop {
        let line = match editor.readline(pending.prompt()) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                pending = Pending::default();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(ReadlineError::Signal(_)) => continue,
            Err(ReadlineError::Io(e)) => return Err(e),
            Err(e) => return Err(io::Error::other(e)),
        };
        match pending.push(&format!("{line}\n"), session) {
            Step::Exit => return Ok(()),
            Step::More => {}
            Step::Evaluate(code) => evaluate(&mut editor, session, &code),
        }
    }
    if let Some(code) = pending.finish() {
        evaluate(&mut editor, session, &code);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use testbed_driver::{Member, Name, ValueKind};

    /// A session that records what it evaluates (and prints it, marked,
    /// when `print`); a `{` opens a block that a `}` closes.
    #[derive(Debug, Default)]
    pub(crate) struct Fake {
        pub evaluated: Vec<String>,
        pub print: bool,
    }

    impl Session for Fake {
        fn is_incomplete(&self, code: &str) -> bool {
            code.matches('{').count() > code.matches('}').count()
        }

        fn evaluate(&mut self, code: &str) {
            if self.print {
                outln!("eval[{}]", code.trim_end().replace('\n', " | "));
            }
            self.evaluated.push(code.to_owned());
        }

        fn vocabulary(&self) -> Vocabulary {
            let name = |n: &str| Name {
                name: n.to_owned(),
                kind: ValueKind::Node,
            };
            let method = |n: &str| Member {
                of: ValueKind::Node,
                name: n.to_owned(),
                property: false,
                returns: ValueKind::Other,
            };
            Vocabulary {
                variables: vec![name("ctl"), name("compute1"), name("compute2")],
                functions: vec![Name {
                    name: "start_all".into(),
                    kind: ValueKind::Other,
                }],
                members: vec![method("succeed"), method("crash")],
            }
        }
    }

    #[test]
    fn piped_lines_are_read_as_they_come_with_continuations() {
        let input = "let a = 1\n\n  \nsubtest(\"x\", || {\n  ctl\n})\nbad {\n\n.exit  \nnever\n";
        let mut fake = Fake::default();
        read_lines(&mut fake, input.as_bytes(), false).unwrap();
        assert_eq!(
            fake.evaluated,
            [
                "let a = 1\n",
                "subtest(\"x\", || {\n  ctl\n})\n",
                // An empty line forces evaluation.
                "bad {\n\n",
            ]
        );
        // What is left at the end is evaluated; `.exit` inside a block is
        // not the command.
        let mut fake = Fake::default();
        read_lines(&mut fake, "{\n.exit\nx".as_bytes(), false).unwrap();
        assert_eq!(fake.evaluated, ["{\n.exit\nx"]);
    }

    #[test]
    fn the_history_lives_in_the_state_folder() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            history_dir(os("/xdg/state"), os("/home/u")),
            Some(PathBuf::from("/xdg/state/testbed/history"))
        );
        assert_eq!(
            history_dir(None, os("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/testbed/history"))
        );
        // A relative XDG_STATE_HOME is ignored, as the XDG rules say.
        assert_eq!(
            history_dir(os("rel"), os("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/testbed/history"))
        );
        assert_eq!(history_dir(None, None), None);
        assert_eq!(history_dir(os(""), os("")), None);
    }

    #[test]
    fn the_history_file_is_private_and_bounded() {
        use std::os::unix::fs::PermissionsExt;

        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state/testbed/history/t-0123abcd");
        let mut history = FileHistory::with_config(&config());
        let mut file = HistoryFile::open(Some(path.clone()), &mut history);
        for i in 0..HISTORY_SIZE + 5 {
            file.add(&mut history, &format!("entry {i}"));
        }
        file.add(&mut history, "two\nlines");
        assert!(file.path.is_some(), "no warning");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // Read back: the newest entries, the multi-line one whole.
        let mut again = FileHistory::with_config(&config());
        let file = HistoryFile::open(Some(path.clone()), &mut again);
        assert!(file.path.is_some());
        assert_eq!(again.len(), HISTORY_SIZE);
        let entries: Vec<&String> = again.iter().collect();
        assert_eq!(entries[0], "entry 6");
        assert_eq!(entries[HISTORY_SIZE - 1], "two\nlines");
    }

    #[test]
    fn a_history_that_cannot_be_kept_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        // Its folder is a file.
        std::fs::write(tmp.path().join("f"), "").unwrap();
        let mut history = FileHistory::with_config(&config());
        let file = HistoryFile::open(Some(tmp.path().join("f/h")), &mut history);
        assert!(file.path.is_none());
        // Unreadable (not UTF-8): not written either.
        let path = tmp.path().join("h");
        std::fs::write(&path, b"#V2\n\xff\xfe\n").unwrap();
        let mut file = HistoryFile::open(Some(path.clone()), &mut history);
        assert!(file.path.is_none());
        file.add(&mut history, "x");
        assert_eq!(std::fs::read(&path).unwrap(), b"#V2\n\xff\xfe\n");
    }
}
