//! The test driver: runs a Rhai test script against a running cluster.
//!
//! A script drives the cluster the way the NixOS test driver does: every
//! node is a variable (`ctl.succeed("...")`, `compute1.crash()`), and
//! global functions start nodes, group checks into subtests and inject
//! network faults (`partition`, `heal`, `link(a, b).delay("50ms")`).
//! `docs/testing.md` is the reference of the script API.
//!
//! - [`Cluster`] is the driver's view of a running cluster; [`ApiCluster`]
//!   implements it over the supervisor's JSON API, and tests use fakes.
//! - [`Driver`] binds a script engine to a cluster: [`Driver::run`] runs a
//!   whole script under a time limit and returns a [`TestReport`] (JUnit
//!   XML or JSON); [`Driver::eval`] evaluates pieces of script in a
//!   persistent scope, for an interactive session.
//! - [`Timeouts`]: the default time limit of each call, all multiplied by
//!   a factor (1 with KVM, 5 under TCG, or `$TESTBED_TIMEOUT_FACTOR`).
//! - [`artifacts::collect`] keeps the console logs, journals and fault
//!   history of a failed run.
//! - [`Vocabulary`] ([`Driver::vocabulary`]): the names an interactive
//!   prompt completes, read from the engine and the scope.
//!
//! The driver never prints: progress is reported as [`Event`]s to a
//! callback, and the caller decides how to show them.

pub mod artifacts;
pub mod cluster;
mod driver;
mod error;
mod event;
pub mod report;
mod script;
pub mod timeouts;
pub mod units;
pub mod vocabulary;

pub use cluster::{ApiCluster, Cluster, ClusterError, CommandOutput};
pub use driver::{check_script, is_identifier, Driver, DriverOptions};
pub use error::DriverError;
pub use event::{ignore_events, Event, EventSink};
pub use report::{Captured, Location, ScriptError, TestCase, TestReport};
pub use script::{Link, Node};
pub use timeouts::{timeout_factor, Timeouts, FACTOR_ENV};
pub use vocabulary::{Member, Name, ValueKind, Vocabulary};
