//! The HTML report as a browser shows it: a report of real plans' pictures
//! and real driver reports is written, then opened from disk by headless
//! Chromium (scripts/host-packages.txt), its DOM read and a page
//! photographed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed_ci::{html, slug, Attempt, Entry, Status, Summary};
use testbed_driver::{Captured, TestCase, TestReport};
use testbed_model::{check, graph, Plan, Scale};
use testbed_test_support::chromium::{self, hex_colour, Picture};

/// The plan of a composition written to `dir`.
fn plan(dir: &Path, toml: &str) -> Plan {
    std::fs::create_dir_all(dir).expect("composition folder");
    let path = dir.join("testbed.toml");
    std::fs::write(&path, toml).expect("testbed.toml");
    check(&path, &Scale::default())
        .unwrap_or_else(|d| panic!("{toml} is not valid: {d:?}"))
        .1
}

fn case(name: &str, failure: Option<&str>) -> TestCase {
    TestCase {
        name: name.into(),
        duration: Duration::from_millis(1250),
        passed: failure.is_none(),
        failure: failure.map(str::to_owned),
        output: vec![
            Captured::Log {
                at: 0.25,
                message: format!("starting {name}"),
            },
            Captured::Command {
                at: 0.5,
                node: "server".into(),
                command: "systemctl is-active sshd".into(),
                status: "exit status 0".into(),
                stdout: "active\n".into(),
                stderr: String::new(),
                duration: Duration::from_millis(40),
            },
        ],
    }
}

fn report(cluster: &str, cases: Vec<TestCase>) -> TestReport {
    TestReport {
        name: cluster.into(),
        script: "test.rhai".into(),
        accel: "kvm".into(),
        timeout_factor: 1.0,
        started_at: 1_714_566_896.0,
        duration: Duration::from_secs(4),
        passed: cases.iter().all(|c| c.passed),
        failure: None,
        cases,
        output: vec![],
    }
}

/// An entry of `plan`, its picture written to `OUT/<slug>/topology.svg`.
fn entry(out: &Path, name: &str, plan: &Plan, status: Status) -> Entry {
    let dir = slug(name);
    std::fs::create_dir_all(out.join(&dir)).expect("entry folder");
    let topology = PathBuf::from(&dir).join("topology.svg");
    std::fs::write(out.join(&topology), graph::svg(plan)).expect("topology.svg");
    Entry {
        name: name.into(),
        composition: PathBuf::from(name).join("testbed.toml"),
        cluster: plan.cluster.clone(),
        status,
        reason: None,
        key: Some(format!("sha256:{}", "ab".repeat(32))),
        duration: 0.0,
        topology: Some(topology),
        nodes: plan
            .nodes
            .iter()
            .map(|n| format!("{} ({})", n.name, n.role))
            .collect(),
        attempts: vec![],
    }
}

/// An attempt whose files (log, JUnit, artifacts) exist under `OUT`.
fn attempt(out: &Path, entry: &Entry, report: TestReport, artifacts: &[&str]) -> Attempt {
    let dir = PathBuf::from(slug(&entry.name)).join("1");
    std::fs::create_dir_all(out.join(&dir).join("artifacts")).expect("attempt folder");
    let log = dir.join("log.txt");
    std::fs::write(out.join(&log), "testbed test: ...\n").expect("log.txt");
    let junit = dir.join("junit.xml");
    std::fs::write(out.join(&junit), report.to_junit()).expect("junit.xml");
    let artifacts: Vec<PathBuf> = artifacts
        .iter()
        .map(|name| {
            let path = dir.join("artifacts").join(name);
            std::fs::write(out.join(&path), "[    0.000000] Linux version\n").expect("artifact");
            path
        })
        .collect();
    let passed = report.passed;
    Attempt {
        number: 1,
        status: if passed {
            Status::Passed
        } else {
            Status::Failed
        },
        duration: 12.5,
        exit_code: Some(if passed { 0 } else { 1 }),
        log,
        report: Some(report),
        junit: Some(junit),
        artifacts,
        reason: None,
    }
}

/// The fill colour of each node box of a `graph::svg` picture, by node.
fn node_fills(svg: &str) -> Vec<(String, String)> {
    svg.split("<g class=\"node\" id=\"node-")
        .skip(1)
        .map(|g| {
            let name = g.split('"').next().expect("node id").to_owned();
            let fill = g
                .split("fill=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("the node box's fill");
            (name, fill.to_owned())
        })
        .collect()
}

#[test]
fn the_report_renders_in_a_browser_with_its_entries_and_topologies() {
    let src = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let out = out.path();

    let web = plan(
        &src.path().join("web"),
        "[cluster]\nname = \"a\"\n[roles.server]\n[roles.client]\ncount = 2\n",
    );
    let etcd = plan(
        &src.path().join("db/etcd"),
        "[cluster]\nname = \"etcd\"\n[roles.member]\ncount = 3\n[roles.client]\n",
    );

    let mut passed = entry(out, "web", &web, Status::Passed);
    let a = attempt(
        out,
        &passed,
        report("a", vec![case("ping", None), case("http", None)]),
        &[],
    );
    passed.duration = a.duration;
    passed.attempts = vec![a];

    let mut failed = entry(out, "db/etcd", &etcd, Status::Failed);
    let a = attempt(
        out,
        &failed,
        report(
            "etcd",
            vec![
                case("elect a leader", None),
                case(
                    "survive a partition",
                    Some("test.rhai:12:5: expected 3 members, got 2 <member3 lost>"),
                ),
            ],
        ),
        &["member3.console.log"],
    );
    failed.duration = a.duration;
    failed.attempts = vec![a];

    // A cached entry with a name that needs escaping, in text and links.
    let mut cached = entry(out, "odd & <name>", &web, Status::Cached);
    cached.reason = Some("passed with the same inputs at 2024-05-01T12:34:56Z".into());

    let summary = Summary {
        dir: src.path().to_path_buf(),
        testbed_version: "0.1.0".into(),
        started_at: 1_714_566_896.0,
        duration: 30.0,
        repeat: 1,
        interrupted: false,
        entries: vec![passed, failed, cached],
    };
    let written = html::write(out, &summary).expect("write the report");
    assert_eq!(written.len(), 4);
    let index = out.join("index.html");
    assert_eq!(written[0], index);

    // The helper other tests use: the index's rows and statuses, and each
    // page's inlined topology with its nodes.
    chromium::check_report(
        &index,
        &[
            ("web", "passed"),
            ("db/etcd", "failed"),
            ("odd & <name>", "cached"),
        ],
    );

    // The index: totals and the last attempts' subtests.
    let dom = chromium::dump_dom(&index);
    assert!(dom.contains("<title>testbed ci: "), "{dom}");
    assert!(dom.contains("1 passed</span>"), "{dom}");
    assert!(dom.contains("1 failed</span>"), "{dom}");
    assert!(dom.contains("1 cached</span>"), "{dom}");
    assert!(dom.contains("2024-05-01T12:34:56Z"), "{dom}");
    assert!(dom.contains("<td>2 passed, 0 failed</td>"), "{dom}");
    assert!(dom.contains("<td>1 passed, 1 failed</td>"), "{dom}");

    // The failed entry's page: its subtests, failure, output, links.
    let page = out.join(slug("db/etcd")).join("index.html");
    let dom = chromium::dump_dom(&page);
    assert!(dom.contains(">FAILED</td>"), "{dom}");
    assert!(
        dom.contains("expected 3 members, got 2 &lt;member3 lost&gt;</pre>"),
        "{dom}"
    );
    assert!(
        dom.contains("<details class=\"output\" open=\"\">"),
        "{dom}"
    );
    assert!(dom.contains("systemctl is-active sshd"), "{dom}");
    for file in [
        "db--etcd/1/log.txt",
        "db--etcd/1/junit.xml",
        "db--etcd/1/artifacts/member3.console.log",
    ] {
        assert!(
            dom.contains(&format!("href=\"../{file}\"")),
            "{file}: {dom}"
        );
        assert!(out.join(file).is_file(), "{file}");
    }
    for node in &etcd.nodes {
        assert!(dom.contains(&format!("<li>{} ({})</li>", node.name, node.role)));
    }

    // A picture of it: the topology is drawn, each role's boxes in its
    // colour (read from the picture's SVG), each box mostly filled.
    let svg = graph::svg(&etcd);
    let fills = node_fills(&svg);
    assert_eq!(fills.len(), etcd.nodes.len(), "{svg}");
    let picture = Picture::decode(&chromium::screenshot(&page, 1200, 1000));
    assert_eq!((picture.width, picture.height), (1200, 1000));
    assert!(picture.colours() > 10, "the screenshot is blank");
    for role in &etcd.roles {
        let fill = &fills
            .iter()
            .find(|(node, _)| {
                etcd.nodes
                    .iter()
                    .any(|n| &n.name == node && n.role == role.name)
            })
            .expect("a node of the role")
            .1;
        let boxes = etcd.nodes.iter().filter(|n| n.role == role.name).count();
        let found = picture.find(hex_colour(fill), 2);
        // A box is 130 × 64 pixels; its text covers a little of it.
        assert!(
            found.len() > boxes * 130 * 64 / 2,
            "role {}: {} pixels of {fill} for {boxes} boxes",
            role.name,
            found.len()
        );
        // All below the page's header, in the picture's width.
        assert!(found.iter().all(|&(x, y)| y > 100 && x < 800), "{fill}");
    }
}
