//! The CLI as a user runs it: exit codes, output formats, `init` → `check`.

mod support;

use std::path::Path;
use std::process::Output;

use support::testbed_command;
use testbed_test_support::{repo_root, text};

fn testbed(args: &[&str], cwd: &Path) -> Output {
    testbed_command(args, cwd).output().expect("run testbed")
}

#[test]
fn plan_json_lists_the_example_nodes_and_is_stable() {
    let args = ["plan", "examples/slurm/testbed.toml", "--json"];
    let a = testbed(&args, &repo_root());
    assert!(a.status.success(), "{}", text(&a.stderr));
    let b = testbed(&args, &repo_root());
    assert_eq!(a.stdout, b.stdout, "two runs give identical output");
    let plan: serde_json::Value = serde_json::from_slice(&a.stdout).expect("json");
    let nodes = plan["nodes"].as_array().expect("nodes");
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(
        names,
        ["ctl", "nfs", "compute1", "compute2", "compute3", "compute4"]
    );
    for (i, n) in nodes.iter().enumerate() {
        let nic = &n["nics"][0];
        assert_eq!(nic["ip"], format!("10.44.0.{}", 11 + i));
        assert_eq!(nic["mac"], format!("52:54:00:2c:00:{:02x}", 11 + i));
    }
}

#[test]
fn plan_scale_and_folder_argument() {
    let out = testbed(
        &["plan", "examples/slurm", "--json", "--scale", "compute=8"],
        &repo_root(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let compute = plan["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"] == "compute")
        .count();
    assert_eq!(compute, 8);

    let table = testbed(&["plan"], &repo_root().join("examples/slurm"));
    assert!(table.status.success(), "{}", text(&table.stderr));
    let t = text(&table.stdout);
    assert!(
        t.starts_with("cluster slurm (debian/bookworm): 6 nodes, 1 network"),
        "{t}"
    );
    assert!(
        t.contains("compute4  compute  1     512MiB  lan      10.44.0.16/24  52:54:00:2c:00:10"),
        "{t}"
    );
}

/// `testbed graph`: the example's topology as a standalone SVG (every
/// node in its box with its role, every network with its subnet, every
/// address where a node meets a network), the same bytes every time, and
/// as DOT with an edge per interface.
#[test]
fn graph_draws_the_topology_as_svg_and_dot() {
    let root = repo_root();
    let svg = testbed(&["graph", "examples/slurm", "--scale", "compute=2"], &root);
    assert!(svg.status.success(), "{}", text(&svg.stderr));
    let picture = text(&svg.stdout);
    assert!(
        picture.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"")
            && picture.ends_with("</svg>\n"),
        "{picture}"
    );
    assert!(picture.contains("<title>cluster slurm (debian/bookworm): 4 nodes, 1 networks</title>"));
    assert!(picture.contains("<g class=\"network\" id=\"net-lan\">"));
    assert!(picture.contains(">10.44.0.0/24</text>"));
    for (node, role, ip) in [
        ("ctl", "ctl", "10.44.0.11"),
        ("nfs", "nfs", "10.44.0.12"),
        ("compute1", "compute", "10.44.0.13"),
        ("compute2", "compute", "10.44.0.14"),
    ] {
        assert!(picture.contains(&format!("id=\"node-{node}\"")), "{node}");
        assert!(picture.contains(&format!(">{node}</text>")), "{node}");
        assert!(picture.contains(&format!(">role {role}</text>")), "{role}");
        assert!(picture.contains(&format!(">{ip}</text>")), "{ip}");
    }
    assert!(!picture.contains("compute3"));
    // Every element closed: as many `<g` as `</g>`, tags balanced.
    assert_eq!(
        picture.matches("<g ").count(),
        picture.matches("</g>").count()
    );
    let again = testbed(&["graph", "examples/slurm", "--scale", "compute=2"], &root);
    assert_eq!(again.stdout, svg.stdout, "the same plan, the same picture");

    let dot = testbed(&["graph", "examples/slurm", "--format", "dot"], &root);
    assert!(dot.status.success(), "{}", text(&dot.stderr));
    let graph = text(&dot.stdout);
    assert!(graph.starts_with("graph \"slurm\" {"), "{graph}");
    assert!(
        graph.contains("\"net:lan\" [shape=ellipse, label=\"lan\\n10.44.0.0/24\"];"),
        "{graph}"
    );
    assert!(
        graph.contains("\"node:compute4\" -- \"net:lan\" [label=\"10.44.0.16\"];"),
        "{graph}"
    );
    assert_eq!(graph.matches(" -- ").count(), 6, "{graph}");

    let bad = testbed(&["graph", "examples/slurm", "--format", "png"], &root);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
}

#[test]
fn usage_and_input_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("testbed.toml"),
        "[roles.ctl]\nmemory = \"512MB\"\n",
    )
    .expect("write");
    let out = testbed(&["check"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("error: bad memory unit \"MB\" in \"512MB\" (did you mean MiB?)"),
        "{err}"
    );
    assert!(err.contains("--> testbed.toml:2:10"), "{err}");
    assert!(
        err.contains("2 | memory = \"512MB\"\n  |          ^^^^^^^\n"),
        "{err}"
    );
    assert!(err.contains("= help: use a whole number"), "{err}");

    // Bad flags, a bad --scale, a missing composition: all usage errors.
    for args in [
        &["plan", "--frobnicate"][..],
        &["plan", "--scale", "compute"][..],
        &["plan", "--scale", "nosuch=2"][..],
        &["check", "missing/testbed.toml"][..],
    ] {
        let out = testbed(args, &repo_root().join("examples/slurm"));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("panicked"), "{args:?}");
    }
}

#[test]
fn check_json_reports_diagnostics() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("testbed.toml"),
        "[roles.a]\nnetworks = [\"wan\"]\n",
    )
    .expect("write");
    let out = testbed(&["check", "--json"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["message"], "unknown network \"wan\" in role \"a\"");
    assert_eq!(
        (
            d["location"]["line"].as_u64(),
            d["location"]["column"].as_u64()
        ),
        (Some(2), Some(13))
    );

    let ok = testbed(&["check", "examples/slurm", "--json"], &repo_root());
    assert!(ok.status.success());
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(
        (
            v["ok"].as_bool(),
            v["nodes"].as_u64(),
            v["templates"].as_u64()
        ),
        (Some(true), Some(6), Some(3))
    );
}

#[test]
fn init_writes_compositions_that_check() {
    for template in ["minimal", "slurm"] {
        let dir = tempfile::tempdir().expect("tmp");
        let target = dir.path().join(format!("my-{template}"));
        let out = testbed(
            &[
                "init",
                "--template",
                template,
                target.to_str().expect("utf8"),
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let check = testbed(&["check", target.to_str().expect("utf8")], dir.path());
        assert!(
            check.status.success(),
            "{template}: {}",
            text(&check.stderr)
        );
        assert!(
            text(&check.stdout).contains(&format!("cluster \"my-{template}\"")),
            "{}",
            text(&check.stdout)
        );

        // A second init refuses and changes nothing.
        let before = std::fs::read(target.join("testbed.toml")).expect("read");
        let again = testbed(
            &[
                "init",
                "--template",
                template,
                target.to_str().expect("utf8"),
            ],
            dir.path(),
        );
        assert_eq!(again.status.code(), Some(2));
        assert!(text(&again.stderr).contains("use --force to overwrite"));
        assert_eq!(
            std::fs::read(target.join("testbed.toml")).expect("read"),
            before
        );
    }
}

#[test]
fn schema_is_json_and_knows_every_key() {
    let out = testbed(&["schema"], &repo_root());
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let top: Vec<&String> = v["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    assert_eq!(
        top,
        ["cluster", "defaults", "roles", "secrets", "networks", "hosts", "test"]
    );
    assert_eq!(v["additionalProperties"], false);
    let role = &v["definitions"]["RawRole"];
    for key in [
        "count", "memory", "cpus", "packages", "services", "networks", "files", "host",
    ] {
        assert!(role["properties"].get(key).is_some(), "role key {key}");
    }
    assert_eq!(role["additionalProperties"], false);
}

#[test]
fn doctor_probes_the_host_and_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = testbed(&["doctor", "--json"], dir.path());
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let checks = checks.as_array().expect("a list of checks");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    for name in [
        "qemu",
        "kvm",
        "memory",
        "store",
        "image builder",
        "ssh-keygen",
        "libvirt",
        "containers",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    for c in checks {
        let level = c["level"].as_str().expect("level");
        assert!(["ok", "warn", "fail"].contains(&level), "{c}");
        assert!(!c["found"].as_str().unwrap_or("").is_empty(), "{c}");
        // Whatever is not fine comes with what to do about it.
        assert_eq!(level != "ok", c.get("fix").is_some(), "{c}");
    }
    let failed = checks.iter().any(|c| c["level"] == "fail");
    assert_eq!(out.status.code(), Some(if failed { 1 } else { 0 }));

    // A QEMU that is not there fails the check, with the fix, and exit 1.
    let out = testbed_command(&["doctor"], dir.path())
        .env("TESTBED_QEMU", dir.path().join("no-such-qemu"))
        .output()
        .expect("run");
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("FAIL qemu"), "{said}");
    assert!(said.contains("no-such-qemu"), "{said}");
}

#[test]
fn up_and_test_refuse_backend_flags_that_do_not_fit_before_touching_anything() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("testbed.toml"),
        "[cluster]\nname = \"p\"\n\n[[hosts]]\nname = \"far\"\nuri = \"qemu+ssh://far/system\"\n\n\
         [roles.ctl]\nhost = \"far\"\n\n[roles.compute]\ncount = 2\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("t.rhai"), "log(\"hello\");\n").expect("write");
    let run = |args: &[&str]| {
        testbed_command(args, dir.path())
            .env("TESTBED_STATE_DIR", state.path())
            .output()
            .expect("run")
    };
    for (args, message) in [
        (
            &["up", "--connect", "qemu:///system"][..],
            "error: --connect and --host are for --backend libvirt\n",
        ),
        (
            &["up", "--backend", "podman", "--host", "qemu:///system"][..],
            "error: --connect and --host are for --backend libvirt\n",
        ),
        (
            &["up", "--backend", "libvirt", "--connect", "a", "--host", "b"][..],
            "error: give either --connect URI (one host) or --host URI (repeatable), not both\n",
        ),
        (
            &["up", "--backend", "libvirt", "--host", "qemu:///system"][..],
            "error: node ctl is pinned to host far (qemu+ssh://far/system), which is not among the hosts given: qemu:///system\n",
        ),
        (
            &["test", "--script", "t.rhai", "--connect", "qemu:///system"][..],
            "error: --connect and --host are for --backend libvirt\n",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).ends_with(message), "{args:?}: {}", text(&out.stderr));
    }
    let entries = std::fs::read_dir(state.path()).expect("state dir").count();
    assert_eq!(entries, 0, "no state was made");

    let out = run(&["down"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "cluster p is not running\n");
}

#[test]
fn a_closed_stdout_ends_every_verb_quietly_with_the_sigpipe_status() {
    // `testbed plan --json | head -1`: the reader is gone before the first
    // write. Every verb ends at once, says nothing, and exits 141 (128 +
    // SIGPIPE), as a shell reports for `ls | head`.
    let verbs: [&[&str]; 6] = [
        &["plan", "examples/slurm", "--json"],
        &["plan", "examples/slurm"],
        &["graph", "examples/slurm", "--scale", "compute=64"],
        &["check", "examples/slurm", "--json"],
        &["schema"],
        &["--help"],
    ];
    for args in verbs {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = testbed_command(args, &repo_root())
            .stdout(writer)
            .output()
            .expect("run testbed");
        let said = text(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "testbed {args:?}: {said}");
        assert!(said.is_empty(), "testbed {args:?} said: {said}");
    }
}

#[test]
fn a_state_directory_someone_else_could_control_is_refused_by_every_verb() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // A root others may write in: whoever planted a cluster folder there
    // (an API socket, an SSH config) must not get the verbs' commands.
    let root = tmp.path().join("planted");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let example = repo_root().join("examples/slurm");
    for args in [
        vec!["status"],
        vec!["down"],
        vec!["exec", "ctl", "--", "true"],
        vec!["ssh-config"],
        vec!["logs", "ctl"],
        vec!["snapshot", "ls"],
        vec!["up"],
    ] {
        let out = testbed_command(&args, &example)
            .env("TESTBED_STATE_DIR", &root)
            .output()
            .expect("run testbed");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("refusing the state directory") && err.contains("others may write in it"),
            "{args:?}: {err}"
        );
    }
}
