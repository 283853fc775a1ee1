//! Running clusters: the pieces that own processes and sockets on the host.
//!
//! - [`switch`]: the user-space virtual switch that connects nodes into L2
//!   segments without root and applies link faults.
//! - [`accel`]: whether QEMU can use KVM here or must emulate (TCG), and why.
//! - [`qemu`]: a VM node's QEMU command line and its running process, which
//!   dies with the thread that spawned it.
//! - [`qmp`]: a blocking client for QEMU's control socket (QMP).
//!
//! The per-cluster supervisor builds on these.

pub mod accel;
pub mod qemu;
pub mod qmp;
pub mod switch;
