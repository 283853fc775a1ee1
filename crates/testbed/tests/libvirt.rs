//! The libvirt backend (`--backend libvirt`) through the CLI, against the
//! system daemon that `scripts/setup-libvirt.sh` starts (`scripts/test.sh`
//! runs it first):
//!
//! - the Slurm example's test passes with its nodes as libvirt domains
//!   (`--scale compute=2`, as the example's README documents for CI);
//! - a cluster spread over two libvirt endpoints — `qemu:///system` and the
//!   same daemon through a real remote URI (a test-owned `sshd` on
//!   loopback, `qemu+libssh://`), so images, console and agent take the
//!   remote code path — passes a test that pings between nodes placed on
//!   different endpoints;
//! - `down` removes every domain the cluster created and nothing else: a
//!   foreign domain named like testbed's survives.
//!
//! They boot VMs under TCG here, so they take minutes.

mod support;

use std::path::Path;
use std::process::Command;

use support::Env;
use testbed_test_support::{text, Sshd};

const SYSTEM: &str = "qemu:///system";

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(SYSTEM)
        .args(args)
        .output()
        .expect("virsh");
    assert!(
        out.status.success(),
        "virsh {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every domain of the system daemon, running or not.
fn domains() -> Vec<String> {
    virsh(&["list", "--all", "--name"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Defines (does not start) a domain named like testbed's but without its
/// metadata; `down` must not touch it. The test undefines it.
fn define_foreign(dir: &Path, name: &str) {
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64'>hvm</type></os></domain>"
    );
    let file = dir.join("foreign.xml");
    std::fs::write(&file, xml).unwrap();
    virsh(&["define", file.to_str().unwrap()]);
}

#[test]
fn the_slurm_example_passes_on_libvirt() {
    let env = &Env::example("slurm");
    let (out, junit, json) = env.test_with_reports(&[
        "--backend",
        "libvirt",
        "--connect",
        SYSTEM,
        "--scale",
        "compute=2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("libvirt host qemu:///system: ctl, nfs, compute1, compute2"),
        "{stderr}"
    );
    assert!(!env.running(), "the cluster is taken down after the test");
    support::check_passed_reports(&junit, &json, "slurm", &support::SLURM_SUBTESTS);
    let left: Vec<String> = domains()
        .into_iter()
        .filter(|d| d.starts_with("testbed-slurm-"))
        .collect();
    assert!(left.is_empty(), "domains left: {left:?}");
}

const TWO: &str = r#"
[cluster]
name = "spread"
distro = "debian/bookworm"

[defaults]
memory = "384MiB"
cpus = 1

[roles.near]

[roles.far]

[networks.lan]
subnet = "10.81.0.0/24"

[test]
script = "ping.rhai"
"#;

const PING: &str = r#"
start_all();
subtest("nodes on different endpoints reach each other", || {
    near.succeed("ping -c3 -W2 far");
    far.succeed("ping -c3 -W2 near");
    partition([[near], [far]]);
    near.fail("ping -c1 -W1 far");
    heal();
    near.succeed("ping -c1 -W2 far");
});
"#;

#[test]
fn a_cluster_spread_over_two_endpoints_pings_across_and_down_spares_foreign_domains() {
    let sshd = Sshd::start();
    let remote = sshd.libvirt_system_uri();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spread");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("testbed.toml"),
        format!("{TWO}\n[[hosts]]\nname = \"local\"\nuri = \"{SYSTEM}\"\n\n[[hosts]]\nname = \"remote\"\nuri = \"{remote}\"\n")
            .replace("[roles.near]", "[roles.near]\nhost = \"local\"")
            .replace("[roles.far]", "[roles.far]\nhost = \"remote\""),
    )
    .unwrap();
    std::fs::write(dir.join("ping.rhai"), PING).unwrap();
    let foreign = "testbed-spread-foreign";
    let _ = Command::new("virsh")
        .args(["-c", SYSTEM, "undefine", foreign])
        .output();
    define_foreign(tmp.path(), foreign);
    let env = Env::at(tmp, dir);

    let out = env.testbed(&["test", "--backend", "libvirt"]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("libvirt host qemu:///system: near"), "{all}");
    assert!(
        all.contains(&format!("libvirt host {remote}: far")),
        "{all}"
    );
    assert!(all.contains("1 passed, 0 failed"), "{all}");
    assert!(!env.running());

    let left = domains();
    assert!(left.contains(&foreign.to_owned()), "{left:?}");
    assert!(
        !left
            .iter()
            .any(|d| d == "testbed-spread-near" || d == "testbed-spread-far"),
        "{left:?}"
    );
    virsh(&["undefine", foreign]);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
