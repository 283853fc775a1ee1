//! Logging to stderr, which systemd forwards to the journal.
//!
//! Under systemd (`JOURNAL_STREAM` set) each line starts with a `<N>`
//! syslog priority, which journald strips and records as the priority. The
//! agent never writes anything but frames to stdout, which may be its
//! protocol channel.

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy)]
pub enum Level {
    Error,
    Warn,
    Info,
}

fn under_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some())
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Silences the info lines of every agent in this process (a test that
/// serves thousands of sessions in-process); warnings and errors stay.
pub fn quiet_info() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if matches!(level, Level::Info) && QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let (priority, name) = match level {
        Level::Error => (3, "error"),
        Level::Warn => (4, "warning"),
        Level::Info => (6, "info"),
    };
    let line = if under_journal() {
        format!("<{priority}>{args}\n")
    } else {
        format!("testbed-agent: {name}: {args}\n")
    };
    // Logging must never take the agent down; a closed stderr loses lines.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}
pub(crate) use {error, info, warning};
