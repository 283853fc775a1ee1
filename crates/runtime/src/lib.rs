//! Running clusters: the pieces that own processes and sockets on the host.
//!
//! - [`switch`]: the user-space virtual switch that connects nodes into L2
//!   segments without root and applies link faults.
//! - [`accel`]: whether QEMU can use KVM here or must emulate (TCG), and why.
//! - [`qemu`]: a VM node's QEMU command line and its running process, which
//!   dies with the thread that spawned it.
//! - [`qmp`]: a blocking client for QEMU's control socket (QMP).
//! - [`snapshot`]: role snapshots: a role's VM saved once booted, and
//!   every node of the role restored from it.
//! - [`saved`]: snapshots of whole running clusters, kept in the store.
//! - [`libvirt`]: the libvirt backend's host layer: domain XML, image
//!   upload to a storage pool, domains started and found by metadata.
//!
//! - [`spec`]: the cluster spec the supervisor runs, made by `up` from a
//!   plan and built images ([`keys`] makes its secrets and SSH keys).
//! - [`state`]: a running cluster's state directory, and how `down` cleans
//!   it up when the supervisor is gone.
//! - [`supervisor`]: the per-cluster process that owns the VMs, the switch
//!   and the agent channels, and serves the JSON [`api`] (the
//!   `testbed-api` crate, re-exported).

pub mod accel;
pub mod backend;
pub mod container;
pub mod keys;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod qemu;
pub mod qmp;
pub mod saved;
pub mod snapshot;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod switch;

/// The supervisor's JSON API and its client, now the `testbed-api` crate
/// (which clients use directly); re-exported so `crate::api::…` and
/// `testbed_runtime::api::…` keep working.
pub use testbed_api as api;
