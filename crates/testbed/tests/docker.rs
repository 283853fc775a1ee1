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

use support::containers::{faults_and_power, small_env, Engine};
use support::{doctor_check, readable_store, Account};

const DOCKER: Engine = Engine::root("docker");

#[test]
fn the_container_test_passes_on_docker_as_root_and_as_a_member_of_the_docker_group() {
    // The images are built once, by root's run, into a store every user
    // may read.
    let store = readable_store("docker");
    let env = small_env("docks", 76).with_store(store.path());
    faults_and_power(DOCKER, &env, "docks");
    drop(env);

    let user = Account::get("testbed-docker");
    assert!(user.in_group("docker"), "{user:?}");
    user.check_unprivileged(&[]);
    let env = small_env("dockgrp", 77)
        .with_store(store.path())
        .run_as(&user.name);
    let out = env.testbed(&["doctor", "--json"]);
    let docker = doctor_check(&out, "docker");
    assert_eq!(docker["level"], "ok", "{docker}");
    // doctor's probes of the other backends leave daemons of their own
    // design behind (libvirt's session daemon, which ends after two idle
    // minutes; rootless podman's pause process): stopped here, so that
    // what is left at the end is testbed's.
    user.stop_processes();
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
    user.check_no_processes(&[]);
}
