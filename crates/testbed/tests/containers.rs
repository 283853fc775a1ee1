//! The container backend with podman (`--backend podman`): the Slurm
//! example's test passes on containers, faults act from the host side in
//! the containers' network namespaces, and `down` removes every container,
//! network and image tag the cluster made — and nothing else, not even
//! things labelled with the same cluster name. These tests need podman
//! (`scripts/setup-host.sh` installs and configures it).

mod support;

use std::path::Path;
use std::process::Command;

use support::Env;
use testbed_test_support::{eventually, is_alive, text};

/// The subtests of examples/slurm/test.rhai on containers (no NFS there).
const SLURM_SUBTESTS: [&str; 5] = [
    "every compute node is idle in sinfo",
    "an array job spreads over every compute node",
    "an MPI job runs across nodes",
    "a crashed node goes down, its job is requeued, and it comes back",
    "a partitioned node loses its controller until healed",
];

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().expect("podman");
    assert!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn listed(args: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = podman(args)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    names.sort();
    names
}

fn containers() -> Vec<String> {
    listed(&["ps", "--all", "--format", "{{.Names}}"])
}

fn networks() -> Vec<String> {
    listed(&["network", "ls", "--format", "{{.Name}}"])
}

fn all_tags() -> Vec<String> {
    listed(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
}

/// The beginnings of the engine's tags of the composition's images (from
/// the store keys `testbed build --json` prints; the images are built by
/// then). Each cluster holds an image by a tag of its own after that.
fn image_tag_prefixes(env: &Env) -> Vec<String> {
    let out = env.testbed(&["build", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    built
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let key = e["key"].as_str().expect("key");
            format!("localhost/testbed-image:{}", &key[..20])
        })
        .collect()
}

/// The cluster's own image tags must be gone after `down`: any tag of its
/// images left must have been there before it started (someone else's).
fn check_images_removed(env: &Env, before: &[String]) {
    let after = all_tags();
    for prefix in image_tag_prefixes(env) {
        for tag in after.iter().filter(|t| t.starts_with(&prefix)) {
            assert!(before.contains(tag), "{tag} left: {after:?}");
        }
    }
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
    let junit = env.comp.join("report.xml");
    let json = env.comp.join("report.json");
    let out = env.testbed(&[
        "test",
        "--backend",
        "podman",
        "--junit",
        junit.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
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
    check_images_removed(env, &images_before);
    let tags = all_tags();
    assert!(tags.contains(&foreign[2]), "{tags:?}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
    remove_foreign(&foreign);
}

const SMALL: &str = r#"
[cluster]
name = "pods"
distro = "debian/bookworm"

[defaults]
memory = "256MiB"
cpus = 1

[roles.node]
count = 3

[networks.lan]
subnet = "10.78.0.0/24"

[test]
script = "faults.rhai"
"#;

/// Faults as the guests see them. Loss is checked statistically (40 pings
/// with 50% loss each way: about 10 answers; the bounds are far out);
/// delay needs the kernel's netem qdisc, which this machine's kernel lacks,
/// so on such a host the script checks that the refusal says so.
const FAULTS: &str = r#"
let a = node1; let b = node2; let c = node3;
start_all();

subtest("the engine's bridge, the host's side, is out of reach", || {
    a.fail("ping -c1 -W1 10.78.0.1");
    a.succeed("ping -c1 -W2 node2");
});

subtest("a partition cuts across groups only, heal restores it", || {
    partition([[a], [b, c]]);
    a.fail("ping -c1 -W1 node2");
    b.succeed("ping -c1 -W2 node3");
    heal();
    a.succeed("ping -c1 -W2 node2");
});

subtest("a blocked node reaches nobody and can still be driven", || {
    a.block();
    a.fail("ping -c1 -W1 node3");
    b.fail("ping -c1 -W1 node1");
    b.succeed("ping -c1 -W2 node3");
    a.succeed("hostname");
    a.unblock();
    b.succeed("ping -c1 -W2 node1");
});

subtest("loss drops packets on that link only", || {
    link(a, b).loss(0.5);
    let lossy = a.succeed("ping -c40 -i0.05 -W1 -q node2 | grep -o '[0-9]* received' || true");
    let got = parse_int(lossy.split(" ")[0]);
    assert(got > 0 && got < 30, `40 pings at 50% loss each way: ${got} answered`);
    let clean = a.succeed("ping -c20 -i0.05 -W1 -q node3 | grep -o '[0-9]* received'");
    assert(clean.contains("20 received"), `the a-c link lost packets: ${clean}`);
    link(a, b).clear();
    a.succeed("ping -c3 -i0.2 -W1 node2");
});

subtest("a delay is applied, or refused saying why", || {
    try {
        link(a, c).delay("100ms");
        let out = a.succeed("ping -c3 -i0.2 -q node3");
        let min = parse_float(out.split("= ")[1].split("/")[0]);
        assert(min >= 190.0, `a 100 ms delay each way, yet min rtt ${min} ms`);
        link(a, c).clear();
    } catch (e) {
        let text = `${e}`;
        assert(text.contains("sch_netem") && text.contains("VM backend"), text);
        log("delay refused: " + text);
    }
    a.succeed("ping -c1 -W2 node3");
});

subtest("a crashed node is silent at once and comes back fresh", || {
    b.succeed("touch /var/tmp/before-crash");
    b.crash();
    a.fail("ping -c1 -W1 node2");
    b.start();
    b.fail("test -e /var/tmp/before-crash");
    a.succeed("ping -c1 -W2 node2");
    c.shutdown();
    c.start();
    a.succeed("ping -c1 -W2 node3");
});
"#;

#[test]
fn faults_and_power_act_on_containers_from_the_host_side() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pods");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("testbed.toml"), SMALL).unwrap();
    std::fs::write(dir.join("faults.rhai"), FAULTS).unwrap();
    let env = Env::at(tmp, dir);
    let images_before = all_tags();
    let out = env.testbed(&["test", "--backend", "podman"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("6 passed, 0 failed"), "{all}");
    assert!(!env.running());
    let left = containers();
    assert!(
        !left.iter().any(|c| c.starts_with("testbed-pods-")),
        "{left:?}"
    );
    assert!(!networks().contains(&"testbed-pods-lan".to_owned()));
    check_images_removed(&env, &images_before);

    // Containers outlive a killed supervisor (the engine owns them); `down`
    // then finds them by their state-directory label and removes them.
    let out = env.testbed(&["up", "--backend", "podman", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let pid = status["supervisor_pid"].as_u64().expect("supervisor pid");

    // The agent killed while it serves a request (its `podman exec`
    // session ends): the request fails at once, and the node's next
    // request gets a new session.
    let out = env.testbed(&[
        "exec",
        "node1",
        "--",
        "sh",
        "-c",
        "kill -KILL $(pidof testbed-agent); sleep 120",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the agent closed the connection"),
        "{}",
        text(&out.stderr)
    );
    let out = env.testbed(&["exec", "node1", "--", "hostname"]);
    assert_eq!(text(&out.stdout).trim(), "node1", "{}", text(&out.stderr));

    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let pid = u32::try_from(pid).expect("a pid");
    assert!(eventually(
        std::time::Duration::from_secs(10),
        || !is_alive(pid)
    ));
    assert!(containers().contains(&"testbed-pods-node1".to_owned()));
    let out = env.testbed(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("removed container testbed-pods-node1"),
        "{said}"
    );
    assert!(said.contains("removed network testbed-pods-lan"), "{said}");
    let left = containers();
    assert!(
        !left.iter().any(|c| c.starts_with("testbed-pods-")),
        "{left:?}"
    );
    assert!(!networks().contains(&"testbed-pods-lan".to_owned()));
    check_images_removed(&env, &images_before);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
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
        SMALL
            .replace("name = \"pods\"", "name = \"twin\"")
            .replace("count = 3", "count = 1")
            .replace("10.78.0.0/24", "10.79.0.0/24")
            .replace("[test]\nscript = \"faults.rhai\"\n", ""),
    )
    .unwrap();
    let env = Env::at(tmp, dir);
    let foreign = "testbed-twin-lan";
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
