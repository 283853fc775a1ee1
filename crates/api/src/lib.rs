//! The supervisor's JSON API, its client, and where a cluster's files are.
//!
//! This is what a client of a running cluster needs, and nothing of what
//! runs one: the CLI's verbs and the test driver depend on it, the
//! supervisor (`testbed-runtime`) serves it. It links no backend (no
//! libvirt, no event loop, no XML), so a client builds without them.
//!
//! One unix stream socket per cluster (`api.sock` in the state directory,
//! reachable by its owner only; [`state`] says where everything is). Each
//! message is one line of JSON. A client sends a [`Request`] and reads
//! [`Reply`] lines: most requests get one reply; `watch` and `exec` stream
//! several and end with a terminal one (`settled`, `exited` or `error`);
//! `forward` answers `ok` and then the connection carries the raw bytes of
//! the TCP connection to the guest. During an `exec` with `stdin`, the
//! client sends [`Input`] lines. Faults carry the values of the switch's
//! fault table ([`fault`]).
//!
//! The CLI and the test driver are both clients; anything they can do, a
//! user's script can do with `socat` and JSON.
//!
//! Invariants:
//! - Every message is exactly one line of at most [`MAX_LINE`] bytes; a
//!   malformed line is [`ApiError::Protocol`] and a longer one
//!   [`ApiError::LineTooLong`] (read no further than the limit), never a
//!   panic.
//! - No dependency on `testbed-runtime` or on a backend's libraries: the
//!   runtime re-exports this crate (`testbed_runtime::api`, and the moved
//!   items in its `switch` and `state`), not the other way round.

pub mod fault;
pub mod state;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use testbed_proto::{ExecRequest, ExitStatus};
use thiserror::Error;

pub use fault::{FaultEvent, FaultState, LinkChange, LinkRule, SavedLink};

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("the cluster is not running (no supervisor answers at {})", .socket.display())]
    NotRunning { socket: PathBuf },
    #[error("supervisor connection: {0}")]
    Io(#[from] io::Error),
    #[error("supervisor sent an invalid reply: {0}")]
    Protocol(String),
    #[error("the supervisor closed the connection")]
    Closed,
    #[error("a message line is longer than the API's limit of {} MiB", .limit >> 20)]
    LineTooLong { limit: usize },
}

/// The longest message line, its newline included. `put` and `get` carry a
/// whole file base64-encoded in one line, so this bounds the files they
/// copy to [`MAX_FILE`]; the limit is what a reader of untrusted lines (the
/// supervisor) may buffer per connection.
pub const MAX_LINE: usize = 256 << 20;

/// The largest file `put` and `get` carry: its base64 text (4 bytes per 3)
/// and the rest of the message fit in [`MAX_LINE`].
pub const MAX_FILE: usize = 191 << 20;

// A file of MAX_FILE bytes in base64 leaves a MiB for the rest of its line.
const _: () = assert!(MAX_FILE.div_ceil(3) * 4 + (1 << 20) <= MAX_LINE);

/// What a node can be asked to do with its power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// Boot a stopped node again (and activate it).
    Start,
    /// ACPI power button; the guest shuts down cleanly.
    Shutdown,
    /// Instant power loss.
    Crash,
    /// Clean reboot through the agent (QEMU is quit if the node does not
    /// stop in time); the node boots and is activated again.
    Reboot,
    /// Freeze the VM's CPUs.
    Pause,
    Resume,
}

/// A fault applied in the virtual switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    Block {
        node: String,
    },
    Unblock {
        node: String,
    },
    Partition {
        groups: Vec<Vec<String>>,
    },
    Heal,
    /// Changes the rule of the link between `a` and `b` (both directions);
    /// the reply is `link` with the resulting rule.
    Link {
        a: String,
        b: String,
        #[serde(flatten)]
        change: LinkChange,
    },
}

/// What a `wait` request waits for inside a node (through its agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum WaitFor {
    /// A systemd unit is active; fails at once if it fails.
    Unit { unit: String },
    /// A TCP connection to this port on 127.0.0.1 succeeds.
    Port { port: u16 },
    /// The path exists.
    File { path: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Streams `node` replies as nodes change state, then `settled` once
    /// every node is ready or failed.
    Watch,
    Exec {
        node: String,
        exec: ExecRequest,
    },
    Put {
        node: String,
        path: String,
        mode: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        #[serde(with = "testbed_proto::b64")]
        data: Vec<u8>,
    },
    Get {
        node: String,
        path: String,
    },
    /// After the `ok` reply the connection is the TCP stream.
    Forward {
        node: String,
        port: u16,
    },
    Power {
        node: String,
        action: PowerAction,
    },
    /// Waits inside the node; `ok`, or `error` with the reason (for a
    /// failed unit, its journal tail).
    Wait {
        node: String,
        #[serde(flatten)]
        what: WaitFor,
        timeout_ms: u64,
    },
    Fault(Fault),
    /// The switch's fault history.
    History,
    /// Saves the whole running cluster as the snapshot `name` of its
    /// composition (replacing one of that name); `snapshot` with its
    /// description, once every node is ready again.
    Snapshot {
        name: String,
    },
    /// Brings every node back to the snapshot `name`, saved from this same
    /// `up` of the cluster; `snapshot` once every node is ready.
    Restore {
        name: String,
    },
    /// Stops every node and the supervisor; the state directory is removed
    /// before the reply.
    Down,
}

/// A snapshot of a whole cluster (`docs/snapshots.md`): its description
/// (`meta.json` in its folder), the reply to a save or a restore, and what
/// `testbed snapshot ls` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub cluster: String,
    /// The composition it was saved from.
    pub composition: PathBuf,
    pub backend: String,
    /// When it was saved (seconds since the epoch).
    pub created_unix: u64,
    /// How long the save took; in a restore's reply, the restore.
    pub took_ms: u64,
    pub nodes: Vec<SavedNode>,
    /// The switch's faults when it was saved; in force again after a
    /// restore.
    pub faults: FaultState,
    /// Its folder.
    #[serde(default)]
    pub path: PathBuf,
}

impl SnapshotInfo {
    /// The bytes its nodes' saved machines take.
    pub fn bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.bytes).sum()
    }
}

/// One node in a [`SnapshotInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNode {
    pub name: String,
    pub role: String,
    /// Whether its machine ran (and so was saved); a stopped node stays
    /// stopped after a restore.
    pub running: bool,
    /// The size of its saved machine (RAM and devices).
    pub bytes: u64,
}

/// Client-to-supervisor lines during an `exec` with stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    Stdin {
        #[serde(with = "testbed_proto::b64")]
        data: Vec<u8>,
    },
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// QEMU is starting.
    Starting,
    /// The VM runs; its agent has not answered yet.
    Booting,
    /// The agent applies the node's identity and starts its services.
    Activating,
    Ready,
    /// Boot or activation failed; see `message`.
    Failed,
    /// Powered off (shut down or crashed).
    Stopped,
    Paused,
}

impl NodeState {
    /// Whether `up` stops waiting for the node.
    pub fn settled(self) -> bool {
        matches!(
            self,
            NodeState::Ready | NodeState::Failed | NodeState::Stopped
        )
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            NodeState::Starting => "starting",
            NodeState::Booting => "booting",
            NodeState::Activating => "activating",
            NodeState::Ready => "ready",
            NodeState::Failed => "failed",
            NodeState::Stopped => "stopped",
            NodeState::Paused => "paused",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    pub state: NodeState,
    /// `10.44.0.11/24 (lan)` style, one per NIC.
    pub addresses: Vec<String>,
    /// QEMU's pid while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Since QEMU started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Why the node failed or stopped; for `failed` it names the unit and
    /// holds its journal tail or the console's tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The role snapshot (its key's first 12 digits) this boot started
    /// from; absent when the machine booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// What the user should know about this boot although it worked (a
    /// snapshot that could not be made or restored, so the node booted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    pub console_log: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub composition: PathBuf,
    pub state_dir: PathBuf,
    pub backend: String,
    pub accel: String,
    pub supervisor_pid: u32,
    /// Whether the nodes have an interactive serial console (`testbed
    /// console`); every backend has the console log (`testbed logs`).
    #[serde(default)]
    pub console: bool,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Status(ClusterStatus),
    Node(NodeStatus),
    Settled(ClusterStatus),
    Stdout {
        #[serde(with = "testbed_proto::b64")]
        data: Vec<u8>,
    },
    Stderr {
        #[serde(with = "testbed_proto::b64")]
        data: Vec<u8>,
    },
    Exited {
        status: ExitStatus,
    },
    File {
        mode: u32,
        #[serde(with = "testbed_proto::b64")]
        data: Vec<u8>,
    },
    History {
        events: Vec<FaultEvent>,
    },
    /// A cluster snapshot saved or restored.
    Snapshot(SnapshotInfo),
    /// A link's rule after a `link` fault.
    Link {
        rule: LinkRule,
    },
    Ok,
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// The backend cannot do this at all (`pause` where nodes cannot be
        /// frozen, say), as opposed to: it failed this time.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unsupported: bool,
    },
}

/// Writes one JSON line; a message longer than [`MAX_LINE`] is refused
/// before anything is written (the reader would refuse it).
pub fn write_line<W: Write, T: Serialize>(w: &mut W, message: &T) -> io::Result<()> {
    w.write_all(&encode(message, MAX_LINE)?)?;
    w.flush()
}

/// `message` as a line of at most `limit` bytes.
fn encode<T: Serialize>(message: &T, limit: usize) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
    line.push(b'\n');
    if line.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a message of {} MiB is more than the API's limit of {} MiB (files over {} MiB go through `exec -i`)",
                line.len().div_ceil(1 << 20),
                limit >> 20,
                MAX_FILE >> 20
            ),
        ));
    }
    Ok(line)
}

/// Reads one JSON line; `None` at end of stream. A line (or the text
/// before the end of the stream) of more than [`MAX_LINE`] bytes is
/// [`ApiError::LineTooLong`], and no more than that is read of it.
pub fn read_line<R: BufRead, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<Option<T>, ApiError> {
    let mut line = Vec::new();
    // One byte over the limit tells a line of exactly the limit from a
    // longer one.
    if io::Read::take(&mut *r, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(ApiError::LineTooLong { limit: MAX_LINE });
    }
    serde_json::from_slice(&line).map(Some).map_err(|e| {
        ApiError::Protocol(format!(
            "{} in {}",
            shortened(&e.to_string()),
            preview(&line)
        ))
    })
}

/// A parser's message cut to a few hundred characters: serde quotes the
/// offending value whole (an unknown `op` of a MiB, say).
fn shortened(message: &str) -> String {
    const SHOWN: usize = 300;
    match message.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}… ({} bytes)", &message[..cut], message.len()),
        None => message.to_owned(),
    }
}

/// A malformed line as an error message shows it: its start, quoted, so
/// that a huge line does not become a huge message.
fn preview(line: &[u8]) -> String {
    const SHOWN: usize = 200;
    let text = String::from_utf8_lossy(&line[..line.len().min(SHOWN)]);
    let text = text.trim_end();
    if line.len() > SHOWN {
        format!("{text:?}… ({} bytes)", line.len())
    } else {
        format!("{text:?}")
    }
}

/// A connection to a supervisor.
#[derive(Debug)]
pub struct ApiClient {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ApiClient {
    /// Connects to the API socket `socket`.
    pub fn connect(socket: &Path) -> Result<ApiClient, ApiError> {
        let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ApiError::NotRunning {
                socket: socket.to_path_buf(),
            },
            _ => ApiError::Io(e),
        })?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(ApiClient {
            writer: stream,
            reader,
        })
    }

    /// The connection's write side, e.g. to send [`Input`] lines from
    /// another thread while this one reads replies.
    pub fn writer(&self) -> &UnixStream {
        &self.writer
    }

    /// Bounds every later read (None: wait forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ApiError> {
        self.writer.set_read_timeout(timeout)?;
        Ok(())
    }

    pub fn send(&mut self, request: &Request) -> Result<(), ApiError> {
        write_line(&mut self.writer, request)?;
        Ok(())
    }

    pub fn send_input(&mut self, input: &Input) -> Result<(), ApiError> {
        write_line(&mut self.writer, input)?;
        Ok(())
    }

    /// The next reply; `Closed` if the supervisor hung up.
    pub fn recv(&mut self) -> Result<Reply, ApiError> {
        read_line(&mut self.reader)?.ok_or(ApiError::Closed)
    }

    /// Sends `request` and reads its one reply.
    pub fn call(&mut self, request: &Request) -> Result<Reply, ApiError> {
        self.send(request)?;
        self.recv()
    }

    /// The raw connection (after a `forward`'s `ok`): bytes the reader had
    /// already buffered come first.
    pub fn into_stream(self) -> (Vec<u8>, UnixStream) {
        let buffered = self.reader.buffer().to_vec();
        (buffered, self.writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_one_json_line_each() {
        let requests = vec![
            Request::Status,
            Request::Exec {
                node: "ctl".into(),
                exec: ExecRequest::argv(["true"]),
            },
            Request::Put {
                node: "ctl".into(),
                path: "/x".into(),
                mode: 0o644,
                owner: None,
                data: b"\x00\xffhi".to_vec(),
            },
            Request::Fault(Fault::Partition {
                groups: vec![vec!["a".into()], vec!["b".into()]],
            }),
            Request::Power {
                node: "n".into(),
                action: PowerAction::Crash,
            },
            Request::Wait {
                node: "n".into(),
                what: WaitFor::Unit {
                    unit: "slurmd".into(),
                },
                timeout_ms: 1000,
            },
            Request::Fault(Fault::Link {
                a: "a".into(),
                b: "b".into(),
                change: LinkChange {
                    delay_ms: Some(50.0),
                    ..LinkChange::default()
                },
            }),
        ];
        for request in requests {
            let mut buf = Vec::new();
            write_line(&mut buf, &request).unwrap();
            assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
            let back: Request = read_line(&mut &buf[..]).unwrap().unwrap();
            assert_eq!(back, request);
        }
        let text = serde_json::to_string(&Request::Status).unwrap();
        assert_eq!(text, r#"{"op":"status"}"#);
        let reply = serde_json::to_string(&Reply::Error {
            message: "no".into(),
            node: Some("ctl".into()),
            unsupported: false,
        })
        .unwrap();
        assert_eq!(reply, r#"{"type":"error","message":"no","node":"ctl"}"#);
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        let err = read_line::<_, Request>(&mut &b"{\"op\":\"fly\"}\n"[..]).unwrap_err();
        assert!(matches!(err, ApiError::Protocol(_)), "{err}");
        assert!(read_line::<_, Request>(&mut &b""[..]).unwrap().is_none());
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_reading_the_rest() {
        // An endless line: the reader stops one byte past the limit.
        let mut endless = BufReader::new(io::repeat(b'x'));
        let err = read_line::<_, Request>(&mut endless).unwrap_err();
        assert!(
            matches!(err, ApiError::LineTooLong { limit: MAX_LINE }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "a message line is longer than the API's limit of 256 MiB"
        );
        // A line of exactly the limit is read (and here, is no JSON).
        let mut exact = vec![b' '; MAX_LINE - 1];
        exact.push(b'\n');
        let err = read_line::<_, Request>(&mut &exact[..]).unwrap_err();
        assert!(matches!(err, ApiError::Protocol(_)), "{err}");
    }

    #[test]
    fn a_malformed_line_is_quoted_short_and_may_be_any_bytes() {
        let mut long = b"{\"op\":".to_vec();
        long.extend(vec![b'9'; 10_000]);
        let err = read_line::<_, Request>(&mut &long[..]).unwrap_err();
        let message = err.to_string();
        assert!(message.len() < 500, "{message}");
        assert!(message.ends_with("… (10006 bytes)"), "{message}");
        let err = read_line::<_, Request>(&mut &b"\xff\xfe{\n"[..]).unwrap_err();
        assert!(matches!(err, ApiError::Protocol(_)), "{err}");
        // The parser's own message quotes an unknown `op` whole: cut too
        // (found by the API's fuzzing).
        let mut unknown = b"{\"op\":\"".to_vec();
        unknown.extend(vec![b'x'; 100_000]);
        unknown.extend(b"\"}\n");
        let message = read_line::<_, Request>(&mut &unknown[..])
            .unwrap_err()
            .to_string();
        assert!(message.len() < 1000, "{} bytes", message.len());
        assert!(message.contains("unknown variant"), "{message}");
    }

    #[test]
    fn a_message_over_the_limit_is_not_sent() {
        // Quotes and a newline make it one byte too long. (A smaller limit
        // than the real one: serializing 256 MiB takes seconds unoptimized.)
        let limit = 2 << 20;
        let text = "x".repeat(limit - 2);
        let err = encode(&text, limit).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a message of 3 MiB is more than the API's limit of 2 MiB (files over 191 MiB go through `exec -i`)"
        );
        assert_eq!(encode(&&text[1..], limit).unwrap().len(), limit);
    }

    #[test]
    fn connecting_to_nothing_says_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = ApiClient::connect(&dir.path().join("api.sock")).unwrap_err();
        assert!(matches!(err, ApiError::NotRunning { .. }), "{err}");
    }
}
