//! Reports parse back (JUnit XML with a real XML parser, JSON with serde),
//! and artifacts are collected even from a cluster with a node down.

mod common;

use std::sync::Arc;

use common::{cluster, driver};
use quick_xml::events::Event as Xml;
use quick_xml::Reader;
use testbed_api::NodeState;
use testbed_driver::artifacts;
use testbed_driver::Timeouts;

/// An element's name and attributes.
type Tag = (String, Vec<(String, String)>);

/// Parses `xml` completely; returns (element name, attributes) of every
/// start tag and the unescaped text of every element named `system-out`
/// or `failure`.
fn parse(xml: &str) -> (Vec<Tag>, Vec<String>) {
    let mut reader = Reader::from_str(xml);
    let mut tags = Vec::new();
    let mut texts = Vec::new();
    let mut depth = 0i32;
    let mut in_text = false;
    loop {
        match reader.read_event() {
            Ok(Xml::Start(e)) | Ok(Xml::Empty(e)) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                in_text = name == "system-out" || name == "failure";
                let attrs = e
                    .attributes()
                    .map(|a| {
                        let a = a.expect("well-formed attribute");
                        (
                            String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                            a.unescape_value().expect("valid escapes").into_owned(),
                        )
                    })
                    .collect();
                tags.push((name, attrs));
                depth += 1;
            }
            Ok(Xml::End(_)) => {
                depth -= 1;
                in_text = false;
            }
            Ok(Xml::Text(t)) if in_text => {
                texts.push(t.unescape().expect("valid text").into_owned())
            }
            Ok(Xml::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("invalid XML at {}: {e}\n{xml}", reader.buffer_position()),
        }
    }
    // Empty elements count as opened but never closed; the rest balance.
    let empty = xml.matches("/>").count() as i32;
    assert_eq!(depth, empty, "unbalanced XML:\n{xml}");
    (tags, texts)
}

fn attr<'a>(attrs: &'a [(String, String)], key: &str) -> &'a str {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no attribute {key} in {attrs:?}"))
}

#[test]
fn junit_xml_is_valid_and_escapes_everything() {
    let c = Arc::new(
        common::FakeCluster::new("kvm", &[("ctl", "ctl")]).with_handler(|_, cmd, _| {
            if cmd.starts_with("nasty") {
                (
                    2,
                    "<tag attr=\"x\"> & ]]> \u{1b}[31mred\u{0}\n".into(),
                    "'quoted' \u{7}bell\n".into(),
                )
            } else {
                (0, "ok & <fine>\n".into(), String::new())
            }
        }),
    );
    let (mut d, _) = driver(Arc::clone(&c), "t.rhai".into());
    let report = d.run(
        r#"
        subtest("a <b> & \"c\"", || { ctl.succeed("echo <x>"); log("</system-out>"); });
        subtest("breaks", || { ctl.succeed("nasty & <cmd>"); });
        "#,
    );
    assert!(!report.passed);
    let xml = report.to_junit();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
    let (tags, texts) = parse(&xml);
    let suite = tags.iter().find(|(n, _)| n == "testsuite").unwrap();
    assert_eq!(attr(&suite.1, "name"), "fake");
    assert_eq!(attr(&suite.1, "tests"), "2");
    assert_eq!(attr(&suite.1, "failures"), "1");
    assert!(attr(&suite.1, "time").parse::<f64>().is_ok());
    let cases: Vec<&str> = tags
        .iter()
        .filter(|(n, _)| n == "testcase")
        .map(|(_, a)| attr(a, "name"))
        .collect();
    assert_eq!(cases, ["a <b> & \"c\"", "breaks"]);
    let failure = tags.iter().find(|(n, _)| n == "failure").unwrap();
    assert!(
        attr(&failure.1, "message")
            .starts_with("t.rhai:3:36: command `nasty & <cmd>` on node ctl failed"),
        "{:?}",
        failure.1
    );
    let all = texts.join("\n");
    assert!(all.contains("</system-out>"), "{all}");
    assert!(
        all.contains("<tag attr=\"x\"> & ]]> \u{FFFD}[31mred\u{FFFD}"),
        "{all}"
    );
    assert!(all.contains("'quoted' \u{FFFD}bell"), "{all}");
    assert!(all.contains("ctl$ echo <x>"), "{all}");
}

#[test]
fn json_report_round_trips() {
    let c = cluster("tcg");
    let (mut d, _) = driver(Arc::clone(&c), "t.rhai".into());
    let report =
        d.run(r#"subtest("one", || { ctl.succeed("echo hi"); }); compute1.succeed("false");"#);
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(v["passed"], false);
    assert_eq!(v["accel"], "tcg");
    assert_eq!(v["timeout_factor"], 5.0);
    assert_eq!(v["cases"][0]["name"], "one");
    assert_eq!(v["cases"][0]["passed"], true);
    assert_eq!(v["cases"][0]["output"][0]["kind"], "command");
    assert_eq!(v["cases"][0]["output"][0]["stdout"], "hi\n");
    // The failure outside subtests is its own case, named after the script.
    assert_eq!(v["cases"][1]["name"], "t.rhai");
    assert_eq!(v["failure"]["location"]["line"], 1);
    assert!(v["failure"]["message"]
        .as_str()
        .unwrap()
        .starts_with("command `false` on node compute1 failed"));
}

#[test]
fn artifacts_cope_with_a_node_that_is_down() {
    let mut fake = common::FakeCluster::new("kvm", &[("ctl", "ctl"), ("compute1", "compute")])
        .with_handler(|node, cmd, _| {
            if cmd.contains("slurmd") {
                (1, String::new(), "no journal files were found\n".into())
            } else {
                (0, format!("journal of {node}: {cmd}\n"), String::new())
            }
        });
    fake.services
        .insert("ctl".into(), vec!["munge.service".into()]);
    fake.services
        .insert("compute1".into(), vec!["slurmd".into()]);
    let c = Arc::new(fake);
    c.set_state("compute1", NodeState::Stopped);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("artifacts");
    let a = artifacts::collect(c.as_ref(), &dir, &Timeouts::default()).unwrap();
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    assert_eq!(read("ctl/console.log"), "console of ctl\n");
    assert_eq!(read("compute1/console.log"), "console of compute1\n");
    assert!(read("ctl/testbed-agent.service.journal")
        .contains("journalctl --no-pager -o short-precise -u testbed-agent.service"));
    assert!(read("ctl/munge.service.journal").contains("-u munge.service"));
    assert!(!dir.join("compute1/testbed-agent.service.journal").exists());
    assert_eq!(read("compute1/state.txt"), "stopped\n");
    assert!(read("status.json").contains("\"compute1\""));
    assert_eq!(read("faults.txt"), "no faults were applied\n");
    assert_eq!(
        a.problems,
        ["node compute1 is stopped: no journal (its console log is all there is)"]
    );
    assert!(read("problems.txt").contains("compute1 is stopped"));
    // The journal commands ran on the ready node only.
    let s = c.state.lock().unwrap();
    assert!(s.commands.iter().all(|(n, _, _)| n == "ctl"));
    assert_eq!(s.commands.len(), 2);
    drop(s);

    // A node up again, whose service has no journal, and an agent that
    // fails: recorded, not fatal.
    c.set_state("compute1", NodeState::Ready);
    let a = artifacts::collect(c.as_ref(), &dir, &Timeouts::default()).unwrap();
    assert_eq!(a.problems.len(), 1, "{:?}", a.problems);
    assert!(a.problems[0].starts_with(
        "node compute1: journalctl -u slurmd ended with exit status 1: no journal files"
    ));
    c.set_state("ctl", NodeState::Failed);
    std::fs::remove_file(c.dir.path().join("ctl.console.log")).unwrap();
    let a = artifacts::collect(c.as_ref(), &dir, &Timeouts::default()).unwrap();
    assert!(
        a.problems
            .iter()
            .any(|p| p.starts_with("node ctl: cannot read the console log")),
        "{:?}",
        a.problems
    );
    assert!(a.problems.iter().any(|p| p.starts_with("node ctl: cannot read the journal of testbed-agent.service: node ctl is not running (failed)")), "{:?}", a.problems);
}

#[test]
fn the_agent_unit_is_the_one_images_install() {
    assert!(
        testbed_image::rootfs::AGENT_UNIT_PATH.ends_with(&format!("/{}", artifacts::AGENT_UNIT))
    );
}
