//! The JSON Schema of `testbed.toml`, derived from the stage-one structs so
//! that it always lists exactly the keys the parser accepts.

use serde_json::Value;

use crate::raw::RawComposition;

/// Removes `"default": null`, which schemars emits for optional keys: TOML
/// has no null, and editors would offer it as a completion.
fn drop_null_defaults(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            map.values_mut().for_each(drop_null_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_defaults),
        _ => {}
    }
}

/// The schema as pretty JSON.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawComposition);
    let mut v = serde_json::to_value(&schema).unwrap_or(Value::Null);
    drop_null_defaults(&mut v);
    // Serializing a JSON value cannot fail.
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
