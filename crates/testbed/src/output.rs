//! Rendering of results and errors for people: diagnostics with a caret
//! under the offending text, and the exit-code policy.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use testbed_image::ImageError;
use testbed_model::{Diagnostic, Diagnostics};

/// Why a verb failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The composition (or another input file) is invalid: exit 2.
    Input(Diagnostics),
    /// The command line is wrong in a way clap cannot see: exit 2.
    Usage(String),
    /// Something went wrong while doing the work: exit 1.
    Runtime(anyhow::Error),
    /// The verb already printed its own report (e.g. `check --json`); only
    /// the exit code is left to give.
    Reported(u8),
}

impl From<Diagnostics> for Failure {
    fn from(d: Diagnostics) -> Self {
        Failure::Input(d)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// Problems with the user's input (a package that does not exist, a stale
/// lock) exit with 2, like any invalid composition; the rest with 1.
impl From<ImageError> for Failure {
    fn from(e: ImageError) -> Self {
        match e {
            e if testbed_cluster::images::is_usage(&e) => Failure::Usage(e.to_string()),
            // Itself a full report: one package per line, what was tried.
            ImageError::Unavailable { .. } => Failure::Runtime(anyhow::anyhow!("{e}")),
            other => Failure::Runtime(other.into()),
        }
    }
}

impl From<testbed_cluster::Error> for Failure {
    fn from(e: testbed_cluster::Error) -> Self {
        match e {
            testbed_cluster::Error::Composition(d) => Failure::Input(d),
            testbed_cluster::Error::Image(e) => e.into(),
            e if e.is_usage() => Failure::Usage(e.to_string()),
            e => Failure::Runtime(e.into()),
        }
    }
}

/// The result type of every verb.
pub type Outcome = Result<(), Failure>;

fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

fn paint(on: bool, code: &str, text: &str) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Renders one diagnostic the way rustc does.
pub fn render_diagnostic(d: &Diagnostic, color: bool) -> String {
    let mut out = format!(
        "{}: {}\n",
        paint(color, "1;31", "error"),
        paint(color, "1", &d.message)
    );
    if let Some(loc) = &d.location {
        let num = loc.line.to_string();
        let pad = " ".repeat(num.len());
        out.push_str(&format!(
            "{pad}--> {}:{}:{}\n",
            loc.file.display(),
            loc.line,
            loc.column
        ));
        out.push_str(&format!("{pad} |\n"));
        out.push_str(&format!("{num} | {}\n", loc.line_text));
        // Tabs keep their width so the caret stays under the text.
        let lead: String = loc
            .line_text
            .chars()
            .take(loc.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let caret = paint(color, "1;31", &"^".repeat(loc.width));
        out.push_str(&format!("{pad} | {lead}{caret}\n"));
        if let Some(help) = &d.help {
            out.push_str(&format!("{pad} = {}: {help}\n", paint(color, "1", "help")));
        }
    } else if let Some(help) = &d.help {
        out.push_str(&format!("  = {}: {help}\n", paint(color, "1", "help")));
    }
    out
}

impl Failure {
    /// Prints the failure to stderr and returns the exit code.
    pub fn report(self) -> ExitCode {
        let color = color();
        let mut err = std::io::stderr().lock();
        match self {
            Failure::Input(diags) => {
                for d in diags.iter() {
                    let _ = writeln!(err, "{}", render_diagnostic(d, color));
                }
                let n = diags.len();
                let _ = writeln!(
                    err,
                    "{}: the composition has {n} problem{}",
                    paint(color, "1;31", "error"),
                    if n == 1 { "" } else { "s" }
                );
                ExitCode::from(2)
            }
            Failure::Usage(msg) => {
                let _ = writeln!(err, "{}: {msg}", paint(color, "1;31", "error"));
                ExitCode::from(2)
            }
            Failure::Runtime(e) => {
                let _ = writeln!(err, "{}: {e}", paint(color, "1;31", "error"));
                for cause in e.chain().skip(1) {
                    let _ = writeln!(err, "  caused by: {cause}");
                }
                ExitCode::from(1)
            }
            Failure::Reported(code) => ExitCode::from(code),
        }
    }
}
