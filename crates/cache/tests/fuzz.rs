//! What a registry says about an entry before any file is fetched (its
//! manifest, read by `oci-client`, and the config blob, our
//! `manifest.json`), damaged: layers dropped, repeated, renumbered or
//! renamed, annotations and types changed, sizes from nothing to absurd,
//! config bytes cut, flipped or arbitrary. `testbed_cache::plan` answers
//! with a plan or a reason, never a panic or an allocation the size of a
//! lie; the valid artifact plans.
//!
//! The target records its number of cases in `target/tmp/robustness.txt`;
//! `TESTBED_FUZZ_CASES` runs more (`docs/testing.md`, "Fuzzing").

mod common;

use std::collections::BTreeMap;

use oci_client::manifest::{OciDescriptor, OciImageManifest};
use proptest::prelude::*;
use testbed_cache::{plan, ARTIFACT_TYPE, CONFIG_TYPE, PART, PART_TYPE};
use testbed_image::manifest::OutputInfo;
use testbed_image::Manifest;
use testbed_test_support::{flip_bytes, Fuzz};

const TMP: &str = env!("CARGO_TARGET_TMPDIR");

fn valid_manifest() -> Manifest {
    let inputs = common::inputs("k");
    let outputs = BTreeMap::from([
        (
            "kernel".to_owned(),
            OutputInfo {
                sha256: "a".repeat(64),
                size: 1000,
            },
        ),
        (
            "rootfs.erofs".to_owned(),
            OutputInfo {
                sha256: "b".repeat(64),
                size: PART * 2 + 1,
            },
        ),
    ]);
    Manifest {
        key: inputs.key(),
        inputs,
        outputs,
    }
}

fn layer(file: &str, part: &str, size: i64) -> OciDescriptor {
    OciDescriptor {
        media_type: PART_TYPE.to_owned(),
        digest: format!("sha256:{}", "c".repeat(64)),
        size,
        urls: None,
        annotations: Some(BTreeMap::from([
            ("dev.testbed.file".to_owned(), file.to_owned()),
            ("dev.testbed.part".to_owned(), part.to_owned()),
        ])),
        artifact_type: None,
    }
}

fn artifact(key: &str, layers: Vec<OciDescriptor>) -> OciImageManifest {
    OciImageManifest {
        schema_version: 2,
        media_type: None,
        config: OciDescriptor {
            media_type: CONFIG_TYPE.to_owned(),
            digest: format!("sha256:{}", "d".repeat(64)),
            size: 10,
            urls: None,
            annotations: None,
            artifact_type: None,
        },
        layers,
        subject: None,
        artifact_type: Some(ARTIFACT_TYPE.to_owned()),
        annotations: Some(BTreeMap::from([(
            "dev.testbed.key".to_owned(),
            key.to_owned(),
        )])),
    }
}

fn valid_layers() -> Vec<OciDescriptor> {
    vec![
        layer("kernel", "0", 900),
        layer("rootfs.erofs", "0", 1 << 20),
        layer("rootfs.erofs", "1", 1 << 20),
        layer("rootfs.erofs", "2", 10),
    ]
}

/// A layer changed one way or another.
fn damaged_layer() -> impl Strategy<Value = OciDescriptor> {
    let file = prop_oneof![
        Just("kernel".to_owned()),
        Just("rootfs.erofs".to_owned()),
        Just("manifest.json".to_owned()),
        Just("../etc/passwd".to_owned()),
        ".{0,12}",
    ];
    let part = prop_oneof![
        (0u64..4).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        ".{0,6}",
    ];
    (file, part, any::<i64>()).prop_map(|(f, p, s)| layer(&f, &p, s))
}

#[test]
fn registry_artifacts_and_configs_of_any_shape_plan_or_say_why() {
    let fuzz = Fuzz::new(TMP, "registry artifact and config (damaged)");
    let manifest = valid_manifest();
    let key = manifest.key.clone();
    let config = serde_json::to_vec(&manifest).unwrap();
    let (planned, layers) = plan(&key, &artifact(&key, valid_layers()), &config).expect("valid");
    assert_eq!(planned, manifest);
    assert_eq!(
        layers.iter().map(|(_, l)| l.len()).collect::<Vec<_>>(),
        [1, 3]
    );

    let strategy = (
        // Layers: the valid ones, some dropped or repeated, some damaged.
        prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(valid_layers()),
                1 => damaged_layer(),
            ],
            0..8,
        ),
        // The config: valid, damaged, or a manifest with other sizes.
        prop_oneof![
            Just(config.clone()),
            prop::collection::vec((any::<usize>(), 1u8..), 1..6).prop_map({
                let config = config.clone();
                move |flips| flip_bytes(&config, &flips)
            }),
            (0..config.len()).prop_map({
                let config = config.clone();
                move |n| config[..n].to_vec()
            }),
            prop::collection::vec(any::<u8>(), 0..512),
            any::<u64>().prop_map({
                let manifest = manifest.clone();
                move |size| {
                    let mut m = manifest.clone();
                    m.outputs.get_mut("rootfs.erofs").unwrap().size = size;
                    serde_json::to_vec(&m).unwrap()
                }
            }),
        ],
        // The artifact's own fields.
        prop_oneof![
            4 => Just(None),
            1 => ".{0,20}".prop_map(Some),
        ],
        any::<bool>(),
    );
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(fuzz.cases(512)));
    runner
        .run(&strategy, |(layers, config, other_key, foreign_type)| {
            fuzz.case();
            let key_named = other_key.unwrap_or_else(|| key.clone());
            let mut art = artifact(&key_named, layers);
            if foreign_type {
                art.artifact_type = Some("application/vnd.oci.image.config.v1+json".into());
            }
            match plan(&key, &art, &config) {
                Ok((m, planned)) => {
                    // Whatever plans is consistent: the key, the files, each
                    // file's parts all there and in order.
                    prop_assert_eq!(&m.key, &key);
                    prop_assert_eq!(planned.len(), m.outputs.len());
                    for (file, parts) in &planned {
                        prop_assert!(m.outputs.contains_key(file));
                        for (i, part) in parts.iter().enumerate() {
                            let n = &part.annotations.as_ref().unwrap()["dev.testbed.part"];
                            prop_assert_eq!(n, &i.to_string());
                        }
                    }
                }
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
            Ok(())
        })
        .unwrap();
}
