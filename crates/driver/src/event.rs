//! Progress events: the driver never prints; the caller renders these.

use std::sync::Arc;
use std::time::Duration;

use testbed_proto::ExitStatus;

/// Something that happened while a script ran, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    SubtestStarted {
        name: String,
    },
    SubtestFinished {
        name: String,
        duration: Duration,
        /// Why it failed; `None` if it passed.
        failure: Option<String>,
    },
    /// A `log(...)` or `print(...)` from the script.
    Log {
        message: String,
    },
    CommandStarted {
        node: String,
        command: String,
    },
    CommandFinished {
        node: String,
        command: String,
        /// How the command ended, or why it could not run.
        result: Result<ExitStatus, String>,
        duration: Duration,
    },
    /// A power change, a fault, a wait or a copy begins.
    ActionStarted {
        node: Option<String>,
        action: String,
    },
    ActionFinished {
        node: Option<String>,
        action: String,
        duration: Duration,
        /// Why it failed; `None` if it succeeded.
        error: Option<String>,
    },
}

/// Where events go; called on the thread that runs the script.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// A sink that drops every event.
pub fn ignore_events() -> EventSink {
    Arc::new(|_: &Event| {})
}
