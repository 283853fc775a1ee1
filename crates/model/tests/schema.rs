//! The JSON Schema knows the keys the parser accepts, including `[[hosts]]`
//! and a role's `host` (the CLI's schema test checks the full list of keys).

use testbed_model::schema::json_schema;

#[test]
fn schema_knows_hosts_and_the_role_host_key() {
    let v: serde_json::Value = serde_json::from_str(&json_schema()).expect("json");
    assert_eq!(v["additionalProperties"], false);
    let top = v["properties"].as_object().expect("properties");
    for key in [
        "cluster", "defaults", "roles", "secrets", "networks", "hosts", "test",
    ] {
        assert!(top.contains_key(key), "top-level key {key}");
    }
    assert_eq!(v["properties"]["hosts"]["type"], "array");
    let host = &v["definitions"]["RawHost"];
    assert_eq!(host["additionalProperties"], false);
    for key in ["name", "uri"] {
        assert!(host["properties"].get(key).is_some(), "host key {key}");
        let described = host["properties"][key]["description"].as_str();
        assert!(described.is_some_and(|d| !d.is_empty()), "host key {key}");
    }
    assert_eq!(host["required"], serde_json::json!(["uri"]));
    let role = &v["definitions"]["RawRole"];
    for key in [
        "count", "memory", "cpus", "packages", "debconf", "services", "networks", "files", "host",
    ] {
        assert!(role["properties"].get(key).is_some(), "role key {key}");
    }
    assert!(role["properties"]["host"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("[[hosts]]")));
}

#[test]
fn schema_knows_every_cluster_key_and_describes_snapshot() {
    let v: serde_json::Value = serde_json::from_str(&json_schema()).expect("json");
    let cluster = &v["definitions"]["RawCluster"];
    assert_eq!(cluster["additionalProperties"], false);
    let keys: Vec<&str> = cluster["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "name",
            "distro",
            "kernel",
            "mirror",
            "snapshot",
            "allow_paths_outside",
            "cache",
            "cache_push"
        ]
    );
    let cache = &cluster["properties"]["cache"];
    assert_eq!(cache["type"], "string");
    let described = cache["description"].as_str().unwrap_or_default();
    assert!(
        described.contains("TESTBED_CACHE") && described.contains("config.toml"),
        "{described}"
    );
    let push = &cluster["properties"]["cache_push"];
    assert_eq!(push["type"], "boolean");
    let described = push["description"].as_str().unwrap_or_default();
    assert!(described.contains("TESTBED_CACHE_PUSH"), "{described}");
    let allow = &cluster["properties"]["allow_paths_outside"];
    assert_eq!(allow["type"], "array");
    assert!(allow["description"]
        .as_str()
        .is_some_and(|d| d.contains("symbolic links")));
    let snapshot = &cluster["properties"]["snapshot"];
    assert_eq!(snapshot["type"], "string");
    let described = snapshot["description"].as_str().unwrap_or_default();
    assert!(described.contains("\"off\""), "{described}");
    assert!(described.contains("TESTBED_SNAPSHOT"), "{described}");
}
