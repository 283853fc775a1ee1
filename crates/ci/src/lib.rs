//! `testbed ci`: finds every composition with a `[test]` under a folder,
//! builds (or pulls) their images once, runs each test as its own
//! `testbed test` process, caches passing results by a key of everything
//! they depended on, and writes one JUnit file, a JSON summary and a
//! static HTML report (docs/ci.md). It prints nothing: progress goes to
//! the caller as [`CiEvent`]s.
//!
//! The output folder:
//!
//! ```text
//! OUT/summary.json             the Summary below
//! OUT/junit.xml                one testsuite per composition
//! OUT/index.html               the report's index
//! OUT/<slug>/index.html        one composition: topology, attempts, subtests
//! OUT/<slug>/topology.svg      `testbed graph` of its plan
//! OUT/<slug>/<n>/log.txt       attempt n: what `testbed test` printed
//! OUT/<slug>/<n>/report.json   attempt n: the driver's report
//! OUT/<slug>/<n>/junit.xml     attempt n: the driver's JUnit
//! OUT/<slug>/<n>/artifacts/    attempt n, failed: logs and journals
//! ```

pub mod discover;
pub mod html;
pub mod junit;
pub mod key;
pub mod markdown;
pub mod results;
pub mod run;
pub mod summary;

pub use results::Results;
pub use run::{run, CiError, CiEvent, Options};
pub use summary::{slug, utc, Attempt, Entry, Status, Summary};
