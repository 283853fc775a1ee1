//! Printing for people and programs, which ends quietly when the reader
//! went away.
//!
//! `testbed plan --json | head -5` closes the pipe after five lines; std's
//! `println!` then panics ("failed printing to stdout: Broken pipe"). Every
//! verb prints through [`outln!`], [`out!`], [`errln!`] and [`err!`]
//! instead: a write to a closed stdout or stderr ends the process at once,
//! silently, with [`CLOSED_PIPE`], the status a shell reports for a
//! program that `SIGPIPE` ended (as `ls | head` does). Clusters run in
//! their own supervisor process, so nothing is left half-done by it.

use std::fmt::Arguments;
use std::io::{self, Write};

/// 128 + `SIGPIPE`.
pub const CLOSED_PIPE: i32 = 141;

/// Writes to stdout (and flushes: prompts and progress must show at once).
pub fn out(args: Arguments<'_>) {
    write_or_end(&mut io::stdout().lock(), args);
}

/// Writes to stderr.
pub fn err(args: Arguments<'_>) {
    write_or_end(&mut io::stderr().lock(), args);
}

fn write_or_end(w: &mut dyn Write, args: Arguments<'_>) {
    if let Err(e) = w.write_fmt(args).and_then(|()| w.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_PIPE);
        }
        // Any other failure to print (a full disk behind a redirection)
        // leaves nothing to report it on: the verb goes on, as before.
    }
}

/// `println!` that ends the process quietly on a closed stdout.
macro_rules! outln {
    () => {
        $crate::print::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::print::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that ends the process quietly on a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::print::out(format_args!($($arg)*))
    };
}

/// `eprintln!` that ends the process quietly on a closed stderr.
macro_rules! errln {
    () => {
        $crate::print::err(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::print::err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that ends the process quietly on a closed stderr.
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::print::err(format_args!($($arg)*))
    };
}
