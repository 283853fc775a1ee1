//! The plan of the bundled example, and the properties every plan has:
//! determinism, unique names/addresses/MACs, `--scale` without edits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use testbed_model::{check, template, Plan, Scale, SourceFile};
use testbed_test_support::assert_snapshot;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/slurm/testbed.toml")
}

fn plan_of(path: &Path, scale: &Scale) -> Plan {
    match check(path, scale) {
        Ok((_, plan)) => plan,
        Err(d) => panic!("{d}"),
    }
}

fn assert_unique(plan: &Plan) {
    let names: HashSet<_> = plan.nodes.iter().map(|n| &n.name).collect();
    assert_eq!(names.len(), plan.nodes.len(), "node names are unique");
    let ips: HashSet<_> = plan
        .nodes
        .iter()
        .flat_map(|n| &n.nics)
        .map(|nic| nic.ip)
        .collect();
    let nics = plan.nodes.iter().map(|n| n.nics.len()).sum::<usize>();
    assert_eq!(ips.len(), nics, "addresses are unique");
    let macs: HashSet<_> = plan
        .nodes
        .iter()
        .flat_map(|n| &n.nics)
        .map(|nic| nic.mac)
        .collect();
    assert_eq!(macs.len(), nics, "MACs are unique");
}

#[test]
fn example_plan_snapshot() {
    let plan = plan_of(&example(), &Scale::default());
    let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["ctl", "nfs", "compute1", "compute2", "compute3", "compute4"]
    );
    assert_unique(&plan);
    let json = serde_json::to_string_pretty(&plan).expect("json");
    assert_snapshot!("slurm.plan.json", &json);
}

#[test]
fn same_input_gives_byte_identical_plan() {
    let a = serde_json::to_string(&plan_of(&example(), &Scale::default())).expect("json");
    let b = serde_json::to_string(&plan_of(&example(), &Scale::default())).expect("json");
    assert_eq!(a, b);
}

#[test]
fn scale_overrides_count_without_edits() {
    let plan = plan_of(&example(), &Scale(vec![("compute".into(), 8)]));
    let compute: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.role == "compute")
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(
        compute,
        (1..=8).map(|i| format!("compute{i}")).collect::<Vec<_>>()
    );
    assert_unique(&plan);
    // Addresses of the nodes that existed before do not move.
    let small = plan_of(&example(), &Scale::default());
    for n in &small.nodes {
        assert_eq!(
            plan.node(&n.name).map(|m| &m.nics),
            Some(&n.nics),
            "{}",
            n.name
        );
    }
    // Scaling to one node names it like the role.
    let one = plan_of(&example(), &Scale(vec![("compute".into(), 1)]));
    assert!(one.node("compute").is_some());
}

#[test]
fn templates_follow_the_topology() {
    let comp_path = example();
    let file = SourceFile {
        path: comp_path.with_file_name("slurm.conf.j2"),
        text: std::fs::read_to_string(comp_path.with_file_name("slurm.conf.j2")).expect("template"),
    };
    let plan = plan_of(&comp_path, &Scale(vec![("compute".into(), 8)]));
    let text = template::render(&plan, "compute3", &file).expect("render");
    assert!(text.contains("for compute3"), "{text}");
    assert!(text.contains("SlurmctldHost=ctl(10.44.0.11)"), "{text}");
    assert!(
        text.contains("NodeName=compute8 NodeAddr=10.44.0.20 CPUs=1 RealMemory=384"),
        "{text}"
    );
    assert!(
        text.contains(
            "Nodes=compute1,compute2,compute3,compute4,compute5,compute6,compute7,compute8 "
        ),
        "{text}"
    );
    assert!(text.ends_with('\n'));
}

fn write(dir: &Path, toml: &str) -> PathBuf {
    let p = dir.join("testbed.toml");
    std::fs::write(&p, toml).expect("write");
    p
}

#[test]
fn default_subnets_are_distinct_and_avoid_explicit_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let toml = "[cluster]\nname = \"multi\"\n[roles.a]\n[roles.b]\nnetworks = [\"data\"]\n\
                [networks.lan]\n[networks.data]\n[networks.mgmt]\nsubnet = \"10.0.0.0/8\"\n";
    let plan = plan_of(&write(dir.path(), toml), &Scale::default());
    let subnets: Vec<String> = plan.networks.iter().map(|n| n.subnet.to_string()).collect();
    // 10/8 is taken, so the defaults come from the next private range.
    assert_eq!(subnets, ["172.16.0.0/24", "172.16.1.0/24", "10.0.0.0/8"]);
    // Role b is on `data` only; role a is on all three.
    let b = plan.node("b").expect("b");
    assert_eq!(
        b.nics
            .iter()
            .map(|n| n.network.as_str())
            .collect::<Vec<_>>(),
        ["data"]
    );
    assert_eq!(plan.node("a").expect("a").nics.len(), 3);
    assert_unique(&plan);

    let plain = plan_of(
        &write(dir.path(), "[cluster]\nname = \"multi\"\n[roles.a]\n"),
        &Scale::default(),
    );
    assert_eq!(plain.networks.len(), 1);
    assert_eq!(plain.networks[0].name, "lan");
    let s = plain.networks[0].subnet;
    assert_eq!((s.network().octets()[0], s.prefix()), (10, 24));
    assert!((100..200).contains(&s.network().octets()[1]));
}

#[test]
fn debconf_answers_merge_from_the_defaults_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let toml = "[defaults]\n\
                debconf = [\"gridengine-common shared/gridengineconfig boolean false\"]\n\
                [roles.master]\n\
                debconf = [\"postfix postfix/mailname string master.lan\", \
                \"gridengine-common shared/gridengineconfig boolean false\"]\n\
                [roles.exec]\n";
    let (comp, _) = check(&write(dir.path(), toml), &Scale::default()).expect("valid");
    let master = comp
        .roles
        .iter()
        .find(|r| r.name == "master")
        .expect("master");
    let exec = comp.roles.iter().find(|r| r.name == "exec").expect("exec");
    assert_eq!(
        master.debconf,
        [
            "gridengine-common shared/gridengineconfig boolean false",
            "postfix postfix/mailname string master.lan"
        ]
    );
    assert_eq!(
        exec.debconf,
        ["gridengine-common shared/gridengineconfig boolean false"]
    );
}

#[test]
fn files_may_be_written_with_dotted_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    let toml = "[roles.a]\n\
                files.\"/etc/x\".content = \"hello\"\n\
                files.\"/etc/x\".mode = \"0600\"\n\
                files.\"/etc/y\".content = \"\"\"\nmulti\nline\n\"\"\"\n";
    let (comp, _) = check(&write(dir.path(), toml), &Scale::default()).expect("valid");
    let files = &comp.roles[0].files;
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0].path, "/etc/x");
    assert_eq!(files[0].mode, 0o600);
    assert_eq!(files[1].path, "/etc/y");
}

#[test]
fn the_grid_engine_example_scales_without_edits() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/gridengine");
    let plan = plan_of(&dir.join("testbed.toml"), &Scale(vec![("exec".into(), 8)]));
    let render = |template_name: &str, node: &str| {
        let path = dir.join(template_name);
        let file = SourceFile {
            text: std::fs::read_to_string(&path).expect("template"),
            path,
        };
        template::render(&plan, node, &file).expect("render")
    };
    // Every node finds the qmaster; the master registers every host.
    assert_eq!(render("act_qmaster.j2", "exec7"), "master\n");
    let hosts: Vec<String> = (1..=8).map(|i| format!("exec{i}")).collect();
    assert_eq!(
        render("allhosts.j2", "master"),
        format!("group_name @allhosts\nhostlist {}\n", hosts.join(" "))
    );
    let register = render("sge-register.j2", "master");
    for h in &hosts {
        assert!(register.contains(&format!("qconf -ah {h}\n")), "{register}");
        assert!(
            register.contains(&format!("qconf -Ae \"$work/{h}\"\n")),
            "{register}"
        );
    }
}

#[test]
fn hosts_parse_in_order_and_pinned_roles_carry_their_host() {
    let dir = tempfile::tempdir().expect("tmp");
    let toml = "[[hosts]]\nname = \"a\"\nuri = \"qemu:///system\"\n\
                [[hosts]]\nuri = \"qemu+ssh://root@node7/system\"\n\
                [[hosts]]\nname = \"far\"\nuri = \"qemu+ssh://root@node8/system\"\n\
                [roles.ctl]\nhost = \"far\"\n\
                [roles.compute]\ncount = 2\n";
    let (comp, plan) = check(&write(dir.path(), toml), &Scale::default()).expect("valid");
    let hosts: Vec<(&str, &str)> = comp
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.uri.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("a", "qemu:///system"),
            ("host2", "qemu+ssh://root@node7/system"),
            ("far", "qemu+ssh://root@node8/system"),
        ]
    );
    assert_eq!(comp.role("ctl").expect("ctl").host.as_deref(), Some("far"));
    assert_eq!(comp.role("compute").expect("compute").host, None);
    assert_eq!(plan.node("ctl").expect("ctl").host.as_deref(), Some("far"));
    // Unpinned nodes are placed by the backend, not by the plan.
    assert_eq!(plan.node("compute1").expect("compute1").host, None);
    let json = serde_json::to_value(&plan).expect("json");
    assert_eq!(json["nodes"][0]["host"], "far");
    assert!(json["nodes"][1].get("host").is_none());

    // A host in [defaults] pins every role that does not set its own.
    let toml = "[[hosts]]\nuri = \"qemu:///system\"\n[[hosts]]\nuri = \"qemu:///session\"\n\
                [defaults]\nhost = \"host2\"\n[roles.a]\n[roles.b]\nhost = \"host1\"\n";
    let (_, plan) = check(&write(dir.path(), toml), &Scale::default()).expect("valid");
    assert_eq!(plan.node("a").expect("a").host.as_deref(), Some("host2"));
    assert_eq!(plan.node("b").expect("b").host.as_deref(), Some("host1"));
}
