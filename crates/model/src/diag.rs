//! Diagnostics: what went wrong in a composition, and where.
//!
//! The model never prints. It hands the CLI a list of [`Diagnostic`]s, each
//! with a resolved [`Location`] (file, line, column and the text of the line)
//! so that the caller can render a caret under the offending text without
//! reading the file again.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

/// A file the model read, kept so that byte spans can be turned into
/// line/column locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path as the user gave it (joined to the composition's folder when
    /// relative), so messages show a path the user recognises.
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
}

impl SourceFile {
    /// Wraps a file's path and text.
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Arc<Self> {
        Arc::new(SourceFile {
            path: path.into(),
            text: text.into(),
        })
    }

    /// Resolves a byte span to a location. Out-of-range spans are clamped, so
    /// a span from a foreign parser can never cause a panic.
    pub fn locate(&self, span: Range<usize>) -> Location {
        let len = self.text.len();
        let mut start = span.start.min(len);
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = span.end.clamp(start, len);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..].find('\n').map_or(len, |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        let line_text = self.text[line_start..line_end].trim_end_matches('\r');
        let width = self.text[start..end.min(line_end)].chars().count().max(1);
        Location {
            file: self.path.clone(),
            line,
            column,
            line_text: line_text.to_string(),
            width,
        }
    }

    /// A location pointing at a whole line (1-based), for errors reported by
    /// line number only, such as template errors.
    pub fn locate_line(&self, line: usize) -> Location {
        let line_text = self.text.lines().nth(line.saturating_sub(1)).unwrap_or("");
        Location {
            file: self.path.clone(),
            line: line.max(1),
            column: 1,
            line_text: line_text.to_string(),
            width: line_text.chars().count().max(1),
        }
    }
}

/// Where a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The text of the line, for rendering a caret.
    pub line_text: String,
    /// How many characters, from `column`, the caret should cover (at least 1).
    pub width: usize,
}

/// One problem with a composition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// What is wrong, lowercase, naming the role/node/network concerned.
    pub message: String,
    /// Where, when the problem is in a file.
    pub location: Option<Location>,
    /// What would be valid.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without a location (e.g. caused by a command-line flag).
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            location: None,
            help: None,
        }
    }

    /// A diagnostic pointing at `span` of `file`.
    pub fn at(file: &SourceFile, span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            location: Some(file.locate(span)),
            help: None,
        }
    }

    /// Adds what would be valid.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{}:{}:{}: ", loc.file.display(), loc.line, loc.column)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// Every problem found in one pass; never empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// The diagnostics, in the order they were found (which follows the file).
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// The number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a returned error; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics during validation.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub(crate) diags: Vec<Diagnostic>,
}

impl Sink {
    pub(crate) fn push(&mut self, d: Diagnostic) {
        // A value inherited from [defaults] is checked once per role; report
        // each distinct problem once.
        if !self.diags.contains(&d) {
            self.diags.push(d);
        }
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.diags.is_empty() {
            Ok(value)
        } else {
            Err(Diagnostics(self.diags))
        }
    }
}
