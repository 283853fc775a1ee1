//! The script API against an in-memory cluster: each function's behaviour,
//! error messages and their locations, subtest reports, time limits.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cluster, driver, driver_limited, FakeCluster};
use testbed_api::{Fault, LinkChange, NodeState, PowerAction, WaitFor};
use testbed_driver::{check_script, Captured, Event, TestReport};

/// Runs `script` on the standard fake cluster under TCG settings unless
/// `accel` says otherwise.
fn run_on(c: &Arc<FakeCluster>, script: &str) -> TestReport {
    let (mut d, _) = driver(Arc::clone(c), "t.rhai".into());
    d.run(script)
}

fn failure(report: &TestReport) -> String {
    report
        .failure
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| panic!("the script passed: {report:#?}"))
}

fn passes(c: &Arc<FakeCluster>, script: &str) -> TestReport {
    let report = run_on(c, script);
    assert!(report.passed, "{:?}", report.failure);
    report
}

#[test]
fn nodes_are_variables_and_succeed_returns_stdout() {
    let c = cluster("kvm");
    passes(
        &c,
        r#"
        let out = ctl.succeed("echo hello");
        assert(out == "hello\n", out);
        assert(compute1.name == "compute1");
        assert(compute1.role == "compute");
        assert(node("edge-1").succeed("echo x") == "x\n");
        let names = [];
        for n in role("compute") { names.push(n.name); }
        assert(names == ["compute1", "compute2"], names);
        assert(nodes().len() == 4);
        assert(node("ctl") == ctl);
        "#,
    );
    let s = c.state.lock().unwrap();
    let cmds: Vec<(&str, &str)> = s
        .commands
        .iter()
        .map(|(n, c, _)| (n.as_str(), c.as_str()))
        .collect();
    assert_eq!(cmds, [("ctl", "echo hello"), ("edge-1", "echo x")]);
    // KVM: the default command timeout is not stretched.
    assert_eq!(s.commands[0].2, Duration::from_secs(300));
}

#[test]
fn succeed_failure_names_node_command_status_and_output_at_the_call() {
    let c = cluster("kvm");
    let report = run_on(
        &c,
        "let a = 1;\nlet out =   ctl.succeed(\"warn disk full\");\n",
    );
    let f = report.failure.clone().unwrap();
    let loc = f.location.clone().unwrap();
    assert_eq!((loc.line, loc.column), (2, 17), "{f}");
    let text = failure(&report);
    assert!(
        text.starts_with("t.rhai:2:17: command `warn disk full` on node ctl failed: exit status 3"),
        "{text}"
    );
    assert!(text.contains("stdout:\nsome output"), "{text}");
    assert!(text.contains("stderr:\ndisk full"), "{text}");
    // The failure outside any subtest is a case of its own.
    assert_eq!(report.cases.len(), 1);
    assert_eq!(report.cases[0].name, "t.rhai");
    assert!(!report.cases[0].passed);
}

#[test]
fn fail_and_execute() {
    let c = cluster("kvm");
    passes(
        &c,
        r#"
        ctl.fail("false");
        let r = ctl.execute("warn oops");
        assert(r.status == 3 && r.stdout == "some output\n" && r.stderr == "oops\n", r);
        assert(ctl.execute("hang").status == 124);
        "#,
    );
    let text = failure(&run_on(&c, r#"ctl.fail("echo fine")"#));
    assert!(
        text.contains("command `echo fine` on node ctl succeeded but was expected to fail"),
        "{text}"
    );
    let text = failure(&run_on(&c, r#"ctl.fail("hang", "2s")"#));
    assert!(text.contains("killed after its timeout of 2s"), "{text}");
    // A command the shell cannot find did not fail: it never ran.
    let text = failure(&run_on(&c, r#"ctl.fail("sinfo")"#));
    assert!(
        text.contains("command `sinfo` on node ctl could not run (exit status 127: not found)"),
        "{text}"
    );
    assert!(text.contains("sh: sinfo: not found"), "{text}");
}

#[test]
fn wait_until_retries_and_times_out_with_the_last_attempt() {
    let c = cluster("kvm");
    passes(
        &c,
        r#"
        let out = compute1.wait_until_succeeds("third-time");
        assert(out == "run 3\n", out);
        compute2.wait_until_fails("false", 5);
        "#,
    );
    assert_eq!(
        c.state.lock().unwrap().runs[&("compute1".into(), "third-time".into())],
        3
    );
    let start = Instant::now();
    let text = failure(&run_on(&c, r#"ctl.wait_until_succeeds("false", "200ms")"#));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        text.contains(
            "command `false` on node ctl did not succeed within 200ms; last attempt: exit status 1"
        ),
        "{text}"
    );
    let text = failure(&run_on(&c, r#"ctl.wait_until_fails("true", 0.1)"#));
    assert!(text.contains("did not fail within 100ms"), "{text}");
}

#[test]
fn waits_go_to_the_agent_with_the_factor_applied() {
    let c = cluster("tcg");
    c.state
        .lock()
        .unwrap()
        .units
        .insert("ctl".into(), ["sshd".to_string()].into());
    std::fs::write(c.dir.path().join("data.txt"), "payload").unwrap();
    let script = c.dir.path().join("t.rhai");
    let (mut d, _) = driver(Arc::clone(&c), script);
    assert_eq!(d.timeout_factor(), 5.0);
    let report = d.run(
        r#"
        ctl.wait_for_unit("sshd");
        ctl.wait_for_open_port(22, 2);
        ctl.copy_to("data.txt", "/tmp/data");
        ctl.wait_for_file("/tmp/data", "1m");
        ctl.copy_from("/tmp/data", "out/copy.txt");
        "#,
    );
    assert!(report.passed, "{:?}", report.failure);
    let s = c.state.lock().unwrap();
    // Defaults and the script's own timeouts are both multiplied by 5.
    let waits: Vec<Duration> = s.waits.iter().map(|w| w.2).collect();
    assert_eq!(
        waits,
        [
            Duration::from_secs(1500),
            Duration::from_secs(10),
            Duration::from_secs(300)
        ]
    );
    assert_eq!(s.waits[1].1, WaitFor::Port { port: 22 });
    let (mode, data) = &s.files[&("ctl".into(), "/tmp/data".into())];
    assert_eq!(data, b"payload");
    assert_eq!(mode & 0o600, 0o600);
    drop(s);
    // Relative host paths are relative to the script's folder.
    let copied = std::fs::read(c.dir.path().join("out/copy.txt")).unwrap();
    assert_eq!(copied, b"payload");

    let text = failure(&run_on(&c, r#"ctl.wait_for_unit("slurmd", "1s")"#));
    assert!(
        text.starts_with(
            "t.rhai:1:5: wait_for_unit slurmd on node ctl (timeout 5s (timeout factor 5)):"
        ),
        "{text}"
    );
    let text = failure(&run_on(&c, "ctl.wait_for_open_port(70000)"));
    assert!(
        text.contains("port must be within 1..65535, got 70000"),
        "{text}"
    );
    let text = failure(&run_on(&c, r#"ctl.copy_to("/nonexistent/x", "/x")"#));
    assert!(
        text.contains("copy_to: cannot read /nonexistent/x"),
        "{text}"
    );
    let text = failure(&run_on(&c, r#"ctl.copy_from("/missing", "/tmp/x")"#));
    assert!(
        text.contains("copy_from /missing on node ctl: /missing: no such file"),
        "{text}"
    );
}

#[test]
fn durations_accept_numbers_and_strings() {
    let c = cluster("kvm");
    let start = Instant::now();
    passes(&c, r#"sleep(0); sleep(0.01); sleep("20ms"); sleep("0s");"#);
    assert!(start.elapsed() >= Duration::from_millis(30));
    let text = failure(&run_on(&c, r#"sleep("soon")"#));
    assert!(text.contains("sleep: bad duration \"soon\""), "{text}");
    let text = failure(&run_on(&c, "sleep(-1)"));
    assert!(text.contains("sleep must not be negative"), "{text}");
    let text = failure(&run_on(&c, "ctl.succeed(\"true\", [1])"));
    assert!(
        text.contains("timeout must be a number of seconds or a string"),
        "{text}"
    );
}

#[test]
fn power_changes_wait_for_the_node() {
    let c = cluster("kvm");
    let text = failure(&run_on(
        &c,
        "compute1.crash();\ncompute1.succeed(\"true\");",
    ));
    assert!(text.starts_with("t.rhai:2:10: cannot run `true` on node compute1: node compute1 is not running (stopped)"), "{text}");
    assert_eq!(c.state_of("compute1"), NodeState::Stopped);
    passes(
        &c,
        r#"
        compute1.start();
        assert(compute1.succeed("echo up") == "up\n");
        compute2.shutdown();
        ctl.reboot();
        ctl.succeed("true");
        start_all();
        compute2.succeed("true");
        ctl.start();
        "#,
    );
    assert_eq!(c.state_of("compute2"), NodeState::Ready);
    let power: Vec<(String, PowerAction)> = c.state.lock().unwrap().power.clone();
    assert_eq!(
        power,
        [
            ("compute1".into(), PowerAction::Crash),
            ("compute1".into(), PowerAction::Start),
            ("compute2".into(), PowerAction::Shutdown),
            ("ctl".into(), PowerAction::Reboot),
            // start_all starts only the stopped node; ctl.start() on a
            // ready node does nothing.
            ("compute2".into(), PowerAction::Start),
        ]
    );
    c.state.lock().unwrap().broken.insert("ctl".into());
    let text = failure(&run_on(&c, "ctl.reboot()"));
    assert!(
        text.contains("node ctl did not come up (failed): unit x.service failed; console log: "),
        "{text}"
    );
    let text = failure(&run_on(&c, "compute1.crash(); compute1.crash()"));
    assert!(
        text.contains("node compute1 is not running (stopped)"),
        "{text}"
    );
}

#[test]
fn faults_reach_the_switch() {
    let c = cluster("kvm");
    passes(
        &c,
        r#"
        compute1.block();
        compute1.unblock();
        partition([[ctl, "compute1"], [compute2, node("edge-1")]]);
        heal();
        let l = link(ctl, "compute2").delay("50ms", "10ms").loss(0.1);
        l.rate("10mbit").down().up().clear();
        link("ctl", compute1).loss("5%").rate(0).delay(0.2);
        let h = fault_history();
        assert(h.len() == 13, h);
        "#,
    );
    let faults = c.state.lock().unwrap().faults.clone();
    let link = |change: LinkChange| Fault::Link {
        a: "ctl".into(),
        b: "compute2".into(),
        change,
    };
    let d = LinkChange::default;
    assert_eq!(
        faults[..10],
        [
            Fault::Block {
                node: "compute1".into()
            },
            Fault::Unblock {
                node: "compute1".into()
            },
            Fault::Partition {
                groups: vec![
                    vec!["ctl".into(), "compute1".into()],
                    vec!["compute2".into(), "edge-1".into()]
                ]
            },
            Fault::Heal,
            link(LinkChange {
                delay_ms: Some(50.0),
                jitter_ms: Some(10.0),
                ..d()
            }),
            link(LinkChange {
                loss: Some(0.1),
                ..d()
            }),
            link(LinkChange {
                rate_bps: Some(10_000_000),
                ..d()
            }),
            link(LinkChange {
                down: Some(true),
                ..d()
            }),
            link(LinkChange {
                down: Some(false),
                ..d()
            }),
            link(LinkChange { clear: true, ..d() }),
        ]
    );
    let Fault::Link { change, .. } = &faults[10] else {
        panic!("{faults:?}")
    };
    assert_eq!(change.loss, Some(0.05));
    let Fault::Link { change, .. } = &faults[11] else {
        panic!("{faults:?}")
    };
    assert_eq!(change.rate_bps, Some(0));

    for (script, want) in [
        (
            r#"link(ctl, ctl)"#,
            "link needs two different nodes, got ctl twice",
        ),
        (
            r#"link(ctl, "nope")"#,
            "no node nope in cluster fake (nodes: ctl, compute1, compute2, edge-1)",
        ),
        (r#"link(ctl, compute1).rate("fast")"#, "bad rate \"fast\""),
        (
            r#"link(ctl, compute1).loss(2.0)"#,
            "loss must be a fraction from 0 to 1, got 2",
        ),
        (
            r#"link(ctl, compute1).delay("10ms", "1s")"#,
            "jitter (1s) must not exceed the delay (10ms)",
        ),
        (r#"partition([ctl])"#, "partition takes an array of groups"),
        (
            r#"partition([[ctl, 3]])"#,
            "expected a node or a node's name, got i64",
        ),
        (
            r#"role("nope")"#,
            "no role nope in cluster fake (roles: ctl, compute, edge)",
        ),
    ] {
        let text = failure(&run_on(&c, script));
        assert!(text.starts_with("t.rhai:1:"), "{text}");
        assert!(text.contains(want), "{script}: {text}");
    }
}

#[test]
fn subtests_become_cases_with_their_output() {
    let c = cluster("kvm");
    let (mut d, events) = driver(Arc::clone(&c), "dir/t.rhai".into());
    let report = d.run(
        r#"
        log("before");
        subtest("first", || {
            log("inside first");
            ctl.succeed("echo one");
        });
        let v = subtest("second", || {
            print("printed");
            subtest("nested", || { compute1.succeed("true"); });
            42
        });
        assert(v == 42);
        subtest("third", || {
            compute2.succeed("false");
        });
        subtest("never", || {});
        "#,
    );
    assert!(!report.passed);
    let names: Vec<(&str, bool)> = report
        .cases
        .iter()
        .map(|c| (c.name.as_str(), c.passed))
        .collect();
    // The failure inside "third" ends the script and is not reported twice.
    assert_eq!(
        names,
        [
            ("first", true),
            ("second/nested", true),
            ("second", true),
            ("third", false)
        ]
    );
    let first = &report.cases[0];
    assert!(matches!(&first.output[0], Captured::Log { message, .. } if message == "inside first"));
    assert!(matches!(&first.output[1],
        Captured::Command { node, command, status, stdout, .. }
        if node == "ctl" && command == "echo one" && status == "exit status 0" && stdout == "one\n"));
    let second = &report.cases[2];
    assert!(matches!(&second.output[0], Captured::Log { message, .. } if message == "printed"));
    let third = &report.cases[3];
    let f = third.failure.as_deref().unwrap();
    assert!(
        f.starts_with("dir/t.rhai:14:22: command `false` on node compute2 failed"),
        "{f}"
    );
    assert_eq!(report.failure.as_ref().unwrap().to_string(), f);
    assert!(matches!(&report.output[0], Captured::Log { message, .. } if message == "before"));

    let events = events.lock().unwrap();
    assert!(events.contains(&Event::SubtestStarted {
        name: "second/nested".into()
    }));
    assert!(events.contains(&Event::Log {
        message: "before".into()
    }));
    assert!(events.iter().any(|e| matches!(e,
        Event::SubtestFinished { name, failure: Some(_), .. } if name == "third")));
    assert!(events.iter().any(|e| matches!(e,
        Event::CommandFinished { node, result: Ok(s), .. } if node == "compute2" && s.code == Some(1))));
}

#[test]
fn a_passing_script_without_subtests_is_one_passing_case() {
    let c = cluster("kvm");
    let report = passes(&c, r#"ctl.succeed("true"); log(ctl.succeed("echo done"));"#);
    assert_eq!(report.cases.len(), 1);
    assert!(report.cases[0].passed);
    assert_eq!(report.cases[0].output.len(), 3);
    // Logged command output loses its final newline.
    assert!(
        matches!(&report.cases[0].output[2], Captured::Log { message, .. } if message == "done")
    );
    assert!(report.output.is_empty());
}

#[test]
fn the_time_limit_stops_an_infinite_loop() {
    let c = cluster("kvm");
    let (mut d, _) = driver_limited(
        Arc::clone(&c),
        "t.rhai".into(),
        Some(Duration::from_millis(300)),
    );
    let start = Instant::now();
    let report = d.run("let x = 0;\nsubtest(\"spin\", || {\n    loop { x += 1; }\n});\n");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let text = failure(&report);
    // A stop inside a closure points at the call that ran the closure.
    assert!(text.starts_with("t.rhai:2:1: "), "{text}");
    assert!(
        text.contains("the test exceeded its time limit of 300ms"),
        "{text}"
    );
    assert_eq!(report.cases[0].name, "spin");
    assert!(!report.cases[0].passed);

    // Blocking calls are capped at what is left.
    let start = Instant::now();
    let report = d.run("sleep(60);");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        failure(&report).contains("the test exceeded its time limit of 300ms (during sleep 1m)")
    );
    let report = d.run(r#"ctl.wait_until_succeeds("false", 60);"#);
    assert!(
        failure(&report).contains("exceeded its time limit"),
        "{}",
        failure(&report)
    );
    // A run after a stopped one starts with a fresh limit.
    assert!(d.run("sleep(0.05)").passed);
}

#[test]
fn errors_point_at_line_and_column() {
    let c = cluster("kvm");
    let text = failure(&run_on(&c, "let x = 1;\nlet y = (x + ;\n"));
    assert!(text.starts_with("t.rhai:2:"), "{text}");
    assert!(text.contains("syntax error"), "{text}");
    // Strict variables: a typo in a node name is caught before anything runs.
    let text = failure(&run_on(&c, "ctl.succeed(\"true\");\ncomptue1.crash();\n"));
    assert!(
        text.starts_with("t.rhai:2:1: syntax error: undefined variable: comptue1"),
        "{text}"
    );
    assert!(c.state.lock().unwrap().commands.is_empty());
    let text = failure(&run_on(&c, "  assert(1 == 2, \"math\");"));
    assert_eq!(text, "t.rhai:1:3: assertion failed: math");
    let text = failure(&run_on(&c, "fn f(n) { n.frobnicate() }\nf(ctl);"));
    assert!(
        text.starts_with("t.rhai:1:13: function not found: frobnicate"),
        "{text}"
    );
    let text = failure(&run_on(&c, "throw \"custom\";"));
    assert_eq!(text, "t.rhai:1:1: custom");
    let text = failure(&run_on(&c, "node(\"ghost\")"));
    assert!(text.contains("no node ghost in cluster fake"), "{text}");
}

#[test]
fn scripts_are_checked_before_the_cluster_exists() {
    let nodes = vec!["ctl".to_string(), "edge-1".to_string()];
    assert!(check_script(
        "ctl.succeed(\"x\"); node(\"edge-1\").crash();",
        "t.rhai".as_ref(),
        &nodes
    )
    .is_ok());
    let e = check_script(
        "ctl.succeed(\"x\");\nnope.crash();",
        "t.rhai".as_ref(),
        &nodes,
    )
    .unwrap_err();
    assert_eq!(
        e.location.as_ref().map(|l| (l.line, l.column)),
        Some((2, 1))
    );
    assert!(check_script("subtest(\"x\", || {", "t.rhai".as_ref(), &nodes).is_err());
}

#[test]
fn the_repl_keeps_its_scope_and_knows_unfinished_input() {
    let c = cluster("kvm");
    let (mut d, _) = driver(Arc::clone(&c), "<repl>".into());
    assert_eq!(d.eval("let x = 40;").unwrap(), None);
    assert_eq!(d.eval("fn twice(v) { v * 2 }").unwrap(), None);
    assert_eq!(d.eval("x + 2").unwrap().as_deref(), Some("42"));
    assert_eq!(d.eval("twice(x)").unwrap().as_deref(), Some("80"));
    assert_eq!(
        d.eval("ctl.succeed(\"echo hi\")").unwrap().as_deref(),
        Some("hi\n")
    );
    assert_eq!(d.eval("ctl").unwrap().as_deref(), Some("ctl"));
    let e = d.eval("ctl.succeed(\"false\")").unwrap_err();
    assert!(e.message.contains("failed: exit status 1"), "{e}");
    // The scope survives an error.
    assert_eq!(d.eval("x").unwrap().as_deref(), Some("40"));
    assert!(d.is_incomplete("subtest(\"a\", || {"));
    assert!(d.is_incomplete("let s = \"open"));
    assert!(d.is_incomplete("if x > 1 {\n  log(x);\n"));
    assert!(!d.is_incomplete("let y = ;"));
    assert!(!d.is_incomplete("x +* 2"));
    assert!(!d.is_incomplete("log(x)"));
}

#[test]
fn the_prompt_vocabulary_comes_from_the_engine_and_the_scope() {
    use testbed_driver::{ValueKind, Vocabulary};

    fn names(v: &Vocabulary, of: ValueKind, property: bool) -> Vec<&str> {
        v.members_of(of)
            .filter(|m| m.property == property)
            .map(|m| m.name.as_str())
            .collect()
    }
    let c = cluster("kvm");
    let (mut d, _) = driver(Arc::clone(&c), "<repl>".into());
    let v = d.vocabulary();
    // Nodes whose names are identifiers are variables; `edge-1` is not.
    let variables: Vec<(&str, ValueKind)> = v
        .variables
        .iter()
        .map(|n| (n.name.as_str(), n.kind))
        .collect();
    assert_eq!(
        variables,
        [
            ("ctl", ValueKind::Node),
            ("compute1", ValueKind::Node),
            ("compute2", ValueKind::Node)
        ]
    );
    let functions: Vec<&str> = v.functions.iter().map(|f| f.name.as_str()).collect();
    for f in [
        "start_all",
        "partition",
        "heal",
        "link",
        "fault_history",
        "snapshot",
        "restore",
        "subtest",
        "node",
        "nodes",
        "role",
        "log",
        "sleep",
    ] {
        assert!(functions.contains(&f), "{f} missing from {functions:?}");
    }
    for not_global in ["succeed", "delay", "to_string", "==", "get$name"] {
        assert!(!functions.contains(&not_global), "{not_global}");
    }
    let kind = |name: &str| v.functions.iter().find(|f| f.name == name).map(|f| f.kind);
    assert_eq!(kind("node"), Some(ValueKind::Node));
    assert_eq!(kind("link"), Some(ValueKind::Link));
    assert_eq!(kind("nodes"), Some(ValueKind::Other));
    let methods = names(&v, ValueKind::Node, false);
    for m in [
        "succeed",
        "fail",
        "execute",
        "wait_until_succeeds",
        "wait_for_unit",
        "wait_for_open_port",
        "copy_to",
        "crash",
        "reboot",
        "block",
    ] {
        assert!(methods.contains(&m), "{m} missing from {methods:?}");
    }
    assert!(!methods.contains(&"to_string"), "{methods:?}");
    assert_eq!(names(&v, ValueKind::Node, true), ["name", "role"]);
    let link = names(&v, ValueKind::Link, false);
    for m in ["delay", "loss", "rate", "down", "up", "clear"] {
        assert!(link.contains(&m), "{m} missing from {link:?}");
    }
    assert!(!link.contains(&"succeed"), "{link:?}");
    // Link methods give the link, for chains.
    let delay = v.members_of(ValueKind::Link).find(|m| m.name == "delay");
    assert_eq!(delay.map(|m| m.returns), Some(ValueKind::Link));

    // What the session defines joins in, with what it holds.
    d.eval("let l = link(ctl, compute1); let x = 1; fn twice(v) { v * 2 }")
        .unwrap();
    d.eval("let c = node(\"edge-1\");").unwrap();
    let v = d.vocabulary();
    let kind = |name: &str| v.variables.iter().find(|n| n.name == name).map(|n| n.kind);
    assert_eq!(kind("l"), Some(ValueKind::Link));
    assert_eq!(kind("x"), Some(ValueKind::Other));
    assert_eq!(kind("c"), Some(ValueKind::Node));
    assert!(v.functions.iter().any(|f| f.name == "twice"));
}
