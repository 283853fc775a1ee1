//! The QEMU command line of a node, as data: snapshots of `qemu::argv` for
//! typical nodes, compared with `tests/snapshots/*.argv` (one option and its
//! value per line). `UPDATE_SNAPSHOTS=1` rewrites them; review the diff.

use std::path::Path;

use testbed_runtime::accel::Accel;
use testbed_runtime::qemu::{argv, NicConfig, Ram, VmConfig};
use testbed_test_support::assert_snapshot;

/// One line per option, its value after a space; values with spaces are
/// single-quoted so the file reads like the command it is.
fn render(args: &[String]) -> String {
    let mut out = String::new();
    for a in args {
        if a.starts_with('-') {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(a);
        } else if a.contains(' ') || a.is_empty() {
            out.push_str(&format!(" '{a}'"));
        } else {
            out.push(' ');
            out.push_str(a);
        }
    }
    out.push('\n');
    out
}

/// A node as the supervisor would lay it out: store files shared by the
/// role, sockets and logs in the cluster's state directory.
fn node(name: &str, accel: Accel, networks: &[&str]) -> VmConfig {
    let store = Path::new("/var/lib/testbed/store/3f1c0a9e");
    let run = Path::new("/run/testbed/slurm");
    VmConfig {
        name: name.to_string(),
        memory_mib: 512,
        cpus: 2,
        accel,
        kernel: store.join("kernel"),
        initramfs: store.join("initramfs"),
        rootfs: store.join("rootfs.erofs"),
        cmdline: "console=ttyS0 panic=-1 quiet testbed.root=/dev/vda".to_string(),
        nics: networks
            .iter()
            .enumerate()
            .map(|(i, net)| NicConfig {
                mac: format!("52:54:00:2a:00:{:02x}", i + 1),
                local: run.join(format!("nic-{name}-{net}.sock")),
                remote: run.join(format!("sw-{name}-{net}.sock")),
            })
            .collect(),
        agent_socket: run.join(format!("{name}.agent.sock")),
        console_socket: run.join(format!("{name}.console.sock")),
        console_log: run.join(format!("{name}.console.log")),
        qmp_socket: run.join(format!("{name}.qmp.sock")),
        ram: Ram::default(),
        incoming: false,
    }
}

#[test]
fn node_with_two_nics_under_tcg() {
    let config = node("compute1", Accel::Tcg, &["lan", "storage"]);
    config.check().expect("valid");
    assert_snapshot!("two-nics-tcg.argv", &render(&argv(&config)));
}

#[test]
fn node_with_one_nic_under_kvm() {
    let config = node("ctl", Accel::Kvm, &["lan"]);
    config.check().expect("valid");
    assert_snapshot!("one-nic-kvm.argv", &render(&argv(&config)));
}

/// What the snapshots show, as a rule that must hold for any node: the
/// only network devices are the dgram NICs to the switch, one per network.
#[test]
fn no_device_reaches_outside_the_cluster() {
    let args = argv(&node("compute1", Accel::Tcg, &["lan", "storage"]));
    assert!(args.iter().any(|a| a == "-nodefaults"), "no implicit NIC");
    for option in ["-nic", "-net", "-netdev"] {
        let values: Vec<&String> = args
            .windows(2)
            .filter(|w| w[0] == option)
            .map(|w| &w[1])
            .collect();
        if option == "-netdev" {
            assert_eq!(values.len(), 2, "{args:?}");
            for v in values {
                assert!(
                    v.starts_with("dgram,")
                        && v.contains(",local.type=unix,")
                        && v.contains(",remote.type=unix,"),
                    "{v}"
                );
            }
        } else {
            assert!(values.is_empty(), "{option} {values:?}");
        }
    }
    let nics = args
        .iter()
        .filter(|a| a.starts_with("virtio-net-pci,"))
        .count();
    assert_eq!(nics, 2);
}
