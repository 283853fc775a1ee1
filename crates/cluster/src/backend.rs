//! Which backend runs the nodes and which accelerator the VMs use: the
//! options, their checks, and the choice (engine detection, libvirt
//! placement, KVM detection).

use testbed_runtime::accel::{self, Accel, Detection};
use testbed_runtime::container::{self, Engine};
use testbed_runtime::spec::BackendSpec;

use crate::{libvirt, Error, Target, UpEvent};

/// What runs the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// One QEMU process per node, owned by the supervisor.
    #[default]
    Qemu,
    /// One podman container per node.
    Podman,
    /// One docker container per node.
    Docker,
    /// One transient libvirt domain per node, on one or more hosts.
    Libvirt,
}

/// Which accelerator VMs use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AccelChoice {
    /// KVM where it works (see `testbed_runtime::accel::detect`), else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The backend options of `up` (and of `test`, when it brings the cluster
/// up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendOptions {
    pub kind: BackendKind,
    /// libvirt: the URI of the one host.
    pub connect: Option<String>,
    /// libvirt: the hosts' URIs; replaces the composition's `[[hosts]]`.
    pub hosts: Vec<String>,
    pub accel: AccelChoice,
    /// Boot every VM instead of starting it from its role's memory
    /// snapshot (`docs/snapshots.md`).
    pub cold: bool,
}

impl BackendOptions {
    /// Checks that the options go together; a usage error says how not.
    pub fn check(&self) -> Result<(), Error> {
        if self.kind == BackendKind::Libvirt && !testbed_runtime::backend::HAS_LIBVIRT {
            return Err(Error::Usage(
                testbed_runtime::backend::WITHOUT_LIBVIRT.to_owned(),
            ));
        }
        if self.kind != BackendKind::Libvirt && (self.connect.is_some() || !self.hosts.is_empty()) {
            return Err(Error::Usage(
                "--connect and --host are for --backend libvirt".to_owned(),
            ));
        }
        if self.connect.is_some() && !self.hosts.is_empty() {
            return Err(Error::Usage(
                "give either --connect URI (one host) or --host URI (repeatable), not both"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// The backend for `target`: libvirt hosts and placement (each host's
/// nodes reported), or the container engine that answers (reported).
pub(crate) fn choose(
    target: &Target,
    options: &BackendOptions,
    events: &mut dyn FnMut(UpEvent),
) -> Result<BackendSpec, Error> {
    Ok(match options.kind {
        BackendKind::Qemu => BackendSpec::Qemu,
        BackendKind::Libvirt => {
            let hosts = libvirt::hosts(
                &target.comp,
                options.connect.as_deref(),
                &options.hosts,
                libvirt::default_uri,
            );
            let placement = libvirt::placement(&target.comp, &target.plan, &hosts)?;
            for (i, uri) in hosts.iter().enumerate() {
                events(UpEvent::LibvirtHost {
                    uri: uri.clone(),
                    nodes: libvirt::nodes_on(&target.plan, &placement, i),
                });
            }
            BackendSpec::Libvirt { hosts, placement }
        }
        BackendKind::Podman | BackendKind::Docker => {
            let wanted = match options.kind {
                BackendKind::Docker => Engine::Docker,
                _ => Engine::Podman,
            };
            let engine = container::detect(Some(wanted))?;
            events(UpEvent::ContainerEngine(engine.clone()));
            BackendSpec::Container { engine }
        }
    })
}

/// The accelerator for `backend`: containers run on the host's kernel
/// (nothing to accelerate, recorded as KVM); `Auto` asks `detect` and
/// returns its detection too, to be reported.
pub fn accel(
    backend: &BackendSpec,
    choice: AccelChoice,
    detect: impl FnOnce() -> Detection,
) -> (Accel, Option<Detection>) {
    match (backend, choice) {
        (BackendSpec::Container { .. }, _) => (Accel::Kvm, None),
        (_, AccelChoice::Kvm) => (Accel::Kvm, None),
        (_, AccelChoice::Tcg) => (Accel::Tcg, None),
        (_, AccelChoice::Auto) => {
            let d = detect();
            (d.accel, Some(d))
        }
    }
}

/// [`accel`] with this host's detection, reported.
pub(crate) fn choose_accel(
    backend: &BackendSpec,
    choice: AccelChoice,
    events: &mut dyn FnMut(UpEvent),
) -> Accel {
    let (accel, detection) = accel(backend, choice, accel::detect);
    if let Some(d) = detection {
        events(UpEvent::Accelerator(d));
    }
    accel
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_runtime::container::EngineInfo;

    fn options(kind: BackendKind, connect: Option<&str>, hosts: &[&str]) -> BackendOptions {
        BackendOptions {
            kind,
            connect: connect.map(str::to_owned),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            accel: AccelChoice::Auto,
            cold: false,
        }
    }

    #[cfg(not(feature = "libvirt"))]
    #[test]
    fn without_the_feature_libvirt_is_refused_as_usage() {
        let err = options(BackendKind::Libvirt, None, &[])
            .check()
            .expect_err("no libvirt in this build");
        assert!(err.is_usage());
        assert!(err.to_string().contains("built without libvirt"), "{err}");
    }

    #[cfg(feature = "libvirt")]
    #[test]
    fn libvirt_flags_need_the_libvirt_backend() {
        for kind in [BackendKind::Qemu, BackendKind::Podman, BackendKind::Docker] {
            for (connect, hosts) in [(Some("qemu:///system"), &[][..]), (None, &["h"][..])] {
                let err = options(kind, connect, hosts).check().expect_err("usage");
                assert!(err.is_usage(), "{err:?}");
                assert_eq!(
                    err.to_string(),
                    "--connect and --host are for --backend libvirt"
                );
            }
            options(kind, None, &[]).check().expect("no libvirt flags");
        }
        let err = options(BackendKind::Libvirt, Some("a"), &["b"])
            .check()
            .expect_err("both");
        assert!(err.is_usage());
        assert_eq!(
            err.to_string(),
            "give either --connect URI (one host) or --host URI (repeatable), not both"
        );
        options(BackendKind::Libvirt, Some("a"), &[])
            .check()
            .expect("connect");
        options(BackendKind::Libvirt, None, &["a", "b"])
            .check()
            .expect("hosts");
        BackendOptions::default().check().expect("defaults");
    }

    #[test]
    fn the_accelerator_is_detected_only_when_asked_and_never_for_containers() {
        let tcg = || Detection {
            accel: Accel::Tcg,
            reason: "no /dev/kvm".into(),
        };
        let never = || -> Detection { panic!("not detected") };
        let container = BackendSpec::Container {
            engine: EngineInfo {
                engine: Engine::Podman,
                rootless: true,
                engine_sets_macs: true,
            },
        };
        assert_eq!(
            accel(&container, AccelChoice::Auto, never),
            (Accel::Kvm, None)
        );
        assert_eq!(
            accel(&container, AccelChoice::Tcg, never),
            (Accel::Kvm, None)
        );
        assert_eq!(
            accel(&BackendSpec::Qemu, AccelChoice::Kvm, never),
            (Accel::Kvm, None)
        );
        assert_eq!(
            accel(&BackendSpec::Qemu, AccelChoice::Tcg, never),
            (Accel::Tcg, None)
        );
        assert_eq!(
            accel(&BackendSpec::Qemu, AccelChoice::Auto, tcg),
            (Accel::Tcg, Some(tcg()))
        );
    }
}
