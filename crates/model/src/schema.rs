//! The JSON Schema of `testbed.toml`, derived from the stage-one structs so
//! that it always lists exactly the keys the parser accepts.

use crate::raw::RawComposition;

/// The schema as pretty JSON.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawComposition);
    // Serializing a schema built from plain structs cannot fail.
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}
