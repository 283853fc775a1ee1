//! The backends: what runs a cluster's nodes (QEMU processes, libvirt
//! domains, containers), behind one interface, and each backend's policy.

use std::time::Duration;

use crate::accel::Accel;
use crate::spec::BackendSpec;

/// How long a node of `backend` may take to boot (to its agent's hello) and
/// to activate each of its services, unless the user says otherwise.
/// Containers share the host's kernel; VMs under TCG emulate every
/// instruction, about ten times slower than KVM.
pub fn timeouts(backend: &BackendSpec, accel: Accel) -> Timeouts {
    let (boot, activation) = match (backend, accel) {
        (BackendSpec::Container { .. }, _) => (300, 300),
        (_, Accel::Kvm) => (120, 60),
        (_, Accel::Tcg) => (900, 300),
    };
    Timeouts {
        boot: Duration::from_secs(boot),
        activation: Duration::from_secs(activation),
    }
}

/// A backend's default time limits (see [`timeouts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub boot: Duration,
    pub activation: Duration,
}
