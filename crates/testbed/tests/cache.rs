//! The registry cache of `build` and `up` (`TESTBED_CACHE`,
//! docs/cache.md) through the CLI, against a test-owned `docker-registry`:
//! a build with `TESTBED_CACHE_PUSH=1` pushes what the cache lacks; a
//! build into an empty store pulls instead of building (no package is
//! fetched); an unreachable cache is a warning and the image is built
//! locally.

mod support;

use support::chaos;
use testbed_test_support::{free_tcp_port, text, Registry};

fn built(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "build: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("build --json")
}

fn packages_fetched(env: &support::Env) -> u64 {
    let out = env.testbed(&["store", "ls", "--json"]);
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).expect("store ls --json");
    ls["packages"]["count"].as_u64().expect("a count")
}

#[test]
fn build_pushes_to_the_cache_pulls_from_it_and_builds_locally_when_it_is_unreachable() {
    let registry = Registry::start();
    let repository = format!("{}/team/chaos", registry.address());
    // The one-node composition of the chaos and contract tests: its image
    // is in the shared store once any of them ran (built here otherwise).
    let env = chaos::composition();
    built(&env.testbed(&["build", "--json"]));

    // Everything is built: the cache gets what it lacks.
    let env = env
        .with_var("TESTBED_CACHE", &repository)
        .with_var("TESTBED_CACHE_PUSH", "1");
    let out = env.testbed(&["build", "--json"]);
    let roles = built(&out);
    assert_eq!(roles[0]["cached"], true, "{roles:?}");
    let key = roles[0]["key"].as_str().expect("key").to_owned();
    assert!(
        text(&out.stderr).contains(&format!("vm: pushed {repository}:{key} to the cache")),
        "{}",
        text(&out.stderr)
    );
    // Once there, it is not pushed again.
    let out = env.testbed(&["build"]);
    assert!(
        !text(&out.stderr).contains("pushed"),
        "{}",
        text(&out.stderr)
    );

    // An empty store: pulled, not built.
    let empty = tempfile::tempdir().unwrap();
    let env = env
        .with_var("TESTBED_CACHE_PUSH", "0")
        .with_store(empty.path());
    let out = env.testbed(&["build", "--json"]);
    let roles = built(&out);
    assert_eq!(
        (roles[0]["key"].as_str(), &roles[0]["cached"]),
        (Some(key.as_str()), &serde_json::Value::Bool(true))
    );
    assert!(
        text(&out.stderr).contains(&format!("vm: pulled {repository}:{key} from the cache")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(packages_fetched(&env), 0, "nothing was built");

    // A cache nobody answers for: a warning, and a local build.
    let nowhere = format!("127.0.0.1:{}/team/chaos", free_tcp_port());
    let other = tempfile::tempdir().unwrap();
    let env = env
        .with_var("TESTBED_CACHE", &nowhere)
        .with_store(other.path());
    let out = env.testbed(&["build", "--json"]);
    let roles = built(&out);
    assert_eq!(
        (roles[0]["key"].as_str(), &roles[0]["cached"]),
        (Some(key.as_str()), &serde_json::Value::Bool(false))
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("vm: cache not used ({nowhere}:{key}: "))
            && stderr.contains("building locally"),
        "{stderr}"
    );
}
