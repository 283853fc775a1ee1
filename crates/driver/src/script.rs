//! The script API: the Rhai engine, its node and link types, and the
//! functions a test script calls (names follow the NixOS test driver).
//!
//! Every function that talks to the cluster goes through [`Runtime`], which
//! applies the timeouts (scaled by the factor, capped by the test's time
//! limit), emits events and records what happened for the report.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map, NativeCallContext,
    ParseError, ParseErrorType, Position, FLOAT, INT,
};
use testbed_api::{Fault, LinkChange, NodeState, PowerAction, WaitFor};
use testbed_proto::{ExecRequest, ExitStatus};

use crate::cluster::{Cluster, ClusterError, CommandOutput};
use crate::event::{Event, EventSink};
use crate::report::{Captured, Location, ScriptError, TestCase};
use crate::timeouts::Timeouts;
use crate::units::{self, format_duration};

pub(crate) type RResult<T> = Result<T, Box<EvalAltResult>>;

/// A script-level error: a runtime error carrying `message`; the engine
/// fills in the position of the call.
pub(crate) fn fail(message: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(Dynamic::from(message.into()), Position::NONE).into()
}

/// The test's overall time limit while a script runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub deadline: Instant,
    pub total: Duration,
}

/// A subtest being run.
#[derive(Debug)]
struct Frame {
    name: String,
    started: Instant,
    output: Vec<Captured>,
}

/// What the script did, for the report.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    stack: Vec<Frame>,
    pub cases: Vec<TestCase>,
    /// Output outside subtests.
    pub top: Vec<Captured>,
    /// The failure message of the last subtest that failed, so the same
    /// error is not reported twice when it ends the script.
    pub last_subtest_failure: Option<String>,
}

/// Everything the script functions share.
pub(crate) struct Runtime {
    pub cluster: Arc<dyn Cluster>,
    pub events: EventSink,
    pub timeouts: Timeouts,
    pub script: PathBuf,
    /// Relative host paths in `copy_to`/`copy_from` are resolved here.
    pub base_dir: PathBuf,
    pub cluster_name: String,
    /// (name, role), in the cluster's order.
    pub nodes: Vec<(String, String)>,
    pub started: Mutex<Instant>,
    pub limit: Mutex<Option<Limit>>,
    pub recorder: Mutex<Recorder>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("cluster", &self.cluster_name)
            .field("script", &self.script)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning: a panicking event callback must not
/// make every later call fail.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `status`, as `testbed exec` reports it: the code, 128 + signal, or 124
/// after a timeout.
fn status_code(status: &ExitStatus) -> INT {
    match (status.timed_out, status.code, status.signal) {
        (true, _, _) => 124,
        (false, Some(c), _) => INT::from(c),
        (false, None, Some(s)) => 128 + INT::from(s),
        _ => -1,
    }
}

/// A duration argument: seconds (integer or float) or a string such as
/// `"500ms"`.
pub(crate) fn duration_arg(value: &Dynamic, what: &str) -> RResult<Duration> {
    if let Ok(i) = value.as_int() {
        return u64::try_from(i)
            .map(Duration::from_secs)
            .map_err(|_| fail(format!("{what} must not be negative, got {i}")));
    }
    if let Ok(f) = value.as_float() {
        return units::seconds(f)
            .ok_or_else(|| fail(format!("{what} must be a non-negative number, got {f}")));
    }
    if let Some(s) = value.read_lock::<ImmutableString>() {
        return units::parse_duration(s.as_str()).map_err(|e| fail(format!("{what}: {e}")));
    }
    Err(fail(format!(
        "{what} must be a number of seconds or a string like \"2s\", got {}",
        value.type_name()
    )))
}

impl Runtime {
    pub fn emit(&self, event: Event) {
        (self.events)(&event);
    }

    /// Seconds since the run started.
    fn at(&self) -> f64 {
        let started = *lock(&self.started);
        (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
    }

    fn capture(&self, entry: Captured) {
        let mut rec = lock(&self.recorder);
        match rec.stack.last_mut() {
            Some(frame) => frame.output.push(entry),
            None => rec.top.push(entry),
        }
    }

    pub fn log(&self, message: &str) {
        // Command output logged as is ends with a newline the line does
        // not need.
        let message = message.strip_suffix('\n').unwrap_or(message);
        self.emit(Event::Log {
            message: message.to_owned(),
        });
        self.capture(Captured::Log {
            at: self.at(),
            message: message.to_owned(),
        });
    }

    /// The error for an exceeded test time limit.
    pub fn time_limit_error(&self, during: Option<&str>) -> String {
        let total = lock(&self.limit).map(|l| l.total).unwrap_or_default();
        let mut message = format!(
            "the test exceeded its time limit of {}",
            format_duration(total)
        );
        if let Some(during) = during {
            message.push_str(&format!(" (during {during})"));
        }
        message
    }

    /// Whether the time limit has passed; checked by the engine as it runs.
    pub fn over_time(&self) -> bool {
        lock(&self.limit).is_some_and(|l| Instant::now() >= l.deadline)
    }

    /// How long a blocking call may take: `want`, capped at what is left
    /// of the test's time limit (and `true` if that cap applies).
    fn budget(&self, want: Duration, during: &str) -> RResult<(Duration, bool)> {
        // Copied out first: the error message locks the limit again.
        let limit = *lock(&self.limit);
        match limit {
            None => Ok((want, false)),
            Some(limit) => {
                let left = limit.deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(fail(self.time_limit_error(Some(during))))
                } else if want >= left {
                    Ok((left, true))
                } else {
                    Ok((want, false))
                }
            }
        }
    }

    /// The timeout of a call: the script's argument or `default`, times
    /// the factor.
    fn timeout(&self, arg: Option<&Dynamic>, default: Duration) -> RResult<Duration> {
        let base = match arg {
            Some(value) => duration_arg(value, "timeout")?,
            None => default,
        };
        Ok(self.timeouts.scale(base))
    }

    /// A timeout for messages: `300s`, or `60s × factor 5 = 300s`.
    fn describe_timeout(&self, t: Duration) -> String {
        if self.timeouts.factor == 1.0 {
            format_duration(t)
        } else {
            format!(
                "{} (timeout factor {})",
                format_duration(t),
                self.timeouts.factor
            )
        }
    }

    pub fn node(self: &Arc<Self>, name: &str) -> RResult<Node> {
        if self.nodes.iter().any(|(n, _)| n == name) {
            Ok(Node {
                name: name.into(),
                rt: Arc::clone(self),
            })
        } else {
            let names: Vec<&str> = self.nodes.iter().map(|(n, _)| n.as_str()).collect();
            Err(fail(format!(
                "no node {name} in cluster {} (nodes: {})",
                self.cluster_name,
                names.join(", ")
            )))
        }
    }

    /// A node given as a node value or its name.
    fn node_arg(self: &Arc<Self>, value: &Dynamic) -> RResult<Node> {
        if let Some(node) = value.read_lock::<Node>() {
            return Ok(node.clone());
        }
        if let Some(name) = value.read_lock::<ImmutableString>() {
            return self.node(name.as_str());
        }
        Err(fail(format!(
            "expected a node or a node's name, got {}",
            value.type_name()
        )))
    }

    /// Runs one command and records it; errors only when the command could
    /// not be run at all.
    fn run(&self, node: &str, command: &str, timeout: Duration) -> RResult<CommandOutput> {
        let (limit, capped) = self.budget(timeout, &format!("`{command}` on {node}"))?;
        self.emit(Event::CommandStarted {
            node: node.to_owned(),
            command: command.to_owned(),
        });
        let at = self.at();
        let start = Instant::now();
        let result = self
            .cluster
            .exec(node, ExecRequest::shell(command).timeout(limit));
        let duration = start.elapsed();
        self.emit(Event::CommandFinished {
            node: node.to_owned(),
            command: command.to_owned(),
            result: result
                .as_ref()
                .map(|o| o.status)
                .map_err(ToString::to_string),
            duration,
        });
        let (status, stdout, stderr) = match &result {
            Ok(o) => (o.status.to_string(), text(&o.stdout), text(&o.stderr)),
            Err(e) => (format!("not run: {e}"), String::new(), String::new()),
        };
        self.capture(Captured::Command {
            at,
            node: node.to_owned(),
            command: command.to_owned(),
            status,
            stdout,
            stderr,
            duration,
        });
        match result {
            Ok(output) => {
                if output.status.timed_out && capped {
                    return Err(fail(
                        self.time_limit_error(Some(&format!("`{command}` on {node}"))),
                    ));
                }
                Ok(output)
            }
            Err(e) => Err(fail(format!("cannot run `{command}` on node {node}: {e}"))),
        }
    }

    /// Runs `f` as a named action: events, capture, and the error message.
    fn action<T>(
        &self,
        node: Option<&str>,
        action: &str,
        f: impl FnOnce() -> RResult<T>,
    ) -> RResult<T> {
        self.emit(Event::ActionStarted {
            node: node.map(str::to_owned),
            action: action.to_owned(),
        });
        let at = self.at();
        let start = Instant::now();
        let result = f();
        let duration = start.elapsed();
        let error = result.as_ref().err().map(|e| message_of(e));
        self.emit(Event::ActionFinished {
            node: node.map(str::to_owned),
            action: action.to_owned(),
            duration,
            error: error.clone(),
        });
        self.capture(Captured::Action {
            at,
            node: node.map(str::to_owned),
            action: action.to_owned(),
            error,
            duration,
        });
        result
    }

    /// Polls the cluster's status until every node in `names` is ready.
    /// Nodes listed in `booting` were just (re)started: for them a stopped
    /// state means the boot ended.
    fn wait_ready(&self, names: &[String], during: &str) -> RResult<()> {
        let timeout = self.timeouts.scale(self.cluster.boot_timeout());
        let (limit, capped) = self.budget(timeout, during)?;
        let deadline = Instant::now() + limit;
        loop {
            let status = self
                .cluster
                .status()
                .map_err(|e| fail(format!("{during}: {e}")))?;
            let mut pending = Vec::new();
            for name in names {
                let Some(node) = status.nodes.iter().find(|n| &n.name == name) else {
                    return Err(fail(format!(
                        "{during}: node {name} is gone from the cluster"
                    )));
                };
                match node.state {
                    NodeState::Ready => {}
                    NodeState::Failed | NodeState::Stopped => {
                        let detail = node.message.as_deref().unwrap_or("no details");
                        return Err(fail(format!(
                            "node {name} did not come up ({}): {detail}; console log: {}",
                            node.state,
                            node.console_log.display()
                        )));
                    }
                    NodeState::Paused => {
                        return Err(fail(format!(
                            "node {name} is paused; resume it before waiting for it"
                        )))
                    }
                    _ => pending.push(format!("{name} ({})", node.state)),
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if capped {
                    return Err(fail(self.time_limit_error(Some(during))));
                }
                return Err(fail(format!(
                    "{during}: not ready within {}: {}",
                    self.describe_timeout(limit),
                    pending.join(", ")
                )));
            }
            std::thread::sleep(self.timeouts.poll_interval.min(limit));
        }
    }

    fn power(&self, node: &str, action: PowerAction) -> RResult<()> {
        self.cluster
            .power(node, action)
            .map_err(|e| fail(cluster_message(node, &e)))
    }

    fn fault(&self, fault: &Fault) -> RResult<()> {
        self.cluster
            .fault(fault)
            .map(|_| ())
            .map_err(|e| fail(e.to_string()))
    }

    /// Starts every node in `names` that is not running and waits until
    /// all are ready.
    fn start_nodes(&self, names: &[String], during: &str) -> RResult<()> {
        let status = self
            .cluster
            .status()
            .map_err(|e| fail(format!("{during}: {e}")))?;
        for name in names {
            let state = status
                .nodes
                .iter()
                .find(|n| &n.name == name)
                .map(|n| n.state);
            if matches!(state, Some(NodeState::Stopped | NodeState::Failed)) {
                self.power(name, PowerAction::Start)?;
            }
        }
        self.wait_ready(names, during)
    }

    /// Retries `command` until `want_success` matches its outcome.
    fn wait_until(
        &self,
        node: &str,
        command: &str,
        timeout: Duration,
        want_success: bool,
    ) -> RResult<String> {
        let verb = if want_success { "succeed" } else { "fail" };
        let during = format!("wait_until_{verb}s `{command}` on {node}");
        let (limit, capped) = self.budget(timeout, &during)?;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left.min(self.timeouts.scale(self.timeouts.command));
            let output = self.run(node, command, attempt.max(Duration::from_secs(1)))?;
            if output.status.success() == want_success {
                return Ok(text(&output.stdout));
            }
            if Instant::now() + self.timeouts.retry_interval >= deadline {
                if capped {
                    return Err(fail(self.time_limit_error(Some(&during))));
                }
                return Err(fail(format!(
                    "command `{command}` on node {node} did not {verb} within {}; last attempt: {}",
                    self.describe_timeout(limit),
                    describe_output(&output)
                )));
            }
            std::thread::sleep(self.timeouts.retry_interval);
        }
    }

    fn wait_for(&self, node: &str, what: WaitFor, timeout: Duration, label: &str) -> RResult<()> {
        let during = format!("{label} on {node}");
        let (limit, capped) = self.budget(timeout, &during)?;
        self.action(Some(node), label, || {
            match self.cluster.wait(node, &what, limit) {
                Ok(()) => Ok(()),
                Err(_) if capped && self.over_time() => {
                    Err(fail(self.time_limit_error(Some(&during))))
                }
                Err(e) => Err(fail(format!(
                    "{label} on node {node} (timeout {}): {}",
                    self.describe_timeout(limit),
                    strip_node(node, &e.to_string())
                ))),
            }
        })
    }

    fn host_path(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn begin_subtest(&self, name: &str) {
        let name = {
            let mut rec = lock(&self.recorder);
            let name = match rec.stack.last() {
                Some(parent) => format!("{}/{name}", parent.name),
                None => name.to_owned(),
            };
            rec.stack.push(Frame {
                name: name.clone(),
                started: Instant::now(),
                output: Vec::new(),
            });
            name
        };
        self.emit(Event::SubtestStarted { name });
    }

    fn end_subtest(&self, failure: Option<String>) {
        let case = {
            let mut rec = lock(&self.recorder);
            let Some(frame) = rec.stack.pop() else {
                return;
            };
            if failure.is_some() {
                rec.last_subtest_failure.clone_from(&failure);
            }
            let case = TestCase {
                name: frame.name,
                duration: frame.started.elapsed(),
                passed: failure.is_none(),
                failure,
                output: frame.output,
            };
            rec.cases.push(case.clone());
            case
        };
        self.emit(Event::SubtestFinished {
            name: case.name,
            duration: case.duration,
            failure: case.failure,
        });
    }

    /// Closes subtests an error left open (cannot happen through
    /// `subtest`, which always closes its own; kept so a report is never
    /// missing a case).
    pub fn close_open_subtests(&self, failure: &str) {
        while !lock(&self.recorder).stack.is_empty() {
            self.end_subtest(Some(failure.to_owned()));
        }
    }
}

/// Supervisor messages often start with `node NAME: `; the driver's own
/// message already names the node.
fn strip_node<'a>(node: &str, message: &'a str) -> &'a str {
    message
        .strip_prefix(&format!("node {node}: "))
        .unwrap_or(message)
}

fn cluster_message(node: &str, e: &ClusterError) -> String {
    let m = e.to_string();
    if m.contains(node) {
        m
    } else {
        format!("node {node}: {m}")
    }
}

/// A command's outcome for a failure message: status, stdout, stderr.
fn describe_output(output: &CommandOutput) -> String {
    let mut s = output.status.to_string();
    for (name, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let t = text(bytes);
        let t = t.trim_end();
        if t.is_empty() {
            s.push_str(&format!("\n{name}: (empty)"));
        } else {
            s.push_str(&format!("\n{name}:\n{}", tail(t, 40)));
        }
    }
    s
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n {
        return text.to_owned();
    }
    format!(
        "[... {} lines cut]\n{}",
        lines.len() - n,
        lines[lines.len() - n..].join("\n")
    )
}

/// The message of an error, without Rhai's position suffix.
pub(crate) fn message_of(err: &EvalAltResult) -> String {
    let mut e = err;
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
    | EvalAltResult::ErrorInModule(_, inner, _) = e
    {
        e = inner;
    }
    match e {
        EvalAltResult::ErrorRuntime(d, _) | EvalAltResult::ErrorTerminated(d, _) => d.to_string(),
        other => {
            let full = other.to_string();
            let pos = other.position();
            let trimmed = if pos.is_none() {
                full.as_str()
            } else {
                full.strip_suffix(&format!(" ({pos})")).unwrap_or(&full)
            };
            lowercase_first(trimmed)
        }
    }
}

/// Rhai's own messages start with a capital; ours do not.
fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(a), Some(b)) if a.is_uppercase() && !b.is_uppercase() => {
            let mut out: String = a.to_lowercase().collect();
            out.push(b);
            out.push_str(chars.as_str());
            out
        }
        _ => s.to_owned(),
    }
}

/// The innermost position of an error: where it happened, not where the
/// closure holding it was called.
fn position_of(err: &EvalAltResult) -> Position {
    let mut e = err;
    let mut pos = e.position();
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
    | EvalAltResult::ErrorInModule(_, inner, _) = e
    {
        e = inner;
        if !e.position().is_none() {
            pos = e.position();
        }
    }
    pos
}

fn location(script: &Path, pos: Position) -> Option<Location> {
    Some(Location {
        file: script.to_path_buf(),
        line: pos.line()?,
        column: pos.position().unwrap_or(1),
    })
}

/// A runtime error as a [`ScriptError`] pointing at the script.
pub(crate) fn script_error(err: &EvalAltResult, script: &Path) -> ScriptError {
    ScriptError {
        message: message_of(err),
        location: location(script, position_of(err)),
    }
}

/// A syntax error as a [`ScriptError`].
pub(crate) fn parse_error(err: &ParseError, script: &Path) -> ScriptError {
    ScriptError {
        message: format!(
            "syntax error: {}",
            lowercase_first(&err.err_type().to_string())
        ),
        location: location(script, err.position()),
    }
}

/// Whether a syntax error only means the input stopped too early (the REPL
/// then reads another line).
pub(crate) fn is_incomplete(err: &ParseError, source: &str) -> bool {
    match err.err_type() {
        ParseErrorType::UnexpectedEOF => true,
        ParseErrorType::BadInput(rhai::LexError::UnterminatedString) => true,
        ParseErrorType::MissingToken(..) | ParseErrorType::MissingSymbol(..) => {
            let pos = err.position();
            let lines = source.lines().count().max(1);
            let last_len = source.lines().last().map_or(0, |l| l.chars().count());
            pos.is_none()
                || pos.line().is_some_and(|l| l > lines)
                || (pos.line() == Some(lines) && pos.position().unwrap_or(0) > last_len)
        }
        _ => false,
    }
}

/// A node of the cluster, as scripts see it.
#[derive(Clone)]
pub struct Node {
    name: ImmutableString,
    rt: Arc<Runtime>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("name", &self.name).finish()
    }
}

impl Node {
    fn role(&self) -> String {
        self.rt
            .nodes
            .iter()
            .find(|(n, _)| n == self.name.as_str())
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    }

    fn succeed(&self, command: &str, timeout: Option<&Dynamic>) -> RResult<String> {
        let t = self.rt.timeout(timeout, self.rt.timeouts.command)?;
        let output = self.rt.run(&self.name, command, t)?;
        if output.status.success() {
            Ok(text(&output.stdout))
        } else {
            Err(fail(format!(
                "command `{command}` on node {} failed: {}",
                self.name,
                describe_output(&output)
            )))
        }
    }

    fn fail_cmd(&self, command: &str, timeout: Option<&Dynamic>) -> RResult<String> {
        let t = self.rt.timeout(timeout, self.rt.timeouts.command)?;
        let output = self.rt.run(&self.name, command, t)?;
        if output.status.success() {
            Err(fail(format!(
                "command `{command}` on node {} succeeded but was expected to fail: {}",
                self.name,
                describe_output(&output)
            )))
        } else if output.status.timed_out {
            Err(fail(format!(
                "command `{command}` on node {} was expected to fail but was killed after its timeout of {}",
                self.name,
                self.rt.describe_timeout(t)
            )))
        } else if let Some(code @ (126 | 127)) = output.status.code {
            // The shell's "not executable" / "not found": the command never
            // ran, so its failure proves nothing (a missing tool would make
            // any `fail` pass).
            Err(fail(format!(
                "command `{command}` on node {} could not run (exit status {code}: {}); fail() expects a command that runs and fails: {}",
                self.name,
                if code == 127 { "not found" } else { "not executable" },
                describe_output(&output)
            )))
        } else {
            Ok(text(&output.stdout))
        }
    }

    fn execute(&self, command: &str, timeout: Option<&Dynamic>) -> RResult<Map> {
        let t = self.rt.timeout(timeout, self.rt.timeouts.command)?;
        let output = self.rt.run(&self.name, command, t)?;
        let mut map = Map::new();
        map.insert(
            "status".into(),
            Dynamic::from_int(status_code(&output.status)),
        );
        map.insert("stdout".into(), text(&output.stdout).into());
        map.insert("stderr".into(), text(&output.stderr).into());
        Ok(map)
    }

    fn wait_until(
        &self,
        command: &str,
        timeout: Option<&Dynamic>,
        want_success: bool,
    ) -> RResult<String> {
        let t = self.rt.timeout(timeout, self.rt.timeouts.wait)?;
        self.rt.wait_until(&self.name, command, t, want_success)
    }

    fn wait_for(&self, what: WaitFor, label: String, timeout: Option<&Dynamic>) -> RResult<()> {
        let t = self.rt.timeout(timeout, self.rt.timeouts.wait)?;
        self.rt.wait_for(&self.name, what, t, &label)
    }

    fn wait_for_port(&self, port: INT, timeout: Option<&Dynamic>) -> RResult<()> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| fail(format!("port must be within 1..65535, got {port}")))?;
        self.wait_for(
            WaitFor::Port { port },
            format!("wait_for_open_port {port}"),
            timeout,
        )
    }

    fn copy_to(&self, host: &str, guest: &str) -> RResult<()> {
        use std::os::unix::fs::PermissionsExt;
        let from = self.rt.host_path(host);
        let label = format!("copy_to {} {guest}", from.display());
        self.rt.action(Some(&self.name), &label, || {
            if !guest.starts_with('/') {
                return Err(fail(format!(
                    "copy_to: the guest path must be absolute, got {guest:?}"
                )));
            }
            let meta = std::fs::metadata(&from)
                .map_err(|e| fail(format!("copy_to: cannot read {}: {e}", from.display())))?;
            if meta.is_dir() {
                return Err(fail(format!(
                    "copy_to: {} is a directory; copy_to copies single files",
                    from.display()
                )));
            }
            let data = std::fs::read(&from)
                .map_err(|e| fail(format!("copy_to: cannot read {}: {e}", from.display())))?;
            let guest = if guest.ends_with('/') {
                format!(
                    "{guest}{}",
                    from.file_name().unwrap_or_default().to_string_lossy()
                )
            } else {
                guest.to_owned()
            };
            self.rt
                .cluster
                .put(
                    &self.name,
                    &guest,
                    meta.permissions().mode() & 0o7777,
                    &data,
                )
                .map_err(|e| {
                    fail(format!(
                        "copy_to {guest} on node {}: {}",
                        self.name,
                        strip_node(&self.name, &e.to_string())
                    ))
                })
        })
    }

    fn copy_from(&self, guest: &str, host: &str) -> RResult<()> {
        use std::os::unix::fs::PermissionsExt;
        let to = self.rt.host_path(host);
        let label = format!("copy_from {guest} {}", to.display());
        self.rt.action(Some(&self.name), &label, || {
            let (mode, data) = self.rt.cluster.get(&self.name, guest).map_err(|e| {
                fail(format!(
                    "copy_from {guest} on node {}: {}",
                    self.name,
                    strip_node(&self.name, &e.to_string())
                ))
            })?;
            let to = if to.is_dir() {
                to.join(Path::new(guest).file_name().unwrap_or_default())
            } else {
                to.clone()
            };
            if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    fail(format!(
                        "copy_from: cannot create {}: {e}",
                        parent.display()
                    ))
                })?;
            }
            std::fs::write(&to, &data)
                .map_err(|e| fail(format!("copy_from: cannot write {}: {e}", to.display())))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode & 0o777)).map_err(
                |e| {
                    fail(format!(
                        "copy_from: cannot set the mode of {}: {e}",
                        to.display()
                    ))
                },
            )
        })
    }

    fn power_action(&self, action: PowerAction, label: &str) -> RResult<()> {
        self.rt.action(Some(&self.name), label, || {
            self.rt.power(&self.name, action)?;
            match action {
                PowerAction::Reboot => self.rt.wait_ready(
                    &[self.name.to_string()],
                    &format!("reboot of {}", self.name),
                ),
                _ => Ok(()),
            }
        })
    }

    fn start(&self) -> RResult<()> {
        self.rt.action(Some(&self.name), "start", || {
            self.rt
                .start_nodes(&[self.name.to_string()], &format!("start of {}", self.name))
        })
    }

    fn fault(&self, fault: Fault, label: &str) -> RResult<()> {
        self.rt
            .action(Some(&self.name), label, || self.rt.fault(&fault))
    }
}

/// The link between two nodes, as `link(a, b)` returns it: each method
/// changes the link at once and returns it, so calls chain.
#[derive(Clone)]
pub struct Link {
    a: ImmutableString,
    b: ImmutableString,
    rt: Arc<Runtime>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("a", &self.a)
            .field("b", &self.b)
            .finish()
    }
}

impl Link {
    fn change(self, label: &str, change: LinkChange) -> RResult<Link> {
        let fault = Fault::Link {
            a: self.a.to_string(),
            b: self.b.to_string(),
            change,
        };
        let action = format!("link {}-{} {label}", self.a, self.b);
        self.rt.action(None, &action, || {
            self.rt
                .cluster
                .fault(&fault)
                .map(|_| ())
                .map_err(|e| fail(format!("link {} - {}: {e}", self.a, self.b)))
        })?;
        Ok(self)
    }

    fn delay(self, delay: &Dynamic, jitter: Option<&Dynamic>) -> RResult<Link> {
        let d = duration_arg(delay, "delay")?;
        let j = jitter.map(|j| duration_arg(j, "jitter")).transpose()?;
        if let Some(j) = j {
            if j > d {
                return Err(fail(format!(
                    "jitter ({}) must not exceed the delay ({})",
                    format_duration(j),
                    format_duration(d)
                )));
            }
        }
        let label = match j {
            Some(j) => format!("delay {} jitter {}", format_duration(d), format_duration(j)),
            None => format!("delay {}", format_duration(d)),
        };
        self.change(
            &label,
            LinkChange {
                delay_ms: Some(d.as_secs_f64() * 1000.0),
                jitter_ms: j.map(|j| j.as_secs_f64() * 1000.0),
                ..LinkChange::default()
            },
        )
    }

    fn loss(self, loss: &Dynamic) -> RResult<Link> {
        let v = if let Ok(f) = loss.as_float() {
            units::check_loss(f)
        } else if let Ok(i) = loss.as_int() {
            units::check_loss(i as FLOAT)
        } else if let Some(s) = loss.read_lock::<ImmutableString>() {
            units::parse_loss(s.as_str())
        } else {
            Err(format!(
                "loss must be a fraction or a string like \"10%\", got {}",
                loss.type_name()
            ))
        }
        .map_err(fail)?;
        self.change(
            &format!("loss {v}"),
            LinkChange {
                loss: Some(v),
                ..LinkChange::default()
            },
        )
    }

    fn rate(self, rate: &Dynamic) -> RResult<Link> {
        let bps = if let Ok(i) = rate.as_int() {
            u64::try_from(i).map_err(|_| format!("rate must not be negative, got {i}"))
        } else if let Some(s) = rate.read_lock::<ImmutableString>() {
            units::parse_rate(s.as_str())
        } else {
            Err(format!(
                "rate must be bits per second or a string like \"10mbit\", got {}",
                rate.type_name()
            ))
        }
        .map_err(fail)?;
        let label = if bps == 0 {
            "rate unlimited".to_owned()
        } else {
            format!("rate {bps}bit/s")
        };
        self.change(
            &label,
            LinkChange {
                rate_bps: Some(bps),
                ..LinkChange::default()
            },
        )
    }

    fn set_down(self, down: bool) -> RResult<Link> {
        self.change(
            if down { "down" } else { "up" },
            LinkChange {
                down: Some(down),
                ..LinkChange::default()
            },
        )
    }

    fn clear(self) -> RResult<Link> {
        self.change(
            "clear",
            LinkChange {
                clear: true,
                ..LinkChange::default()
            },
        )
    }
}

/// A value as text, with nodes and links by name (Rhai's own formatting
/// knows only their Rust type names).
pub(crate) fn display(value: &Dynamic) -> String {
    if let Some(node) = value.read_lock::<Node>() {
        return node.name.to_string();
    }
    if let Some(link) = value.read_lock::<Link>() {
        return format!("link {}-{}", link.a, link.b);
    }
    if let Some(array) = value.read_lock::<Array>() {
        let items: Vec<String> = array.iter().map(display).collect();
        return format!("[{}]", items.join(", "));
    }
    if let Some(map) = value.read_lock::<Map>() {
        let items: Vec<String> = map
            .iter()
            .map(|(k, v)| {
                if v.is_string() {
                    format!("{k}: {v:?}")
                } else {
                    format!("{k}: {}", display(v))
                }
            })
            .collect();
        return format!("#{{{}}}", items.join(", "));
    }
    value.to_string()
}

/// Names from an array of nodes or names.
fn group(rt: &Arc<Runtime>, value: &Dynamic) -> RResult<Vec<String>> {
    let Some(array) = value.read_lock::<Array>() else {
        return Err(fail(format!(
            "partition takes an array of groups, each an array of nodes or names, got a group of type {}",
            value.type_name()
        )));
    };
    array
        .iter()
        .map(|v| rt.node_arg(v).map(|n| n.name.to_string()))
        .collect()
}

fn sleep(rt: &Runtime, d: Duration) -> RResult<()> {
    let (allowed, capped) = rt.budget(d, &format!("sleep {}", format_duration(d)))?;
    std::thread::sleep(allowed);
    if capped {
        return Err(fail(
            rt.time_limit_error(Some(&format!("sleep {}", format_duration(d)))),
        ));
    }
    Ok(())
}

/// The script's name of the [`Node`] type (`type_of(ctl)`); the prompt's
/// completion tells node methods by it.
pub(crate) const NODE_TYPE: &str = "Node";
/// The script's name of the [`Link`] type.
pub(crate) const LINK_TYPE: &str = "Link";

/// Builds the engine with the whole script API bound to `rt`. What it
/// registers is also what the prompt completes: see
/// [`crate::vocabulary`].
pub(crate) fn engine(rt: &Arc<Runtime>) -> Engine {
    let mut engine = Engine::new();
    engine.set_strict_variables(true);
    // Deeply recursive scripts stop with an error instead of overflowing
    // the stack.
    engine.set_max_call_levels(48);

    let r = Arc::clone(rt);
    engine.on_print(move |s| r.log(s));
    let r = Arc::clone(rt);
    engine.on_debug(move |s, _, _| r.log(s));
    let r = Arc::clone(rt);
    engine.on_progress(move |ops| {
        if ops % 64 == 0 && r.over_time() {
            Some(Dynamic::from(r.time_limit_error(None)))
        } else {
            None
        }
    });

    register_node(&mut engine);
    register_link(&mut engine);
    register_globals(&mut engine, rt);
    engine
}

fn register_node(engine: &mut Engine) {
    engine
        .register_type_with_name::<Node>(NODE_TYPE)
        .register_get("name", |n: &mut Node| n.name.clone())
        .register_get("role", |n: &mut Node| n.role())
        .register_fn("to_string", |n: &mut Node| n.name.clone())
        .register_fn("to_debug", |n: &mut Node| format!("node {}", n.name))
        .register_fn("==", |a: Node, b: Node| a.name == b.name)
        .register_fn("!=", |a: Node, b: Node| a.name != b.name)
        .register_fn("succeed", |n: Node, c: &str| n.succeed(c, None))
        .register_fn("succeed", |n: Node, c: &str, t: Dynamic| {
            n.succeed(c, Some(&t))
        })
        .register_fn("fail", |n: Node, c: &str| n.fail_cmd(c, None))
        .register_fn("fail", |n: Node, c: &str, t: Dynamic| {
            n.fail_cmd(c, Some(&t))
        })
        .register_fn("execute", |n: Node, c: &str| n.execute(c, None))
        .register_fn("execute", |n: Node, c: &str, t: Dynamic| {
            n.execute(c, Some(&t))
        })
        .register_fn("wait_until_succeeds", |n: Node, c: &str| {
            n.wait_until(c, None, true)
        })
        .register_fn("wait_until_succeeds", |n: Node, c: &str, t: Dynamic| {
            n.wait_until(c, Some(&t), true)
        })
        .register_fn("wait_until_fails", |n: Node, c: &str| {
            n.wait_until(c, None, false)
        })
        .register_fn("wait_until_fails", |n: Node, c: &str, t: Dynamic| {
            n.wait_until(c, Some(&t), false)
        })
        .register_fn("wait_for_unit", |n: Node, u: &str| {
            n.wait_for(
                WaitFor::Unit { unit: u.into() },
                format!("wait_for_unit {u}"),
                None,
            )
        })
        .register_fn("wait_for_unit", |n: Node, u: &str, t: Dynamic| {
            n.wait_for(
                WaitFor::Unit { unit: u.into() },
                format!("wait_for_unit {u}"),
                Some(&t),
            )
        })
        .register_fn("wait_for_open_port", |n: Node, p: INT| {
            n.wait_for_port(p, None)
        })
        .register_fn("wait_for_open_port", |n: Node, p: INT, t: Dynamic| {
            n.wait_for_port(p, Some(&t))
        })
        .register_fn("wait_for_file", |n: Node, p: &str| {
            n.wait_for(
                WaitFor::File { path: p.into() },
                format!("wait_for_file {p}"),
                None,
            )
        })
        .register_fn("wait_for_file", |n: Node, p: &str, t: Dynamic| {
            n.wait_for(
                WaitFor::File { path: p.into() },
                format!("wait_for_file {p}"),
                Some(&t),
            )
        })
        .register_fn("copy_to", |n: Node, h: &str, g: &str| n.copy_to(h, g))
        .register_fn("copy_from", |n: Node, g: &str, h: &str| n.copy_from(g, h))
        .register_fn("start", |n: Node| n.start())
        .register_fn("shutdown", |n: Node| {
            n.power_action(PowerAction::Shutdown, "shutdown")
        })
        .register_fn("crash", |n: Node| {
            n.power_action(PowerAction::Crash, "crash")
        })
        .register_fn("reboot", |n: Node| {
            n.power_action(PowerAction::Reboot, "reboot")
        })
        .register_fn("pause", |n: Node| {
            n.power_action(PowerAction::Pause, "pause")
        })
        .register_fn("resume", |n: Node| {
            n.power_action(PowerAction::Resume, "resume")
        })
        .register_fn("block", |n: Node| {
            let fault = Fault::Block {
                node: n.name.to_string(),
            };
            n.fault(fault, "block")
        })
        .register_fn("unblock", |n: Node| {
            let fault = Fault::Unblock {
                node: n.name.to_string(),
            };
            n.fault(fault, "unblock")
        });
}

fn register_link(engine: &mut Engine) {
    engine
        .register_type_with_name::<Link>(LINK_TYPE)
        .register_fn("to_string", |l: &mut Link| format!("link {}-{}", l.a, l.b))
        .register_fn("to_debug", |l: &mut Link| format!("link {}-{}", l.a, l.b))
        .register_fn("delay", |l: Link, d: Dynamic| l.delay(&d, None))
        .register_fn("delay", |l: Link, d: Dynamic, j: Dynamic| {
            l.delay(&d, Some(&j))
        })
        .register_fn("loss", |l: Link, v: Dynamic| l.loss(&v))
        .register_fn("rate", |l: Link, v: Dynamic| l.rate(&v))
        .register_fn("down", |l: Link| l.set_down(true))
        .register_fn("up", |l: Link| l.set_down(false))
        .register_fn("clear", |l: Link| l.clear());
}

fn register_globals(engine: &mut Engine, rt: &Arc<Runtime>) {
    let r = Arc::clone(rt);
    engine.register_fn("node", move |name: &str| r.node(name));
    let r = Arc::clone(rt);
    engine.register_fn("role", move |role: &str| -> RResult<Array> {
        let nodes: Array = r
            .nodes
            .iter()
            .filter(|(_, rl)| rl == role)
            .map(|(n, _)| r.node(n).map(Dynamic::from))
            .collect::<RResult<_>>()?;
        if nodes.is_empty() && !r.nodes.iter().any(|(_, rl)| rl == role) {
            let mut roles: Vec<&str> = r.nodes.iter().map(|(_, rl)| rl.as_str()).collect();
            roles.dedup();
            return Err(fail(format!(
                "no role {role} in cluster {} (roles: {})",
                r.cluster_name,
                roles.join(", ")
            )));
        }
        Ok(nodes)
    });
    let r = Arc::clone(rt);
    engine.register_fn("nodes", move || -> RResult<Array> {
        r.nodes
            .iter()
            .map(|(n, _)| r.node(n).map(Dynamic::from))
            .collect()
    });
    let r = Arc::clone(rt);
    engine.register_fn("backend", move || -> RResult<String> {
        r.cluster
            .status()
            .map(|s| s.backend)
            .map_err(|e| fail(e.to_string()))
    });
    let r = Arc::clone(rt);
    engine.register_fn("start_all", move || -> RResult<()> {
        let names: Vec<String> = r.nodes.iter().map(|(n, _)| n.clone()).collect();
        r.action(None, "start_all", || r.start_nodes(&names, "start_all"))
    });
    let r = Arc::clone(rt);
    engine.register_fn(
        "subtest",
        move |ctx: NativeCallContext<'_>, name: &str, body: FnPtr| -> RResult<Dynamic> {
            r.begin_subtest(name);
            match body.call_within_context::<Dynamic>(&ctx, ()) {
                Ok(value) => {
                    r.end_subtest(None);
                    Ok(value)
                }
                Err(e) => {
                    r.end_subtest(Some(script_error(&e, &r.script).to_string()));
                    Err(e)
                }
            }
        },
    );
    // Rhai's standard library has `log(FLOAT)` (a logarithm) and
    // `sleep(INT)`/`sleep(FLOAT)`; functions registered with the same
    // parameter types take precedence over them, a `Dynamic` one would
    // not.
    let r = Arc::clone(rt);
    engine.register_fn("log", move |message: Dynamic| r.log(&display(&message)));
    let r = Arc::clone(rt);
    engine.register_fn("log", move |message: FLOAT| r.log(&message.to_string()));
    let r = Arc::clone(rt);
    engine.register_fn("log", move |message: INT| r.log(&message.to_string()));
    let r = Arc::clone(rt);
    engine.register_fn("sleep", move |d: Dynamic| -> RResult<()> {
        sleep(&r, duration_arg(&d, "sleep")?)
    });
    let r = Arc::clone(rt);
    engine.register_fn("sleep", move |d: INT| -> RResult<()> {
        sleep(&r, duration_arg(&Dynamic::from_int(d), "sleep")?)
    });
    let r = Arc::clone(rt);
    engine.register_fn("sleep", move |d: FLOAT| -> RResult<()> {
        sleep(&r, duration_arg(&Dynamic::from_float(d), "sleep")?)
    });
    engine.register_fn("assert", |cond: bool| -> RResult<()> {
        if cond {
            Ok(())
        } else {
            Err(fail("assertion failed"))
        }
    });
    engine.register_fn("assert", |cond: bool, message: Dynamic| -> RResult<()> {
        if cond {
            Ok(())
        } else {
            Err(fail(format!("assertion failed: {message}")))
        }
    });
    let r = Arc::clone(rt);
    engine.register_fn("partition", move |groups: Array| -> RResult<()> {
        let groups: Vec<Vec<String>> = groups
            .iter()
            .map(|g| group(&r, g))
            .collect::<RResult<_>>()?;
        let label = format!(
            "partition {}",
            groups
                .iter()
                .map(|g| format!("[{}]", g.join(",")))
                .collect::<Vec<_>>()
                .join(" ")
        );
        r.action(None, &label, || r.fault(&Fault::Partition { groups }))
    });
    let r = Arc::clone(rt);
    engine.register_fn("heal", move || -> RResult<()> {
        r.action(None, "heal", || r.fault(&Fault::Heal))
    });
    let r = Arc::clone(rt);
    engine.register_fn("link", move |a: Dynamic, b: Dynamic| -> RResult<Link> {
        let (a, b) = (r.node_arg(&a)?, r.node_arg(&b)?);
        if a.name == b.name {
            return Err(fail(format!(
                "link needs two different nodes, got {} twice",
                a.name
            )));
        }
        Ok(Link {
            a: a.name,
            b: b.name,
            rt: Arc::clone(&r),
        })
    });
    let r = Arc::clone(rt);
    engine.register_fn("snapshot", move |name: &str| -> RResult<()> {
        r.action(None, &format!("snapshot {name}"), || {
            r.cluster
                .snapshot(name, false)
                .map(drop)
                .map_err(|e| fail(e.to_string()))
        })
    });
    let r = Arc::clone(rt);
    engine.register_fn("restore", move |name: &str| -> RResult<()> {
        r.action(None, &format!("restore {name}"), || {
            r.cluster
                .snapshot(name, true)
                .map(drop)
                .map_err(|e| fail(e.to_string()))
        })
    });
    let r = Arc::clone(rt);
    engine.register_fn("fault_history", move || -> RResult<Array> {
        let events = r.cluster.history().map_err(|e| fail(e.to_string()))?;
        Ok(events
            .into_iter()
            .map(|e| Dynamic::from(e.change))
            .collect())
    });
}
