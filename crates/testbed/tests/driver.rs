//! `testbed test` on a real cluster: the example's own script passes and
//! writes a valid JUnit report; a deliberately failing script exits 1,
//! names its failing line and leaves every node's console log in the
//! artifacts directory. Boots the example once with `--scale compute=2`
//! (4 nodes) under TCG here, so this takes minutes.
//!
//! The cluster boots from images that went through a registry: built (or
//! found) in the tests' shared store, pushed with `testbed store push` to
//! a test-owned `docker-registry`, pulled with `testbed store pull` into an
//! empty store, whose entries must equal the shared store's; nothing is
//! built into that store (its package cache stays empty).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{attr, python, secrets, start_tag, Env};
use testbed_test_support::{text, Registry};

#[test]
fn the_example_test_passes_and_a_failing_script_leaves_artifacts() {
    let registry = Registry::start();
    let pulled = tempfile::tempdir().unwrap();
    let env = &through_a_registry(Env::example("slurm"), &registry, pulled.path());

    // One boot for both runs (CI time): `testbed test` on a running
    // cluster uses it and leaves it running. Bringing a cluster up and
    // down around a test is shown by the other examples' tests.
    let out = env.testbed(&["up", "--scale", "compute=2"]);
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    nothing_built(env);

    // A failing script: exit 1, the failing line, the artifacts.
    let bad = env.comp.join("bad.rhai");
    std::fs::write(
        &bad,
        "start_all();\n\
         subtest(\"fine\", || ctl.succeed(\"true\"));\n\
         subtest(\"broken\", || {\n\
         \x20   compute1.succeed(\"echo out-text; echo err-text >&2; exit 3\");\n\
         });\n",
    )
    .unwrap();
    let artifacts = env.comp.join("artifacts");
    let out = env.testbed(&[
        "test",
        "--script",
        bad.to_str().unwrap(),
        "--artifacts",
        artifacts.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // The verdict and its error go to stdout, progress to stderr.
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("bad.rhai:4:"), "names the failing line: {all}");
    assert!(all.contains("on node compute1"), "names the node: {all}");
    assert!(all.contains("err-text"), "quotes stderr: {all}");
    // The progress on stderr says why, under the FAILED line (what a test
    // harness that keeps only stderr shows).
    let progress = text(&out.stderr);
    let failed_at = progress.find("FAILED: broken").expect("a FAILED line");
    assert!(
        progress[failed_at..].contains("        ") && progress[failed_at..].contains("err-text"),
        "the reason is under the FAILED line: {progress}"
    );
    assert!(
        all.contains("artifacts (console logs, journals, fault history) are in artifacts"),
        "says where the artifacts are: {all}"
    );
    assert!(env.running(), "a cluster that was running is left running");
    let mut files = Vec::new();
    collect(&artifacts, &mut files);
    for node in ["ctl", "nfs", "compute1", "compute2"] {
        let console = files.iter().find(|f| {
            let s = f.to_string_lossy();
            f.parent().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new(node))
                && s.contains("console")
        });
        let console = console.unwrap_or_else(|| panic!("no console log of {node} in {files:?}"));
        let log = std::fs::read_to_string(console).expect("console log");
        assert!(
            log.contains("testbed-stage1"),
            "{node}'s console holds its boot"
        );
    }

    // The example's own script, on the running cluster: it passes and the
    // cluster, running before, is left running.
    let (out, junit, json) = env.test_with_reports(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(env.running(), "a cluster that was running is left running");

    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert!(xml.starts_with("<?xml"), "{xml}");
    let suite = start_tag(&xml, "testsuite").expect("a testsuite element");
    assert_eq!(attr(suite, "tests"), Some("6"), "{suite}");
    assert_eq!(attr(suite, "failures"), Some("0"), "{suite}");
    for name in support::SLURM_SUBTESTS {
        assert!(xml.contains(&format!("name=\"{name}\"")), "{name}: {xml}");
    }
    well_formed(&xml);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    assert_eq!(report["passed"], true, "{report}");

    python_on_the_running_cluster(env);
    assert!(env.running(), "a cluster that was up before stays up");
    secrets_stay_secret(env);

    let out = env.testbed(&["down"]);
    assert!(out.status.success(), "down: {}", text(&out.stderr));
    assert!(!env.running());
}

/// The example's images, built in the shared store, pushed to `registry`
/// and pulled into the empty store `pulled`: the environment, with that
/// store. The pulled entries are the shared store's, file for file.
fn through_a_registry(env: Env, registry: &Registry, pulled: &Path) -> Env {
    let out = env.testbed(&["build"]);
    assert!(out.status.success(), "build: {}", text(&out.stderr));
    let repository = format!("{}/examples/slurm", registry.address());
    let out = env.testbed(&["store", "push", &repository]);
    assert!(out.status.success(), "push: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 3, "one line per role");
    let env = env.with_store(pulled);
    let out = env.testbed(&["store", "pull", &repository, "--json"]);
    assert!(out.status.success(), "pull: {}", text(&out.stderr));
    let roles: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(roles.len(), 3, "{roles:?}");
    for role in &roles {
        let key = role["key"].as_str().expect("key");
        for file in ["manifest.json", "rootfs.erofs", "kernel", "initramfs"] {
            let ours = std::fs::read(pulled.join(key).join(file)).expect("pulled");
            let theirs = std::fs::read(support::store().join(key).join(file)).expect("built");
            assert!(ours == theirs, "{file} of {} differs", role["role"]);
        }
    }
    env
}

/// Nothing was built into the pulled store: no package was fetched into
/// its cache.
fn nothing_built(env: &Env) {
    let out = env.testbed(&["store", "ls", "--json"]);
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(ls["packages"]["count"], 0, "{ls}");
    assert_eq!(ls["entries"].as_array().map(Vec::len), Some(3), "{ls}");
}

/// The secrets scan (`docs/security.md`), on the cluster that just ran a
/// failing and a passing test: its munge key and SSH private keys are in
/// none of the store's files (images, role snapshots), the artifacts, the
/// reports or anything the CLI printed; in the state folder, only in
/// private files; and the node that needs the key has it, private.
fn secrets_stay_secret(env: &Env) {
    let state = std::fs::read_dir(&env.state)
        .expect("state root")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("spec.json").is_file())
        .expect("the cluster's state folder");
    let needles = secrets::Needles::of_cluster(&state);
    // The control: the spec holds every secret (base64) and host key, the
    // ssh folder the client key, so the scan finds them where they are.
    let mut kept = std::fs::read(state.join("spec.json")).unwrap();
    kept.extend(std::fs::read(state.join("ssh/id_ed25519")).unwrap());
    let in_state = needles.found_in(&kept);
    assert_eq!(
        in_state.len(),
        needles.len() - needles.raw(),
        "{in_state:?}"
    );
    // The store entries of this cluster's images (the store is shared by
    // every test of the crate: other entries are other examples') and
    // every role snapshot. Cluster snapshots hold secrets by design, in a
    // private folder, and are not scanned.
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("spec.json")).unwrap()).unwrap();
    let mut entries: Vec<std::path::PathBuf> = spec["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["image"]["rootfs"].as_str())
        .filter_map(|p| Path::new(p).parent().map(Path::to_path_buf))
        .collect();
    entries.sort();
    entries.dedup();
    entries.push(
        env.store
            .clone()
            .unwrap_or_else(support::store)
            .join(".snapshots"),
    );
    let mut scan = secrets::Scan::default();
    for entry in &entries {
        scan.add(needles.scan(entry, &[]));
    }
    // The composition's folder: its artifacts and both reports.
    scan.add(needles.scan(&env.comp, &[]));
    let printed = env.printed.lock().expect("printed").clone();
    let in_output = needles.found_in(&printed);
    let exposed = secrets::readable_by_others(&needles, &state);
    let findings = scan.findings.len() + in_output.len() + exposed.len();
    secrets::record(&format!(
        "secrets scan: {} needles in {} files ({} MiB: {} image entries, role snapshots, artifacts, reports) and {} KiB of CLI output: {findings} findings",
        needles.len(),
        scan.files,
        scan.bytes >> 20,
        entries.len() - 1,
        printed.len() >> 10
    ));
    assert!(scan.files > 10 && scan.bytes > 100 << 20, "{scan:?}");
    assert!(scan.findings.is_empty(), "{:#?}", scan.findings);
    assert!(in_output.is_empty(), "the CLI printed {in_output:?}");
    assert!(exposed.is_empty(), "readable by others: {exposed:#?}");
    // Where it belongs: on the node, readable by munge only.
    let out = env.testbed(&[
        "exec",
        "ctl",
        "--",
        "stat",
        "-c",
        "%a %U",
        "/etc/munge/munge.key",
    ]);
    assert_eq!(text(&out.stdout), "400 munge\n", "{}", text(&out.stderr));
}

/// Checks that every element is closed in order, attributes are quoted and
/// text holds no raw `<` or stray `&` (what a JUnit consumer's parser
/// would reject).
fn well_formed(xml: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        check_text(text, xml);
        rest = &rest[open..];
        if let Some(body) = rest.strip_prefix("<![CDATA[") {
            let end = body.find("]]>").expect("CDATA closed");
            rest = &body[end + 3..];
            continue;
        }
        let close = rest.find('>').expect("tag closed");
        let tag = &rest[1..close];
        rest = &rest[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop(),
                Some(name.trim()),
                "mismatched </{name}> in {xml}"
            );
        } else {
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            let name = tag.split_whitespace().next().expect("tag name");
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
    }
    check_text(rest, xml);
    assert!(stack.is_empty(), "unclosed {stack:?} in {xml}");
}

fn check_text(text: &str, xml: &str) {
    for (i, _) in text.match_indices('&') {
        let entity = &text[i..];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#"]
                .iter()
                .any(|e| entity.starts_with(e)),
            "stray & in {xml}"
        );
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
    {
        let p = entry.path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The Python package on the running cluster (docs/python.md): the
/// example's testinfra check (`test_services.py`) on every node, then a
/// pytest test that fails on purpose: its report names the node, the
/// command and its output, and the artifacts folder holds every node's
/// console log and journal. The plugin leaves the cluster running (it was
/// up before).
fn python_on_the_running_cluster(env: &Env) {
    let venv = python::Venv::new();

    // The testinfra check, on the nodes given as pytest-testinfra's hosts.
    let composition = format!("--testbed-composition={}", env.comp.display());
    let out = venv.pytest(
        env,
        &env.comp,
        &[
            "test_services.py",
            "--hosts=testbed://ctl,testbed://nfs,testbed://compute1,testbed://compute2",
            &composition,
            "-v",
            "--junitxml=services.xml",
        ],
        Duration::from_secs(15 * 60),
    );
    assert_eq!(out.status.code(), Some(0), "the testinfra check failed");
    let (names, counts) = python::junit(&env.comp.join("services.xml"));
    assert_eq!(counts, ["16", "0", "0", "0"].map(String::from), "{names:?}");
    for host in ["ctl", "nfs", "compute1", "compute2"] {
        let case = format!("test_the_roles_services_run[testbed://{host}]");
        assert!(names.contains(&case), "{case} in {names:?}");
    }

    // A failing test on the same running cluster (which the plugin then
    // leaves running: it was up before).
    std::fs::write(
        env.comp.join("test_broken.py"),
        "import pytest\n\
         \n\
         pytestmark = pytest.mark.testbed(path=\".\")\n\
         \n\
         def test_fine(testbed_cluster):\n\
         \x20   assert testbed_cluster[\"ctl\"].succeed(\"hostname\").strip() == \"ctl\"\n\
         \n\
         def test_broken(testbed_cluster):\n\
         \x20   testbed_cluster[\"compute1\"].succeed(\"echo out-text; echo err-text >&2; exit 3\")\n",
    )
    .unwrap();
    let out = venv.pytest(
        env,
        &env.comp,
        &["test_broken.py", "--junitxml=broken.xml"],
        Duration::from_secs(10 * 60),
    );
    assert_eq!(out.status.code(), Some(1), "one test fails");
    let report = text(&out.stdout);
    for expected in [
        "command `echo out-text; echo err-text >&2; exit 3` on node compute1 failed: exit status 3",
        "E       out-text",
        "E       err-text",
        "test_broken.py:9: CommandFailed",
        "testbed compute1 console log (last lines)",
        "testbed compute1 journal (last lines)",
        "1 failed, 1 passed",
    ] {
        assert!(report.contains(expected), "{expected:?} in the report");
    }
    let artifacts = env
        .comp
        .join("testbed-artifacts/test_broken.py_test_broken");
    for node in ["ctl", "nfs", "compute1", "compute2"] {
        let dir = artifacts.join(node);
        let console = std::fs::read(dir.join("console.log")).expect("console log kept");
        assert!(!console.is_empty(), "{node}: empty console log");
        let journal = text(&std::fs::read(dir.join("journal.txt")).expect("journal kept"));
        assert!(
            journal.contains("systemd"),
            "{node}: a boot journal: {journal}"
        );
        let state = std::fs::read_to_string(dir.join("state.txt")).expect("state");
        assert_eq!(state, "ready\n");
    }
    let compute = text(&std::fs::read(artifacts.join("compute1/journal.txt")).unwrap());
    assert!(compute.contains("slurmd"), "compute's journal shows slurmd");
    assert_eq!(
        std::fs::read_to_string(artifacts.join("problems.txt")).unwrap(),
        "everything was collected\n"
    );
    let junit_xml = std::fs::read_to_string(env.comp.join("broken.xml")).unwrap();
    assert!(
        junit_xml.contains(&format!(
            "<property name=\"testbed_artifacts\" value=\"{}\" />",
            artifacts.display()
        )),
        "{junit_xml}"
    );
}
