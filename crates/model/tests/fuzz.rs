//! No input makes the parser, the validator or the planner panic: arbitrary
//! bytes, and arbitrary TOML built from the format's own keys (so that deep
//! paths of the validator are reached, not just the TOML syntax check).
//!
//! Each target records its number of cases in `target/tmp/robustness.txt`;
//! `TESTBED_FUZZ_CASES` runs more (`docs/testing.md`, "Fuzzing").

use std::path::Path;

use proptest::prelude::*;
use testbed_model::{plan, template, validate, Scale, SourceFile};
use testbed_test_support::Fuzz;

fn parse_all(text: String, dir: &Path) {
    let src = SourceFile::new(dir.join("testbed.toml"), text);
    if let Ok(comp) = validate::parse(src, dir, Some("fuzz")) {
        if let Ok(p) = plan(&comp, &Scale::default()) {
            let _ = template::check_all(&comp, &p);
        }
        let _ = plan(&comp, &Scale(vec![("a".into(), 3), ("b".into(), 0)]));
    }
}

const KEYS: &[&str] = &[
    "cluster",
    "name",
    "distro",
    "kernel",
    "mirror",
    "snapshot",
    "defaults",
    "roles",
    "count",
    "memory",
    "cpus",
    "packages",
    "services",
    "networks",
    "files",
    "content",
    "source",
    "template",
    "mode",
    "owner",
    "secrets",
    "file",
    "bytes",
    "subnet",
    "test",
    "script",
    "timeout",
    "hosts",
    "host",
    "uri",
    "allow_paths_outside",
    "cache",
    "cache_push",
    "a",
    "b",
    "lan",
    "/etc/x",
];

const STRINGS: &[&str] = &[
    "",
    "a",
    "lan",
    "512MiB",
    "1GiB",
    "0MiB",
    "10.44.0.0/24",
    "10.44.0.0/16",
    "10.0.0.1/24",
    "0644",
    "munge:munge",
    "/etc/x",
    "x.j2",
    "debian/bookworm",
    "30m",
    "slurmd",
    "compute1",
    "é",
    "../x",
    "qemu:///system",
    "host1",
    "host2",
    "off",
    "http://127.0.0.1:8080/",
    "file://",
    "127.0.0.1:5000/team/slurm",
    "127.0.0.1:5000/Team/x:v1",
];

fn leaf() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        (-3i64..10).prop_map(toml::Value::Integer),
        any::<bool>().prop_map(toml::Value::Boolean),
        prop::sample::select(STRINGS).prop_map(|s| toml::Value::String(s.to_string())),
        ".{0,12}".prop_map(toml::Value::String),
        any::<f64>().prop_map(toml::Value::Float),
    ]
}

fn value() -> impl Strategy<Value = toml::Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(KEYS).prop_map(str::to_string),
                inner,
                0..6
            )
            .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

fn document() -> impl Strategy<Value = toml::Table> {
    prop::collection::btree_map(
        prop::sample::select(KEYS).prop_map(str::to_string),
        value(),
        0..6,
    )
    .prop_map(|m| m.into_iter().collect())
}

const TMP: &str = env!("CARGO_TARGET_TMPDIR");

#[test]
fn arbitrary_bytes_never_panic() {
    let fuzz = Fuzz::new(TMP, "composition (arbitrary bytes)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(512)), |(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    )| {
        fuzz.case();
        let dir = tempfile::tempdir().expect("tmp");
        parse_all(String::from_utf8_lossy(&bytes).into_owned(), dir.path());
    });
}

#[test]
fn arbitrary_toml_never_panics() {
    let fuzz = Fuzz::new(TMP, "composition (arbitrary TOML of its keys)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(512)), |(doc in document())| {
        fuzz.case();
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("x.j2"), "{{ node.name }} {{ nodes | length }}").expect("write");
        if let Ok(text) = toml::to_string(&doc) {
            parse_all(text, dir.path());
        }
    });
}

#[test]
fn valid_compositions_always_plan() {
    let fuzz = Fuzz::new(TMP, "composition (valid ones plan)");
    proptest!(ProptestConfig::with_cases(fuzz.cases(512)), |(
        count_a in 1u32..40,
        count_b in 1u32..40,
        nets in 1usize..4,
    )| {
        fuzz.case();
        let dir = tempfile::tempdir().expect("tmp");
        let mut text = format!("[roles.a]\ncount = {count_a}\n[roles.b]\ncount = {count_b}\n");
        for i in 0..nets {
            text.push_str(&format!("[networks.n{i}]\n"));
        }
        let src = SourceFile::new(dir.path().join("testbed.toml"), text);
        let comp = validate::parse(src, dir.path(), Some("fuzz")).expect("valid");
        let p = plan(&comp, &Scale::default()).expect("plans");
        prop_assert_eq!(p.nodes.len() as u32, count_a + count_b);
        prop_assert!(p.nodes.iter().all(|n| n.nics.len() == nets));
    });
}

#[test]
fn locations_never_split_characters() {
    // A multi-byte character right where toml reports an error.
    let dir = tempfile::tempdir().expect("tmp");
    for text in [
        "é = 1",
        "[roles.n]\ncount = \"ü\"\n",
        "\u{feff}[roles.n]",
        "[roles.n]\nmemory = \"５１２MiB\"\n",
    ] {
        parse_all(text.to_string(), dir.path());
    }
}
