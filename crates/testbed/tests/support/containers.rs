//! What the container backend's tests share, whichever the engine: podman
//! (`containers.rs`) or docker (`docker.rs`). Each engine is asked
//! directly (its own command-line client, as root) what exists.

use std::process::Command;

use testbed_test_support::{eventually, is_alive, text};

use super::Env;

/// A container engine's command-line client, as the tests ask it: as
/// root, or as the user whose rootless engine it is.
#[derive(Debug, Clone, Copy)]
pub struct Engine(pub &'static str, pub Option<&'static str>);

impl Engine {
    /// The engine of root (podman rootful, or docker's daemon).
    pub const fn root(program: &'static str) -> Engine {
        Engine(program, None)
    }

    /// Rootless podman of `user` (its own containers, networks, images).
    pub const fn rootless(user: &'static str) -> Engine {
        Engine("podman", Some(user))
    }

    /// `ENGINE ARGS`, which must succeed; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = match self.1 {
            None => Command::new(self.0),
            Some(user) => {
                let uid = super::Account::get(user).uid;
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", "env"])
                    .arg(format!("XDG_RUNTIME_DIR=/run/user/{uid}"))
                    .arg(self.0);
                c
            }
        };
        let out = cmd.args(args).output().expect(self.0);
        assert!(
            out.status.success(),
            "{} {}: {}",
            self.0,
            args.join(" "),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn listed(&self, args: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = self
            .cli(args)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        names.sort();
        names
    }

    pub fn containers(&self) -> Vec<String> {
        self.listed(&["ps", "--all", "--format", "{{.Names}}"])
    }

    pub fn networks(&self) -> Vec<String> {
        self.listed(&["network", "ls", "--format", "{{.Name}}"])
    }

    pub fn all_tags(&self) -> Vec<String> {
        self.listed(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
    }

    /// The cluster's own image tags must be gone after `down`: any tag of
    /// its images left must have been there before it started (someone
    /// else's).
    pub fn check_images_removed(&self, env: &Env, before: &[String]) {
        let after = self.all_tags();
        for prefix in image_tag_prefixes(env) {
            for tag in after.iter().filter(|t| t.starts_with(&prefix)) {
                assert!(before.contains(tag), "{tag} left: {after:?}");
            }
        }
    }

    /// Nothing of the cluster `cluster` is left in the engine: no
    /// container, no network.
    pub fn check_cluster_gone(&self, cluster: &str) {
        let prefix = format!("testbed-{cluster}-");
        let left = self.containers();
        assert!(!left.iter().any(|c| c.starts_with(&prefix)), "{left:?}");
        let nets = self.networks();
        assert!(!nets.iter().any(|n| n.starts_with(&prefix)), "{nets:?}");
    }
}

/// The beginnings of the engine's tags of the composition's images (from
/// the store keys `testbed build --json` prints; the images are built by
/// then). Each cluster holds an image by a tag of its own after that.
pub fn image_tag_prefixes(env: &Env) -> Vec<String> {
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

/// A small composition: three nodes on one network of subnet `10.N.0.0/24`
/// (distinct per test: two engines' bridges must not share a subnet), its
/// test `faults.rhai` ([`FAULTS`]).
pub fn small(cluster: &str, n: u8) -> String {
    format!(
        r#"
[cluster]
name = "{cluster}"
distro = "debian/bookworm"

[defaults]
memory = "256MiB"
cpus = 1

[roles.node]
count = 3

[networks.lan]
subnet = "10.{n}.0.0/24"

[test]
script = "faults.rhai"
"#
    )
}

/// Faults as the guests see them, for a [`small`] cluster on `10.N.0.0/24`.
/// Loss is checked statistically (40 pings with 50% loss each way: about
/// 10 answers; the bounds are far out); delay needs the kernel's netem
/// qdisc, which this machine's kernel lacks, so on such a host the script
/// checks that the refusal says so.
pub fn faults(n: u8) -> String {
    FAULTS.replace("10.N.0.1", &format!("10.{n}.0.1"))
}

const FAULTS: &str = r#"
let a = node1; let b = node2; let c = node3;
start_all();

subtest("the engine's bridge, the host's side, is out of reach", || {
    a.fail("ping -c1 -W1 10.N.0.1");
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

/// An environment with the [`small`] composition `cluster` on `10.N.0.0/24`
/// and its [`faults`] script.
pub fn small_env(cluster: &str, n: u8) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(cluster);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("testbed.toml"), small(cluster, n)).unwrap();
    std::fs::write(dir.join("faults.rhai"), faults(n)).unwrap();
    Env::at(tmp, dir)
}

/// The container test of an engine, on the [`small_env`] `env` of
/// `cluster`: its faults script passes on `--backend ENGINE`, and `down`
/// leaves nothing; then, on a cluster up again, the agent killed while it
/// serves a request fails that request at once and the next one gets a
/// new session; and a killed supervisor's containers, which outlive it
/// (the engine owns them), are found by their label and removed by `down`.
pub fn faults_and_power(engine: Engine, env: &Env, cluster: &str) {
    let backend = engine.0;
    let images_before = engine.all_tags();
    let out = env.testbed(&["test", "--backend", backend]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("6 passed, 0 failed"), "{all}");
    assert!(
        all.contains(&format!("container engine: {backend}")),
        "{all}"
    );
    assert!(!env.running());
    engine.check_cluster_gone(cluster);
    engine.check_images_removed(env, &images_before);

    let out = env.testbed(&["up", "--backend", backend, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let pid = status["supervisor_pid"].as_u64().expect("supervisor pid");

    // The agent killed while it serves a request (its `exec` session
    // ends): the request fails at once, and the node's next request gets
    // a new session.
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
    let node1 = format!("testbed-{cluster}-node1");
    assert!(engine.containers().contains(&node1));
    let out = env.testbed(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains(&format!("removed container {node1}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("removed network testbed-{cluster}-lan")),
        "{said}"
    );
    engine.check_cluster_gone(cluster);
    engine.check_images_removed(env, &images_before);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
