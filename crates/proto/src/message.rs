//! The control messages, serialized as JSON in `Control` frames.
//!
//! The host opens a channel by sending a [`Request`] on an unused channel id;
//! the agent answers with zero or more non-terminal [`Reply`]s and data
//! frames, and exactly one terminal reply ([`Reply::is_terminal`]), after
//! which the channel is closed and its id is never reused in the session.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks. Bumped on any incompatible change
/// to frames or messages; both sides of a session must agree on it.
pub const PROTOCOL_VERSION: u32 = 1;

/// The first message of a session, on channel 0, from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the host can speak.
    pub protocols: Vec<u32>,
    /// The host software and its version, for messages.
    pub software: String,
}

/// The agent's answer to [`Hello`], on channel 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "hello", rename_all = "snake_case")]
pub enum HelloReply {
    Welcome {
        protocol: u32,
        agent: String,
    },
    /// No common version: the agent lists what it speaks. The agent keeps
    /// reading, so a host may retry with another hello.
    Rejected {
        protocols: Vec<u32>,
        agent: String,
        message: String,
    },
}

/// A request, sent by the host on a new channel, or `Cancel` on an open one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Exec(ExecRequest),
    Put(PutRequest),
    Get(GetRequest),
    WaitUnit(WaitUnitRequest),
    WaitPort(WaitPortRequest),
    WaitFile(WaitFileRequest),
    Forward(ForwardRequest),
    State,
    Activate(Box<Activation>),
    /// Abort the request running on this channel: kill an exec's process
    /// group, drop a partial upload, close a forwarded connection. The agent
    /// still ends the channel with a terminal reply. Ignored on a channel
    /// that is not open.
    Cancel,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Executed directly, `argv[0]` looked up in `PATH`.
    Argv(Vec<String>),
    /// Passed to `sh -c`.
    Shell(String),
}

impl fmt::Display for Command {
    /// A short form for error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Command::Argv(argv) => argv.join(" "),
            Command::Shell(script) => script.clone(),
        };
        let mut short: String = text.chars().take(60).collect();
        if short.len() < text.len() {
            short.push('…');
        }
        write!(f, "`{short}`")
    }
}

/// Run a command. The agent replies `Started`, then `Data` (stdout) and
/// `Stderr` frames, then a terminal `Exited`. If `stdin` is set, the host's
/// `Data` frames on the channel are its standard input and `Eof` closes it;
/// otherwise standard input is `/dev/null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub command: Command,
    /// Added to (and overriding) the agent's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// After this long, the agent kills the command's process group and
    /// reports `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub stdin: bool,
}

impl ExecRequest {
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Command::Argv(argv.into_iter().map(Into::into).collect()))
    }

    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(Command::Shell(script.into()))
    }

    fn new(command: Command) -> Self {
        ExecRequest {
            command,
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            stdin: false,
        }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(millis(timeout));
        self
    }

    /// Keep standard input open for [`crate::Exec::write_stdin`].
    pub fn with_stdin(mut self) -> Self {
        self.stdin = true;
        self
    }
}

/// Upload a file: the host sends `Data` frames and `Eof`; the agent writes
/// them to a temporary file beside `path`, applies owner and mode, renames
/// it into place and replies `Done`. A `Cancel` discards the upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutRequest {
    pub path: String,
    pub mode: u32,
    /// `user`, `user:group`, or numeric ids; `None` keeps the agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Create missing parent directories (mode 0755).
    #[serde(default = "yes")]
    pub create_dirs: bool,
}

impl PutRequest {
    pub fn new(path: impl Into<String>, mode: u32) -> Self {
        PutRequest {
            path: path.into(),
            mode,
            owner: None,
            create_dirs: true,
        }
    }

    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
}

/// Download a file: the agent replies `FileInfo`, `Data` frames, then `Done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetRequest {
    pub path: String,
}

/// Wait until a systemd unit reaches `state` (`ActiveState`, normally
/// `active`). Fails at once, with the unit's journal tail, if the unit
/// enters `failed` while waiting for another state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitUnitRequest {
    pub unit: String,
    #[serde(default = "active")]
    pub state: String,
    pub timeout_ms: u64,
}

/// Wait until a TCP connection to `host:port` inside the guest succeeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitPortRequest {
    pub port: u16,
    #[serde(default = "localhost")]
    pub host: String,
    pub timeout_ms: u64,
}

/// Wait until a path exists inside the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitFileRequest {
    pub path: String,
    pub timeout_ms: u64,
}

/// Connect to `host:port` inside the guest and relay bytes: the agent
/// replies `Connected`, then both sides send `Data` and `Eof` (half-close)
/// frames; the agent ends the channel with `Closed` once both directions are
/// done (or after a `Cancel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub port: u16,
    #[serde(default = "localhost")]
    pub host: String,
    #[serde(default = "connect_timeout")]
    pub connect_timeout_ms: u64,
}

/// A message from the agent on a request's channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Started { pid: u32 },
    Exited(ExitStatus),
    FileInfo(FileInfo),
    Connected,
    Done,
    Closed,
    State(AgentState),
    Activated(ActivationReport),
    ServiceFailed(ServiceFailure),
    Error(RemoteError),
}

impl Reply {
    /// Whether this reply ends its channel.
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            Reply::Started { .. } | Reply::FileInfo(_) | Reply::Connected
        )
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, if the command exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The agent killed it because its timeout expired.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.timed_out, self.code, self.signal) {
            (true, _, _) => write!(f, "killed after its timeout"),
            (false, Some(code), _) => write!(f, "exit status {code}"),
            (false, None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (false, None, None) => write!(f, "unknown exit status"),
        }
    }
}

/// Metadata sent before a file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub size: u64,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A snapshot of the guest, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub agent: String,
    pub protocol: u32,
    pub hostname: String,
    pub uptime_secs: f64,
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    pub activation: ActivationStatus,
    /// `systemctl is-system-running`, when systemd is the init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ActivationStatus {
    Pending,
    Activating,
    Ready,
    Failed { message: String },
}

/// Why a request failed inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub kind: ErrorKind,
    /// Lowercase, names the file, unit or port concerned.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    TimedOut,
    ConnectionRefused,
    InvalidRequest,
    Io,
    Other,
}

/// The node identity applied at boot; see `docs/agent-protocol.md`.
///
/// Everything that depends on the topology lives here rather than in the
/// image, so that one image serves every node of a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub hostname: String,
    /// Addresses per NIC, matched by MAC address.
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    /// The whole text of `/etc/hosts`, written verbatim.
    pub hosts: String,
    /// Files rendered from templates.
    #[serde(default)]
    pub files: Vec<FileWrite>,
    /// Per-cluster secrets. Written like `files`, never logged.
    #[serde(default)]
    pub secrets: Vec<FileWrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshConfig>,
    /// Units to start, in this order, once everything above is in place.
    #[serde(default)]
    pub services: Vec<String>,
    /// How long each service may take to become active.
    #[serde(default = "service_timeout")]
    pub service_timeout_ms: u64,
    /// Set when the node was started from a memory snapshot rather than
    /// booted: what makes the clone a machine of its own, applied before
    /// anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
}

/// What a node restored from a role's memory snapshot must change to be
/// distinct from every other clone of it (`docs/snapshots.md`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The new `/etc/machine-id`: 32 lowercase hex digits.
    pub machine_id: String,
    /// NICs to give their plan's address: the snapshot's MAC, then the
    /// node's.
    #[serde(default)]
    pub macs: Vec<MacChange>,
    /// Bytes from the host's RNG, mixed into the guest's.
    #[serde(with = "crate::b64")]
    pub entropy: Vec<u8>,
    /// The host's clock (ms since the epoch) when the activation was sent:
    /// the guest's clock still says when the snapshot was taken.
    pub clock_unix_ms: u64,
}

impl fmt::Debug for Identity {
    /// Omits the entropy.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("machine_id", &self.machine_id)
            .field("macs", &self.macs)
            .field("entropy", &format_args!("<{} bytes>", self.entropy.len()))
            .field("clock_unix_ms", &self.clock_unix_ms)
            .finish()
    }
}

/// One NIC's address change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacChange {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceConfig {
    /// `aa:bb:cc:dd:ee:ff`, compared case-insensitively.
    pub mac: String,
    /// CIDR addresses, e.g. `10.44.0.2/24`.
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The composition's network name, for messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// A file to write atomically (temporary file, then rename).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWrite {
    pub path: String,
    #[serde(with = "crate::b64")]
    pub contents: Vec<u8>,
    /// `user:group`, `user`, or numeric ids.
    #[serde(default = "root_owner")]
    pub owner: String,
    pub mode: u32,
}

impl fmt::Debug for FileWrite {
    /// Omits the contents: they may be a secret, and debug output ends up in
    /// logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileWrite")
            .field("path", &self.path)
            .field("contents", &format_args!("<{} bytes>", self.contents.len()))
            .field("owner", &self.owner)
            .field("mode", &format_args!("{:04o}", self.mode))
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshConfig {
    /// Installed as `/etc/ssh/ssh_host_<algorithm>_key{,.pub}` when the
    /// guest has `/etc/ssh`.
    #[serde(default)]
    pub host_keys: Vec<SshHostKey>,
    /// Lines of `/root/.ssh/authorized_keys`.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
}

impl fmt::Debug for SshConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithms: Vec<&str> = self
            .host_keys
            .iter()
            .map(|k| k.algorithm.as_str())
            .collect();
        f.debug_struct("SshConfig")
            .field("host_keys", &algorithms)
            .field("authorized_keys", &self.authorized_keys)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshHostKey {
    /// `ed25519`, `ecdsa` or `rsa`.
    pub algorithm: String,
    /// OpenSSH private key text.
    pub private_key: String,
    /// The `.pub` line.
    pub public_key: String,
}

impl fmt::Debug for SshHostKey {
    /// Omits the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshHostKey")
            .field("algorithm", &self.algorithm)
            .field("public_key", &self.public_key)
            .finish()
    }
}

/// What activation did, once every service is active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationReport {
    /// Files written, in order (secrets included, by path only).
    pub files: Vec<String>,
    /// Units started and seen active.
    pub services: Vec<String>,
    /// System steps not performed because the agent runs under a root
    /// prefix (tests) rather than on the guest's real root.
    #[serde(default)]
    pub skipped: Vec<String>,
    pub elapsed_ms: u64,
}

/// A unit that did not become active during activation or `wait_unit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFailure {
    pub unit: String,
    /// Its `ActiveState` (and `SubState`) when the agent gave up.
    pub state: String,
    /// `journalctl -u UNIT -n 50` output.
    pub journal: String,
}

/// A duration in whole milliseconds, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn yes() -> bool {
    true
}

fn active() -> String {
    "active".to_owned()
}

fn localhost() -> String {
    "127.0.0.1".to_owned()
}

fn connect_timeout() -> u64 {
    10_000
}

fn service_timeout() -> u64 {
    90_000
}

fn root_owner() -> String {
    "root:root".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_stable() {
        let request = Request::Exec(ExecRequest::shell("echo hi").env("A", "1"));
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"op":"exec","command":{"shell":"echo hi"},"env":{"A":"1"},"stdin":false}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Cancel).unwrap(),
            r#"{"op":"cancel"}"#
        );
        let reply = Reply::Exited(ExitStatus {
            code: Some(3),
            signal: None,
            timed_out: false,
        });
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"reply":"exited","code":3,"signal":null,"timed_out":false}"#
        );
        let file = FileWrite {
            path: "/k".into(),
            contents: b"secret".to_vec(),
            owner: "root:root".into(),
            mode: 0o400,
        };
        let json = serde_json::to_string(&file).unwrap();
        assert_eq!(
            json,
            r#"{"path":"/k","contents":"c2VjcmV0","owner":"root:root","mode":256}"#
        );
        assert!(!format!("{file:?}").contains("secret"));
        assert_eq!(serde_json::from_str::<FileWrite>(&json).unwrap(), file);
    }
}
