//! The testbed guest agent.
//!
//! It runs inside every node (started early by systemd in VMs, through
//! `exec -i` in containers, over SSH on remote hosts) and serves the
//! protocol of `testbed-proto` on one byte stream: run commands, move
//! files, wait for units, ports and files, forward TCP connections, report
//! state, and apply the node's identity at activation.
//!
//! Layout: [`session`] reads frames and routes them to one thread per
//! request channel; `handlers` implements the requests; [`activate`]
//! writes the node's files under a root prefix and calls [`system`], the
//! thin layer that changes the running system (hostname, links and
//! addresses over rtnetlink (`netlink`, `ip` where that fails),
//! `systemctl`, and `sdbus`: unit states asked of systemd over its private
//! socket, without starting a process).
//!
//! Invariants:
//! - The agent never listens on a network socket: only whoever holds the
//!   other end of its channel can reach it.
//! - No frame or message from the host makes it panic; a malformed frame is
//!   logged and skipped, or ends the session if the stream is out of sync.
//! - Every request ends with exactly one terminal reply, and nothing is sent
//!   on a channel after it.
//! - Commands run in their own process group; a timeout, a cancel or the end
//!   of the session kills the whole group.
//! - Files are written atomically (temporary file, owner and mode, rename).

pub mod activate;
mod fsutil;
mod handlers;
mod log;
mod netlink;
mod sdbus;
pub mod session;
pub mod system;

use std::path::PathBuf;
use std::sync::Mutex;

use testbed_proto::ActivationStatus;

/// The systemd unit that starts the agent in VM images, and where images
/// install the agent binary (defined in `testbed-proto`, so the image
/// builder needs no agent crate).
pub use log::quiet_info;
pub use testbed_proto::install::{INSTALL_PATH, SERVICE_UNIT};

/// State shared by every session of one agent process.
#[derive(Debug)]
pub struct Agent {
    /// Where activation writes files: `/` in a guest, a temporary folder in
    /// tests.
    pub root: PathBuf,
    /// Whether activation changes the running system (hostname, addresses,
    /// services). Off under a root prefix.
    pub mutate_system: bool,
    activation: Mutex<ActivationStatus>,
}

impl Agent {
    pub fn new(root: PathBuf) -> Agent {
        let mutate_system = root == std::path::Path::new("/");
        Agent {
            root,
            mutate_system,
            activation: Mutex::new(ActivationStatus::Pending),
        }
    }

    pub fn activation_status(&self) -> ActivationStatus {
        self.activation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_activation_status(&self, status: ActivationStatus) {
        *self.activation.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}
