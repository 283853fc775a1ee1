//! The result key: a digest of everything a test's outcome depends on,
//! so that a test that passed is not run again while none of it changed
//! (docs/ci.md).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use testbed_image::Lockfile;
use testbed_model::{Composition, FileKind};

/// Bumped when what the key covers changes.
const VERSION: &str = "testbed-ci result key 1";

/// The images' store keys of `comp`, if its lock exists and is fresh
/// (they cover the locked packages, static files, the agent and the
/// builder); `Ok(None)` when there is no lock yet.
pub fn image_keys(comp: &Composition, exe: &Path) -> Result<Option<Vec<String>>, String> {
    let lock_path = testbed_cluster::images::lock_path(comp);
    let agent = testbed_cluster::images::agent_binary(exe).map_err(|e| e.to_string())?;
    let specs = testbed_cluster::images::specs(comp, Some(&agent)).map_err(|e| e.to_string())?;
    let Some(lock) = Lockfile::read_if_exists(&lock_path).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    testbed_image::keys(&specs, &lock, &lock_path)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// What goes into a result key besides the composition itself.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    /// The testbed executable that runs the test (its bytes: the host
    /// side, supervisor and driver, is in it).
    pub exe: &'a Path,
    /// The store keys of the composition's images ([`image_keys`]).
    pub image_keys: &'a [String],
    /// The arguments `testbed test` gets (backend, accelerator, ...).
    pub args: &'a [String],
}

/// The result key of `comp`'s test: SHA-256 over the testbed version and
/// executable, the composition file, its lock, every `source` and
/// `template` file, the test script, the image keys and the arguments.
pub fn result_key(comp: &Composition, inputs: &KeyInputs<'_>) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut field = |label: &str, bytes: &[u8]| {
        h.update((label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field("key", VERSION.as_bytes());
    field("testbed", env!("CARGO_PKG_VERSION").as_bytes());
    field("exe", &file_digest(inputs.exe)?);
    field("composition", comp.source.text.as_bytes());
    let lock = testbed_cluster::images::lock_path(comp);
    match fs::read(&lock) {
        Ok(bytes) => field("lock", &bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => field("lock", b"(none)"),
        Err(e) => return Err(context(e, &lock)),
    }
    for file in files(comp) {
        let bytes = fs::read(&file).map_err(|e| context(e, &file))?;
        // Named relative to the folder: a moved checkout keeps its keys.
        let name = file.strip_prefix(&comp.dir).unwrap_or(&file);
        field(&format!("file {}", name.display()), &bytes);
    }
    for key in inputs.image_keys {
        field("image", key.as_bytes());
    }
    for arg in inputs.args {
        field("arg", arg.as_bytes());
    }
    Ok(hex(&h.finalize()))
}

/// The host files the composition names: `source` and `template` files
/// and the test script (the model has joined them to its folder).
pub fn files(comp: &Composition) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = comp
        .roles
        .iter()
        .flat_map(|r| &r.files)
        .filter_map(|f| match &f.kind {
            FileKind::Source(p) | FileKind::Template(p) => Some(p.clone()),
            FileKind::Content(_) => None,
        })
        .collect();
    if let Some(script) = comp.test.as_ref().and_then(|t| t.script.as_ref()) {
        out.push(script.clone());
    }
    out.sort();
    out.dedup();
    out
}

fn file_digest(path: &Path) -> io::Result<Vec<u8>> {
    let mut h = Sha256::new();
    let mut file = fs::File::open(path).map_err(|e| context(e, path))?;
    io::copy(&mut file, &mut h).map_err(|e| context(e, path))?;
    Ok(h.finalize().to_vec())
}

fn context(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
