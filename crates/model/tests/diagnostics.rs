//! Every kind of invalid composition gets a message naming what is wrong, a
//! file:line:column pointing at the offending text, and a help saying what
//! would be valid. Each case is data: the composition, extra files beside it,
//! and the expected (message, line, column, help) of the first diagnostic.

use std::path::PathBuf;

use testbed_model::{check, Diagnostics, ImageCache, Scale, Snapshot};

struct Case {
    name: &'static str,
    toml: &'static str,
    files: &'static [(&'static str, &'static str)],
    message: &'static str,
    line: usize,
    column: usize,
    help: &'static str,
}

fn run(
    toml: &str,
    files: &[(&str, &str)],
    scale: &Scale,
) -> (tempfile::TempDir, Result<(), Diagnostics>) {
    let dir = tempfile::Builder::new()
        .prefix("tbcase")
        .tempdir()
        .expect("temp dir");
    std::fs::write(dir.path().join("testbed.toml"), toml).expect("write composition");
    for (name, text) in files {
        let p: PathBuf = dir.path().join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write file");
    }
    let r = check(&dir.path().join("testbed.toml"), scale).map(|_| ());
    (dir, r)
}

fn first(d: &Diagnostics) -> &testbed_model::Diagnostic {
    d.iter().next().expect("at least one diagnostic")
}

const CASES: &[Case] = &[
    Case {
        name: "unknown network in a role",
        toml: "[roles.ctl]\nnetworks = [\"lan\", \"wan\"]\n",
        files: &[],
        message: "unknown network \"wan\" in role \"ctl\"",
        line: 2,
        column: 20,
        help: "defined networks: lan",
    },
    Case {
        name: "unknown role in a secret",
        toml: "[roles.ctl]\n[secrets.key]\nfile = \"/etc/key\"\nroles = [\"ctl\", \"compute\"]\n",
        files: &[],
        message: "unknown role \"compute\" in secret \"key\"",
        line: 4,
        column: 17,
        help: "defined roles: ctl",
    },
    Case {
        name: "duplicate node name after expansion",
        toml: "[roles.compute]\ncount = 2\n\n[roles.compute2]\n",
        files: &[],
        message: "node name \"compute2\" of role \"compute2\" collides with node \"compute2\" of role \"compute\"",
        line: 4,
        column: 8,
        help: "roles with several nodes name them ROLE1..ROLEn; rename role \"compute\" or \"compute2\"",
    },
    Case {
        name: "subnet too small for the node count",
        toml: "[roles.node]\ncount = 5\n\n[networks.lan]\nsubnet = \"10.1.2.0/28\"\n",
        files: &[],
        message: "subnet 10.1.2.0/28 of network \"lan\" is too small: 5 nodes need addresses but it has room for 4",
        line: 5,
        column: 10,
        help: "attached: 5 × node; use a larger subnet (addresses .1-.10 of every subnet are reserved)",
    },
    Case {
        name: "overlapping subnets",
        toml: "[roles.n]\n[networks.a]\nsubnet = \"10.1.0.0/16\"\n[networks.b]\nsubnet = \"10.1.7.0/24\"\n",
        files: &[],
        message: "subnet 10.1.7.0/24 of network \"b\" overlaps subnet 10.1.0.0/16 of network \"a\"",
        line: 5,
        column: 10,
        help: "give every network its own, non-overlapping subnet",
    },
    Case {
        name: "count = 0",
        toml: "[roles.compute]\ncount = 0\n",
        files: &[],
        message: "role \"compute\" has count = 0",
        line: 2,
        column: 9,
        help: "a role has at least one node; remove the role to have none",
    },
    Case {
        name: "negative count",
        toml: "[roles.compute]\ncount = -3\n",
        files: &[],
        message: "count = -3 is out of range",
        line: 2,
        column: 9,
        help: "a role has between 1 and 4096 nodes",
    },
    Case {
        name: "bad memory unit",
        toml: "[roles.ctl]\nmemory = \"512MB\"\n",
        files: &[],
        message: "bad memory unit \"MB\" in \"512MB\" (did you mean MiB?)",
        line: 2,
        column: 10,
        help: "use a whole number with KiB, MiB, GiB or TiB, e.g. \"512MiB\" or \"2GiB\"",
    },
    Case {
        name: "bad memory unit in defaults",
        toml: "[defaults]\nmemory = \"1G\"\n[roles.a]\n[roles.b]\n",
        files: &[],
        message: "bad memory unit \"G\" in \"1G\" (did you mean GiB?)",
        line: 2,
        column: 10,
        help: "use a whole number with KiB, MiB, GiB or TiB, e.g. \"512MiB\" or \"2GiB\"",
    },
    Case {
        name: "template file missing",
        toml: "[roles.ctl]\nfiles.\"/etc/x.conf\" = { template = \"x.conf.j2\" }\n",
        files: &[],
        message: "template file \"x.conf.j2\" not found",
        line: 2,
        column: 36,
        help: "paths are relative to the composition's folder; looked at",
    },
    Case {
        name: "source file missing",
        toml: "[roles.ctl]\nfiles.\"/etc/x\" = { source = \"files/x\" }\n",
        files: &[],
        message: "source file \"files/x\" not found",
        line: 2,
        column: 29,
        help: "paths are relative to the composition's folder; looked at",
    },
    Case {
        name: "two of content/source/template",
        toml: "[roles.ctl]\nfiles.\"/etc/x\" = { content = \"a\", source = \"x\" }\n",
        files: &[("x", "data")],
        message: "file \"/etc/x\" has both content and source",
        line: 2,
        column: 44,
        help: "give exactly one of content, source or template",
    },
    Case {
        name: "none of content/source/template",
        toml: "[roles.ctl]\nfiles.\"/etc/x\" = { mode = \"0600\" }\n",
        files: &[],
        message: "file \"/etc/x\" has none of content, source or template",
        line: 2,
        column: 7,
        help: "give exactly one of content = \"...\", source = \"path\" or template = \"path.j2\"",
    },
    Case {
        name: "unknown key",
        toml: "[roles.ctl]\ncount = 1\nmemroy = \"1GiB\"\n",
        files: &[],
        message: "unknown field `memroy`, expected one of `count`, `memory`, `cpus`, `packages`, `debconf`, `services`, `networks`, `files`",
        line: 3,
        column: 1,
        help: "see docs/composition.md or `testbed schema` for the valid keys",
    },
    Case {
        name: "unknown top-level table",
        toml: "[roles.ctl]\n[hostz]\n",
        files: &[],
        message: "unknown field `hostz`",
        line: 2,
        column: 2,
        help: "see docs/composition.md",
    },
    Case {
        name: "wrong type",
        toml: "[roles.ctl]\ncpus = \"two\"\n",
        files: &[],
        message: "invalid type: string \"two\", expected i64",
        line: 2,
        column: 8,
        help: "",
    },
    Case {
        name: "toml syntax error",
        toml: "[roles.ctl\ncount = 1\n",
        files: &[],
        message: "unclosed table, expected `]`",
        line: 1,
        column: 11,
        help: "",
    },
    Case {
        name: "bad subnet with host bits",
        toml: "[roles.n]\n[networks.lan]\nsubnet = \"10.1.2.3/24\"\n",
        files: &[],
        message: "subnet \"10.1.2.3/24\" has host bits set",
        line: 3,
        column: 10,
        help: "did you mean \"10.1.2.0/24\"?",
    },
    Case {
        name: "unsupported distro",
        toml: "[cluster]\ndistro = \"ubuntu/noble\"\n[roles.n]\n",
        files: &[],
        message: "unsupported distro \"ubuntu/noble\"",
        line: 2,
        column: 10,
        help: "supported: debian/bookworm",
    },
    Case {
        name: "bad cluster name",
        toml: "[cluster]\nname = \"My Cluster\"\n[roles.n]\n",
        files: &[],
        message: "bad cluster name \"My Cluster\"",
        line: 2,
        column: 8,
        help: "a cluster name starts with a lowercase letter",
    },
    Case {
        name: "a snapshot that is not a URL",
        toml: "[cluster]\nsnapshot = \"ftp.example/x\"\n[roles.n]\n",
        files: &[],
        message: "bad snapshot \"ftp.example/x\"",
        line: 2,
        column: 12,
        help: "use \"off\" or an http://, https:// or file:// URL",
    },
    Case {
        name: "a snapshot URL with nothing after the scheme",
        toml: "[cluster]\nsnapshot = \"https://\"\n[roles.n]\n",
        files: &[],
        message: "bad snapshot \"https://\"",
        line: 2,
        column: 12,
        help: "use \"off\" or an http://, https:// or file:// URL",
    },
    Case {
        name: "package with a version",
        toml: "[roles.n]\npackages = [\"slurmd=22.05.8-4\"]\n",
        files: &[],
        message: "bad package name \"slurmd=22.05.8-4\"",
        line: 2,
        column: 13,
        help: "give the package name only; exact versions are pinned in testbed.lock",
    },
    Case {
        name: "relative guest path",
        toml: "[roles.n]\nfiles.\"etc/x\" = { content = \"\" }\n",
        files: &[],
        message: "bad guest path \"etc/x\"",
        line: 2,
        column: 7,
        help: "use an absolute file path",
    },
    Case {
        name: "bad mode",
        toml: "[roles.n]\nfiles.\"/etc/x\" = { content = \"\", mode = \"rw\" }\n",
        files: &[],
        message: "bad file mode \"rw\"",
        line: 2,
        column: 41,
        help: "use octal digits as a string, e.g. \"0644\" or \"0400\"",
    },
    Case {
        name: "template syntax error",
        toml: "[roles.n]\nfiles.\"/etc/x\" = { template = \"x.j2\" }\n",
        files: &[("x.j2", "line one\n{% for n in nodes %}\nno endfor\n")],
        message: "does not parse: syntax error: unexpected end of input, expected end of block",
        line: 2,
        column: 21,
        help: "variables: cluster, node, nodes, roles, networks",
    },
    Case {
        name: "template with an undefined variable",
        toml: "[roles.n]\nfiles.\"/etc/x\" = { template = \"x.j2\" }\n",
        files: &[("x.j2", "host={{ node.name }}\nport={{ node.port }}\n")],
        message: "failed for node \"n\": undefined value",
        line: 2,
        column: 9,
        help: "variables: cluster, node, nodes, roles, networks",
    },
    Case {
        name: "secret without file",
        toml: "[roles.n]\n[secrets.key]\nbytes = 16\n",
        files: &[],
        message: "secret \"key\" has no file",
        line: 2,
        column: 10,
        help: "set file = \"/abs/path\"",
    },
    Case {
        name: "test script missing",
        toml: "[roles.n]\n[test]\nscript = \"test.rhai\"\n",
        files: &[],
        message: "test script \"test.rhai\" not found",
        line: 3,
        column: 10,
        help: "paths are relative to the composition's folder",
    },
    Case {
        name: "bad test timeout",
        toml: "[roles.n]\n[test]\ntimeout = \"2 days\"\n",
        files: &[],
        message: "bad duration \"2 days\"",
        line: 3,
        column: 11,
        help: "use a number with s, m or h",
    },
    Case {
        name: "no roles",
        toml: "[cluster]\nname = \"empty\"\n",
        files: &[],
        message: "the composition has no roles",
        line: 1,
        column: 1,
        help: "add at least one role",
    },
    Case {
        name: "empty networks table",
        toml: "[roles.n]\n[networks]\n",
        files: &[],
        message: "the [networks] table is empty",
        line: 2,
        column: 1,
        help: "declare a network",
    },
    Case {
        name: "duplicate package",
        toml: "[roles.n]\npackages = [\"munge\", \"munge\"]\n",
        files: &[],
        message: "package \"munge\" is listed twice",
        line: 2,
        column: 22,
        help: "remove the duplicate",
    },
    Case {
        name: "a debconf answer with an unknown type",
        toml: "[roles.ctl]\ndebconf = [\"postfix postfix/mailname strng test.lan\"]\n",
        files: &[],
        message: "debconf answer \"postfix postfix/mailname strng test.lan\": unknown type \"strng\"",
        line: 2,
        column: 12,
        help: "use one of: boolean, string, select, multiselect, note, text, password, title, error",
    },
    Case {
        name: "a debconf boolean that is neither true nor false",
        toml: "[defaults]\ndebconf = [\"gridengine-common shared/gridengineconfig boolean no\"]\n[roles.ctl]\n",
        files: &[],
        message: "debconf answer \"gridengine-common shared/gridengineconfig boolean no\": a boolean is true or false",
        line: 2,
        column: 12,
        help: "write \"package question type value\", e.g. \"gridengine-common shared/gridengineconfig boolean false\"",
    },
    Case {
        name: "a debconf answer without its type",
        toml: "[roles.ctl]\ndebconf = [\"tzdata tzdata/Areas\"]\n",
        files: &[],
        message: "debconf answer \"tzdata tzdata/Areas\" is missing fields",
        line: 2,
        column: 12,
        help: "write \"package question type value\", e.g. \"gridengine-common shared/gridengineconfig boolean false\"",
    },
    Case {
        name: "a host name that is not a name",
        toml: "[[hosts]]\nname = \"Far\"\nuri = \"qemu:///system\"\n[roles.ctl]\n",
        files: &[],
        message: "bad host name \"Far\"",
        line: 2,
        column: 8,
        help: "a host name starts with a lowercase letter",
    },
    Case {
        name: "two hosts with the same name",
        toml: "[[hosts]]\nname = \"a\"\nuri = \"qemu:///system\"\n\n[[hosts]]\nname = \"a\"\nuri = \"qemu+ssh://root@node7/system\"\n[roles.ctl]\n",
        files: &[],
        message: "duplicate host name \"a\"",
        line: 6,
        column: 8,
        help: "host 1 is already called \"a\"; give every host its own name",
    },
    Case {
        name: "a host named like another's default name",
        toml: "[[hosts]]\nname = \"host2\"\nuri = \"qemu:///system\"\n[[hosts]]\nuri = \"qemu:///session\"\n[roles.ctl]\n",
        files: &[],
        message: "duplicate host name \"host2\" (host 2 has no name, so it is called \"host2\")",
        line: 5,
        column: 7,
        help: "host 1 is already called \"host2\"",
    },
    Case {
        name: "a host with an empty uri",
        toml: "[[hosts]]\nname = \"a\"\nuri = \"\"\n[roles.ctl]\n",
        files: &[],
        message: "host \"a\" has an empty uri",
        line: 3,
        column: 7,
        help: "e.g. \"qemu:///system\"",
    },
    Case {
        name: "a host uri without a scheme",
        toml: "[[hosts]]\nuri = \"node7\"\n[roles.ctl]\n",
        files: &[],
        message: "bad libvirt URI \"node7\" of host \"host1\"",
        line: 2,
        column: 7,
        help: "a libvirt URI starts with a scheme",
    },
    Case {
        name: "a host uri that runs a program (ext transport)",
        toml: "[[hosts]]\nuri = \"qemu+ext:///system?command=/tmp/x\"\n[roles.ctl]\n",
        files: &[],
        message: "libvirt URI \"qemu+ext:///system?command=/tmp/x\" of host \"host1\" uses the ext transport",
        line: 2,
        column: 7,
        help: "give such a URI yourself with --host or --connect",
    },
    Case {
        name: "a host uri that names the ssh program",
        toml: "[[hosts]]\nuri = \"qemu+ssh://root@node7/system?command=/tmp/x\"\n[roles.ctl]\n",
        files: &[],
        message: "sets \"command\", the program to run on this machine",
        line: 2,
        column: 7,
        help: "may not choose what runs on your machine",
    },
    Case {
        name: "a role pinned to an unknown host",
        toml: "[[hosts]]\nname = \"a\"\nuri = \"qemu:///system\"\n[[hosts]]\nuri = \"qemu:///session\"\n[roles.ctl]\nhost = \"b\"\n",
        files: &[],
        message: "unknown host \"b\" in role \"ctl\"",
        line: 7,
        column: 8,
        help: "defined hosts: a, host2",
    },
    Case {
        name: "a role pinned to a host without [[hosts]]",
        toml: "[roles.ctl]\nhost = \"a\"\n",
        files: &[],
        message: "role \"ctl\" is pinned to host \"a\" but the composition has no [[hosts]]",
        line: 2,
        column: 8,
        help: "`host` needs [[hosts]]",
    },
    Case {
        name: "[defaults] pinned to an unknown host",
        toml: "[[hosts]]\nuri = \"qemu:///system\"\n[defaults]\nhost = \"a\"\n[roles.ctl]\n",
        files: &[],
        message: "unknown host \"a\" in [defaults]",
        line: 4,
        column: 8,
        help: "defined hosts: host1",
    },
    Case {
        name: "a cache with a scheme",
        toml: "[cluster]\nname = \"c\"\ncache = \"http://127.0.0.1:5000/team/slurm\"\n[roles.n]\n",
        files: &[],
        message: "bad cache repository \"http://127.0.0.1:5000/team/slurm\": a repository has no scheme",
        line: 3,
        column: 9,
        help: "write HOST[:PORT]/PATH without a scheme, tag or digest, e.g. \"127.0.0.1:5000/team/slurm\"",
    },
    Case {
        name: "a cache with a tag",
        toml: "[cluster]\ncache = \"127.0.0.1:5000/team/slurm:v1\"\n[roles.n]\n",
        files: &[],
        message: "bad cache repository \"127.0.0.1:5000/team/slurm:v1\": a repository has no tag",
        line: 2,
        column: 9,
        help: "HOST[:PORT]/PATH",
    },
    Case {
        name: "a cache without a registry host",
        toml: "[cluster]\ncache = \"team/slurm\"\n[roles.n]\n",
        files: &[],
        message: "bad cache repository \"team/slurm\": its first part must be a registry host, such as 127.0.0.1:5000",
        line: 2,
        column: 9,
        help: "the host has a '.' or a ':' (or is localhost)",
    },
    Case {
        name: "a cache with an uppercase path",
        toml: "[cluster]\ncache = \"localhost:5000/Team/slurm\"\n[roles.n]\n",
        files: &[],
        message: "bad cache repository \"localhost:5000/Team/slurm\": bad path component \"Team\"",
        line: 2,
        column: 9,
        help: "the path is lowercase letters and digits",
    },
    Case {
        name: "cache_push without a cache",
        toml: "[cluster]\nname = \"c\"\ncache_push = true\n[roles.n]\n",
        files: &[],
        message: "cache_push = true without a cache",
        line: 3,
        column: 14,
        help: "name the repository to push to with cache = \"HOST[:PORT]/PATH\" under [cluster], or remove cache_push",
    },
    Case {
        name: "cache_push that is not a boolean",
        toml: "[cluster]\ncache = \"localhost:5000/x\"\ncache_push = \"yes\"\n[roles.n]\n",
        files: &[],
        message: "invalid type: string \"yes\", expected a boolean",
        line: 3,
        column: 14,
        help: "",
    },
    Case {
        name: "cache that is not a string",
        toml: "[cluster]\ncache = true\n[roles.n]\n",
        files: &[],
        message: "invalid type: boolean `true`, expected a string",
        line: 2,
        column: 9,
        help: "",
    },
    Case {
        name: "an unknown key in [[hosts]]",
        toml: "[[hosts]]\nuri = \"qemu:///system\"\nurl = \"x\"\n[roles.ctl]\n",
        files: &[],
        message: "unknown field `url`",
        line: 3,
        column: 1,
        help: "see docs/composition.md",
    },
];

#[test]
fn every_invalid_case_points_at_the_offending_text() {
    let mut failures = Vec::new();
    for case in CASES {
        let (dir, result) = run(case.toml, case.files, &Scale::default());
        let Err(diags) = result else {
            failures.push(format!("{}: accepted", case.name));
            continue;
        };
        let d = first(&diags);
        let loc = d.location.as_ref();
        let got = (
            d.message.clone(),
            loc.map(|l| l.line),
            loc.map(|l| l.column),
            d.help.clone().unwrap_or_default(),
        );
        let file_ok = loc.is_some_and(|l| l.file.starts_with(dir.path()));
        let ok = got.0.contains(case.message)
            && got.1 == Some(case.line)
            && got.2 == Some(case.column)
            && got.3.contains(case.help)
            && file_ok;
        if !ok {
            failures.push(format!(
                "{}:\n  want {:?} at {}:{} help {:?}\n  got  {:?} at {:?}:{:?} help {:?} (file {:?})",
                case.name,
                case.message,
                case.line,
                case.column,
                case.help,
                got.0,
                got.1,
                got.2,
                got.3,
                loc.map(|l| &l.file)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn caret_text_is_the_offending_value() {
    let (_dir, r) = run(
        "[roles.ctl]\nnetworks = [\"wan\"]\n",
        &[],
        &Scale::default(),
    );
    let diags = r.expect_err("unknown network must fail");
    let loc = first(&diags).location.clone().expect("location");
    assert_eq!(loc.line_text, "networks = [\"wan\"]");
    let under: String = loc
        .line_text
        .chars()
        .skip(loc.column - 1)
        .take(loc.width)
        .collect();
    assert_eq!(under, "\"wan\"");
}

#[test]
fn all_problems_are_reported_at_once() {
    let toml = "[roles.a]\nmemory = \"1G\"\ncpus = 0\n[roles.b]\nnetworks = [\"x\"]\n";
    let (_dir, r) = run(toml, &[], &Scale::default());
    let diags = r.expect_err("must fail");
    let lines: Vec<usize> = diags
        .iter()
        .filter_map(|d| d.location.as_ref().map(|l| l.line))
        .collect();
    assert_eq!(lines, vec![2, 3, 5], "{diags}");
}

#[test]
fn scale_errors_name_the_flag() {
    let toml = "[roles.node]\ncount = 2\n[networks.lan]\nsubnet = \"10.1.2.0/28\"\n";
    let scale = Scale(vec![("node".into(), 9)]);
    let (_dir, r) = run(toml, &[], &scale);
    let d = r.expect_err("must fail");
    let d = first(&d);
    assert!(
        d.message
            .contains("9 nodes need addresses but it has room for 4"),
        "{d}"
    );
    assert!(
        d.help
            .as_deref()
            .unwrap_or("")
            .contains("9 × node (from --scale)"),
        "{d}"
    );

    let (_dir, r) = run(toml, &[], &Scale(vec![("nodes".into(), 3)]));
    let d = r.expect_err("must fail");
    assert_eq!(first(&d).message, "--scale names unknown role \"nodes\"");
    assert!(first(&d).location.is_none());
}

#[test]
fn host_problems_are_all_reported() {
    // Bad name, duplicate, bad uri and an unknown pin: four problems at once;
    // a bad host in [defaults] is reported once, not once per role.
    let toml = "[[hosts]]\nname = \"A\"\nuri = \"qemu:///system\"\n\
                [[hosts]]\nname = \"b\"\nuri = \"\"\n\
                [[hosts]]\nname = \"b\"\nuri = \"x\"\n\
                [defaults]\nhost = \"c\"\n[roles.r]\n[roles.s]\n[roles.t]\nhost = \"d\"\n";
    let (_dir, r) = run(toml, &[], &Scale::default());
    let diags = r.expect_err("must fail");
    let lines: Vec<usize> = diags
        .iter()
        .filter_map(|d| d.location.as_ref().map(|l| l.line))
        .collect();
    assert_eq!(lines, vec![2, 6, 8, 9, 11, 15], "{diags}");
}

#[test]
fn defaults_problems_are_reported_once() {
    let toml = "[defaults]\npackages = [\"Bad\"]\n[roles.a]\n[roles.b]\n";
    let (_dir, r) = run(toml, &[], &Scale::default());
    let diags = r.expect_err("must fail");
    assert_eq!(diags.len(), 1, "{diags}");
}

#[test]
fn snapshot_is_off_or_a_url_without_its_trailing_slash() {
    // A fixed name: the default one comes from the (random) folder name.
    let parse = |toml: &str| {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("testbed.toml");
        std::fs::write(
            &path,
            format!("[cluster]\nname = \"snap\"\n{toml}[roles.n]\n"),
        )
        .expect("write");
        check(&path, &Scale::default()).expect("valid")
    };
    let (comp, plain) = parse("");
    assert_eq!(comp.cluster.snapshot, None);
    let (comp, _) = parse("snapshot = \"off\"\n");
    assert_eq!(comp.cluster.snapshot, Some(Snapshot::Off));
    for (written, kept) in [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        (
            "https://example.invalid/snap",
            "https://example.invalid/snap",
        ),
        ("file:///srv/snapshot/", "file:///srv/snapshot"),
    ] {
        let (comp, plan) = parse(&format!("snapshot = \"{written}\"\n"));
        assert_eq!(comp.cluster.snapshot, Some(Snapshot::Url(kept.to_string())));
        // Where packages come from never changes what is built.
        assert_eq!(
            serde_json::to_string(&plan).expect("json"),
            serde_json::to_string(&plain).expect("json"),
            "{written}"
        );
    }
    // "off" is a keyword, not a host name; a root-only file URL names nothing.
    for bad in ["OFF", "", "file:///", "//127.0.0.1/x"] {
        let toml = format!("[cluster]\nsnapshot = \"{bad}\"\n[roles.n]\n");
        let (_dir, r) = run(&toml, &[], &Scale::default());
        let d = r.expect_err(bad);
        assert_eq!(first(&d).message, format!("bad snapshot \"{bad}\""));
    }
}

#[test]
fn cache_is_a_repository_and_cache_push_defaults_to_false() {
    let parse = |toml: &str| {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("testbed.toml");
        std::fs::write(
            &path,
            format!("[cluster]\nname = \"cached\"\n{toml}[roles.n]\n"),
        )
        .expect("write");
        check(&path, &Scale::default()).expect("valid")
    };
    let (comp, plain) = parse("");
    assert_eq!(comp.cluster.cache, None);
    let (comp, _) = parse("cache = \"127.0.0.1:5000/team/slurm\"\n");
    assert_eq!(
        comp.cluster.cache,
        Some(ImageCache {
            repository: "127.0.0.1:5000/team/slurm".into(),
            push: false
        })
    );
    let (comp, plan) = parse("cache = \"registry.example/team/slurm\"\ncache_push = true\n");
    assert_eq!(
        comp.cluster.cache,
        Some(ImageCache {
            repository: "registry.example/team/slurm".into(),
            push: true
        })
    );
    // Where images come from never changes the plan.
    assert_eq!(
        serde_json::to_string(&plan).expect("json"),
        serde_json::to_string(&plain).expect("json")
    );
    let (comp, _) = parse("cache = \"localhost/x\"\ncache_push = false\n");
    assert_eq!(comp.cluster.cache.map(|c| c.push), Some(false));
}

#[test]
fn a_bad_cache_is_one_problem_and_a_lone_cache_push_is_refused_even_false() {
    // cache_push has its cache (a bad one): only the repository is wrong.
    let (_dir, r) = run(
        "[cluster]\ncache = \"Registry/x\"\ncache_push = true\n[roles.n]\n",
        &[],
        &Scale::default(),
    );
    let d = r.expect_err("bad cache");
    assert_eq!(d.len(), 1, "{d}");
    assert!(
        first(&d).message.starts_with(
            "bad cache repository \"Registry/x\": its first part must be a registry host"
        ),
        "{d}"
    );
    // Without a cache, cache_push means nothing, whatever its value.
    let (_dir, r) = run(
        "[cluster]\nname = \"c\"\ncache_push = false\n[roles.n]\n",
        &[],
        &Scale::default(),
    );
    let d = r.expect_err("lone cache_push");
    let loc = first(&d).location.clone().expect("location");
    assert_eq!(first(&d).message, "cache_push = false without a cache");
    assert_eq!((loc.line, loc.column, loc.width), (3, 14, 5));
}

#[test]
fn folder_name_is_the_default_cluster_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let sub = dir.path().join("my-cluster");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(sub.join("testbed.toml"), "[roles.n]\n").expect("write");
    let (comp, _) = check(&sub.join("testbed.toml"), &Scale::default()).expect("valid");
    assert_eq!(comp.cluster.name, "my-cluster");

    let spaced = dir.path().join("My Cluster_2");
    std::fs::create_dir(&spaced).expect("mkdir");
    std::fs::write(spaced.join("testbed.toml"), "[roles.n]\n").expect("write");
    let (comp, _) = check(&spaced.join("testbed.toml"), &Scale::default()).expect("valid");
    assert_eq!(comp.cluster.name, "my-cluster-2");

    let bad = dir.path().join("2024");
    std::fs::create_dir(&bad).expect("mkdir");
    std::fs::write(bad.join("testbed.toml"), "[roles.n]\n").expect("write");
    let e = check(&bad.join("testbed.toml"), &Scale::default()).expect_err("invalid name");
    assert!(
        first(&e).message.contains("the folder name \"2024\""),
        "{e}"
    );
    assert!(
        first(&e).help.as_deref().unwrap_or("").contains("set name"),
        "{e}"
    );
}
