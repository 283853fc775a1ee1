//! The container backend on docker (`--backend docker`, Debian's docker.io
//! started by scripts/setup-docker.sh): the container test of
//! `containers.rs` (faults from the host side, power, an agent killed
//! mid-request, a killed supervisor's containers removed by `down`,
//! nothing left) passes on docker as root, and again as `testbed-docker`,
//! a user whose only privilege is the `docker` group (scripts/setup-users.sh),
//! from a store root built, which that user may not write. That user's
//! `doctor --json` says docker is usable.
//!
//! The docker client on PATH may be newer than the daemon (here: Docker's
//! 28 client, Debian's 20.10 daemon), which cannot set MACs on it: the
//! nodes' MACs are then set from the host side, and the faults script
//! checks the network as on podman.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::containers::{faults_and_power, small_env, Engine};
use testbed_test_support::text;

const DOCKER: Engine = Engine::root("docker");

/// The user's processes, but zombies (an ended daemon waits for init to
/// collect it).
fn processes(user: &str) -> String {
    let out = Command::new("ps")
        .args(["-u", user, "-o", "stat=,pid=,args="])
        .output()
        .expect("ps");
    text(&out.stdout)
        .lines()
        .filter(|l| !l.trim_start().starts_with('Z'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_container_test_passes_on_docker_as_root_and_as_a_member_of_the_docker_group() {
    // A store every user may read, which root fills: the images are built
    // once, by root's run.
    let store = tempfile::Builder::new()
        .prefix("testbed-docker-store-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let env = small_env("docks", 76).with_store(store.path());
    faults_and_power(DOCKER, &env, "docks");
    drop(env);

    let user = "testbed-docker";
    let groups = text(
        &Command::new("id")
            .args(["-nG", user])
            .output()
            .unwrap()
            .stdout,
    );
    let groups: Vec<&str> = groups.split_whitespace().collect();
    assert!(groups.contains(&"docker"), "{groups:?}");
    for group in ["root", "sudo", "wheel", "adm"] {
        assert!(!groups.contains(&group), "{user} is in {group}");
    }
    let env = small_env("dockgrp", 77)
        .with_store(store.path())
        .run_as(user);
    let out = env.testbed(&["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let docker = checks
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "docker")
        .expect("a docker check");
    assert_eq!(docker["level"], "ok", "{docker}");
    // doctor's probes of the other backends leave daemons of their own
    // design behind (libvirt's session daemon, which ends after two idle
    // minutes; rootless podman's pause process): stopped here, so that
    // what is left at the end is testbed's.
    let _ = Command::new("pkill").args(["-KILL", "-u", user]).status();
    let stopped = testbed_test_support::wait_until(std::time::Duration::from_secs(10), || {
        processes(user).trim().is_empty().then_some(())
    });
    assert!(stopped.is_some(), "{}", processes(user));
    faults_and_power(DOCKER, &env, "dockgrp");
    // Nothing was built for the user: root's images served it.
    let own = env.comp.parent().unwrap().join(".cache/testbed/store");
    let built: Vec<String> = std::fs::read_dir(&own)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(
        built.is_empty(),
        "the user built {built:?} in {}",
        own.display()
    );
    drop(env);
    let left = testbed_test_support::wait_until(std::time::Duration::from_secs(30), || {
        processes(user).trim().is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "{user}'s processes left: {}",
        processes(user)
    );
}
