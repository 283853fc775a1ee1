//! Helpers shared by testbed's tests, and only by tests: every crate uses
//! this one as a dev-dependency, never as a dependency.
//!
//! The rule: a helper that two test files need lives here, once; a helper
//! that only one crate's tests need stays in that crate's `tests/support`
//! (or `tests/common`).
//!
//! - polling with a deadline ([`poll`]): [`wait_until`] (until a value
//!   comes) and [`eventually`] (until a condition holds);
//! - golden files ([`snapshot`]): [`assert_snapshot!`];
//! - commands and processes ([`process`]): [`run_ok`] (a command that must
//!   succeed), [`text`], [`is_alive`];
//! - ports ([`net`]): [`free_tcp_port`];
//! - a test-owned `sshd` ([`sshd`]): [`Sshd`];
//! - the workspace's binaries in the test's own target directory
//!   ([`workspace_bins`]): [`build_workspace_bins`], [`agent_binary`];
//! - the repository's examples ([`examples`]): [`repo_root`],
//!   [`copy_example`];
//! - the suite's robustness figures ([`robustness`]): [`Fuzz`] (a fuzz
//!   target's case count), [`record_robustness`], [`fuzz_cases`],
//!   [`flip_bytes`] to damage a valid file and [`replace_file`] to write
//!   each case's;
//! - pages as a browser shows them ([`chromium`], headless Chromium):
//!   [`chromium::dump_dom`], [`chromium::screenshot`] and
//!   [`chromium::Picture`] to read it, [`chromium::check_report`] for a
//!   `testbed ci` HTML report.

pub mod chromium;
pub mod examples;
pub mod net;
pub mod poll;
pub mod process;
pub mod registry;
pub mod robustness;
pub mod snapshot;
pub mod sshd;
pub mod workspace_bins;

pub use examples::{copy_example, repo_root};
pub use net::free_tcp_port;
pub use poll::{eventually, wait_until};
pub use process::{is_alive, output_within, run_ok, text, wait_within};
pub use registry::Registry;
pub use robustness::{
    count_from_env, flip_bytes, fuzz_cases, record_robustness, replace_file, Fuzz, SeededRng,
    FUZZ_CASES_VAR,
};
pub use sshd::Sshd;
pub use workspace_bins::{agent_binary, build_workspace_bins};
