//! Running clusters: the pieces that own processes and sockets on the host.
//!
//! Today this is the user-space virtual switch ([`switch`]) that connects
//! nodes into L2 segments without root and applies link faults. The
//! backends and the per-cluster supervisor build on it.

pub mod switch;
