//! Running clusters: the pieces that own processes and sockets on the host.
//!
//! - [`switch`]: the user-space virtual switch that connects nodes into L2
//!   segments without root and applies link faults.
//! - [`accel`]: whether QEMU can use KVM here or must emulate (TCG), and why.
//! - [`qmp`]: a blocking client for QEMU's control socket (QMP).
//!
//! The backends and the per-cluster supervisor build on these.

pub mod accel;
pub mod qmp;
pub mod switch;
