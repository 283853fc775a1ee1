//! Where images put the agent: its binary and the systemd unit that starts
//! it in VMs (on the virtio-serial port [`crate::VIRTIO_PORT_NAME`]).
//!
//! The image builder installs both and the agent prints its unit
//! (`--unit`); neither needs the other's crate for that, so the agent's
//! place in a guest is defined here, beside the protocol it serves there.

/// The systemd unit that starts the agent in VM images (the file
/// `crates/proto/testbed-agent.service`).
pub const SERVICE_UNIT: &str = include_str!("../testbed-agent.service");

/// Where images install the agent binary; the unit's `ExecStart` uses it.
pub const INSTALL_PATH: &str = "/usr/local/bin/testbed-agent";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_starts_the_installed_agent_on_the_agent_port() {
        let exec = SERVICE_UNIT
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        assert_eq!(
            exec,
            format!(
                "{INSTALL_PATH} --port /dev/virtio-ports/{}",
                crate::VIRTIO_PORT_NAME
            )
        );
    }
}
