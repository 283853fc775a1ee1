//! The container backend with podman (`--backend podman`): the Slurm
//! example's test passes on containers, faults act from the host side in
//! the containers' network namespaces, and `down` removes every container,
//! network and image tag the cluster made — and nothing else, not even
//! things labelled with the same cluster name. These tests need podman
//! (`scripts/setup-host.sh` installs and configures it).

mod support;

use std::path::Path;
use std::process::Command;

use support::containers::{small, small_env, Engine};
use support::{doctor_check, readable_store, Account, Env};
use testbed_test_support::text;

/// The subtests of examples/slurm/test.rhai on containers (no NFS there).
const SLURM_SUBTESTS: [&str; 5] = [
    "every compute node is idle in sinfo",
    "an array job spreads over every compute node",
    "an MPI job runs across nodes",
    "a crashed node goes down, its job is requeued, and it comes back",
    "a partitioned node loses its controller until healed",
];

const PODMAN: Engine = Engine::root("podman");

fn podman(args: &[&str]) -> String {
    PODMAN.cli(args)
}

fn containers() -> Vec<String> {
    PODMAN.containers()
}

fn networks() -> Vec<String> {
    PODMAN.networks()
}

fn all_tags() -> Vec<String> {
    PODMAN.all_tags()
}

/// A container, a network and an image tag that carry testbed's cluster
/// label for `cluster` but were not made by testbed: `down` must leave
/// them alone. Returns their names.
fn foreign_things(cluster: &str, dir: &Path) -> [String; 3] {
    let rootfs = dir.join("foreign-rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("hello"), "not testbed's").unwrap();
    let tar = dir.join("foreign.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(ok.success());
    let image = format!("localhost/foreign-{cluster}:1");
    let network = format!("foreign-{cluster}");
    let container = format!("foreign-{cluster}");
    let label = format!("org.testbed.cluster={cluster}");
    let _ = Command::new("podman")
        .args(["rm", "--force", &container])
        .output();
    let _ = Command::new("podman")
        .args(["network", "rm", &network])
        .output();
    podman(&["import", "--quiet", tar.to_str().unwrap(), &image]);
    podman(&[
        "network",
        "create",
        "--internal",
        "--label",
        &label,
        &network,
    ]);
    podman(&[
        "create",
        "--name",
        &container,
        "--label",
        &label,
        "--network",
        &network,
        &image,
        "/hello",
    ]);
    [container, network, image]
}

fn remove_foreign([container, network, image]: &[String; 3]) {
    podman(&["rm", "--force", container]);
    podman(&["network", "rm", network]);
    podman(&["image", "rm", image]);
}

#[test]
fn the_slurm_example_passes_on_podman_and_down_removes_only_what_it_made() {
    let env = &Env::example("slurm");
    let foreign = foreign_things("slurm", &env.comp);
    let images_before = all_tags();
    let (out, junit, json) = env.test_with_reports(&["--backend", "podman"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("container engine: podman"), "{stderr}");
    assert!(
        stderr.contains("no NFS on the podman backend"),
        "the script says why /home is not checked: {stderr}"
    );
    assert!(!env.running(), "the cluster is taken down after the test");
    support::check_passed_reports(&junit, &json, "slurm", &SLURM_SUBTESTS);

    // Every node's container and the network are gone, the image tags the
    // cluster imported too; the foreign things, labelled with the same
    // cluster name, are all still there.
    let left = containers();
    for node in ["ctl", "nfs", "compute1", "compute4"] {
        let name = format!("testbed-slurm-{node}");
        assert!(!left.contains(&name), "{name} left: {left:?}");
    }
    assert!(left.contains(&foreign[0]), "{left:?}");
    let nets = networks();
    assert!(!nets.contains(&"testbed-slurm-lan".to_owned()), "{nets:?}");
    assert!(nets.contains(&foreign[1]), "{nets:?}");
    PODMAN.check_images_removed(env, &images_before);
    let tags = all_tags();
    assert!(tags.contains(&foreign[2]), "{tags:?}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    remove_foreign(&foreign);
}

#[test]
fn faults_and_power_act_on_containers_from_the_host_side() {
    let env = small_env("pods", 78);
    support::containers::faults_and_power(PODMAN, &env, "pods");
}

/// Rootless podman: `testbed-podman` (no root, no sudo; scripts/setup-users.sh
/// gives it subordinate ids, the polkit rule's group, and what a login
/// session on a systemd host gives: its runtime folder and a cgroup
/// delegated to it) runs the same container test on its own podman, from
/// a store root built, which it may not write. Its `doctor --json` says
/// rootless builds, both libvirt daemons and rootless containers are
/// usable.
#[test]
fn a_user_without_root_runs_the_container_test_on_rootless_podman() {
    let user = Account::get("testbed-podman");
    user.check_unprivileged(&["docker"]);
    let store = readable_store("podman");
    let root = small_env("rpods", 75).with_store(store.path());
    let out = root.testbed(&["build"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(root);

    let env = small_env("rpods", 75)
        .with_store(store.path())
        .run_as(&user.name);
    // Its doctor: every backend a user without root can have is usable
    // at once (docker, whose group is root's in all but name, aside):
    // rootless builds, libvirt's session and system daemons (through the
    // polkit rule's group), rootless containers.
    let out = env.testbed(&["doctor", "--json"]);
    for name in ["image builder", "libvirt", "libvirt (system)"] {
        let check = doctor_check(&out, name);
        assert_eq!(check["level"], "ok", "{check}");
    }
    let containers = doctor_check(&out, "containers");
    assert_eq!(containers["level"], "ok", "{containers}");
    assert!(
        containers["found"]
            .as_str()
            .unwrap_or_default()
            .contains("podman (rootless) answers"),
        "{containers}"
    );
    support::containers::faults_and_power(Engine::rootless("testbed-podman"), &env, "rpods");
}

/// A network of the same name made by someone else (another cluster of the
/// same name in another folder, or a killed run) stops `up` with a message
/// that says whose it is and what to do; it is not removed.
#[test]
fn a_foreign_network_of_the_same_name_is_reported_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("twin");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("testbed.toml"),
        small("pods", 78)
            .replace("name = \"pods\"", "name = \"twin\"")
            .replace("count = 3", "count = 1")
            .replace("10.78.0.0/24", "10.79.0.0/24")
            .replace("[test]\nscript = \"faults.rhai\"\n", ""),
    )
    .unwrap();
    let env = Env::at(tmp, dir);
    let foreign = "testbed-twin-lan";
    // This test's own network, left by a run of it that was killed.
    let _ = std::process::Command::new("podman")
        .args(["network", "rm", "-f", foreign])
        .output();
    podman(&["network", "create", "--internal", foreign]);
    let out = env.testbed(&["up", "--backend", "podman"]);
    let said = text(&out.stderr);
    let nets = networks();
    podman(&["network", "rm", foreign]);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("network testbed-twin-lan exists and is not this cluster's")
            && said.contains("podman network rm testbed-twin-lan"),
        "{said}"
    );
    assert!(nets.contains(&foreign.to_owned()), "{nets:?}");
    assert!(!env.running(), "up took its failed cluster down");
    assert!(!containers().iter().any(|c| c.starts_with("testbed-twin-")));
}
