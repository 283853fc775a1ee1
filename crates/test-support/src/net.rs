//! Ports.

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that nothing listens on: bound by the kernel's
/// choice, then released. Something else may take it before the caller
/// does; good enough for tests.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits (at most `within`) until `child`, a server just started, accepts
/// connections on `port` of 127.0.0.1; false if it exited or did not in
/// time.
pub fn listening(child: &mut std::process::Child, port: u16, within: std::time::Duration) -> bool {
    let mut exited = false;
    let up = crate::poll::eventually(within, || {
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() || {
            exited = child.try_wait().ok().flatten().is_some();
            exited
        }
    });
    up && !exited
}
