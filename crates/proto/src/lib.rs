//! The protocol between the testbed host and the guest agent, and its
//! host-side client.
//!
//! Both sides of the channel depend on this crate, so there is exactly one
//! definition of the wire format. The transport is any byte stream (a
//! virtio-serial port for VMs, `exec -i` stdio for containers, an SSH
//! session for remote hosts); [`frame`] cuts it into length-prefixed frames
//! tagged with a channel id, [`message`] defines the JSON control messages,
//! and [`Client`] multiplexes concurrent requests over one stream. The full
//! description, with the channel lifecycle and the activation payload, is in
//! `docs/agent-protocol.md`.
//! [`install`] says where images put the agent and the systemd unit that
//! starts it, for the image builder and the agent alike.
//!
//! Invariants:
//! - No input panics: a malformed frame or message is an error value
//!   (fuzzed in `tests/fuzz.rs`), and frames are bounded by
//!   [`frame::MAX_PAYLOAD`].
//! - A session starts with [`frame::MAGIC`] and a hello on channel 0; a
//!   version mismatch is reported with both sides' versions.
//! - Every request channel ends with exactly one terminal reply.
//! - This crate does no printing and spawns no process; the client's only
//!   thread is the stream reader.

pub mod b64;
pub mod client;
pub mod frame;
pub mod install;
pub mod message;

pub use client::{
    AgentInfo, Client, ClientError, ClientOptions, Closed, Exec, ExecEvent, ExecStdin, Forward,
    ForwardReader, ForwardWriter, Output,
};
pub use message::*;

/// The name of the virtio-serial port the agent listens on in VMs; the
/// guest sees it as `/dev/virtio-ports/org.testbed.agent`.
pub const VIRTIO_PORT_NAME: &str = "org.testbed.agent";
