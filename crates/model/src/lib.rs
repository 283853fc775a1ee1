//! The composition format of testbed and its plan.
//!
//! A `testbed.toml` goes through two stages: [`raw`] deserializes it with the
//! span of every value, and [`validate`] turns that into a checked
//! [`Composition`], collecting every problem as a [`Diagnostic`] with
//! file:line:column. [`plan()`] then expands the composition into nodes, NICs
//! and networks, deterministically.
//!
//! Invariants:
//! - This crate does no I/O beyond reading the composition and the files it
//!   names (sources, templates, the test script). It never prints.
//! - The plan is a pure function of the composition and the `--scale`
//!   overrides: same input, byte-identical plan.
//! - Nothing here panics on any input: errors are [`Diagnostics`].

pub mod composition;
pub mod confine;
pub mod diag;
pub mod graph;
pub mod net;
pub mod plan;
pub mod raw;
pub mod schema;
pub mod template;
pub mod units;
pub mod validate;
pub mod xml;

use std::path::{Path, PathBuf};

pub use composition::{
    Cluster, Composition, Distro, FileKind, FileSpec, Host, ImageCache, Network, Role, Secret,
    Snapshot, TestSpec,
};
pub use confine::{ConfineError, Confinement};
pub use diag::{Diagnostic, Diagnostics, Location, SourceFile};
pub use net::{Mac, Subnet};
pub use plan::{plan, Nic, Node, Plan, PlanNetwork, PlanRole, Scale, ScaleArg};

/// The file name looked for when a folder is given.
pub const COMPOSITION_FILE: &str = "testbed.toml";

/// Resolves what the user typed (a composition file, its folder, or nothing)
/// to the composition file's path.
pub fn resolve_path(arg: Option<&Path>) -> PathBuf {
    match arg {
        None => PathBuf::from(COMPOSITION_FILE),
        Some(p) if p.is_dir() => p.join(COMPOSITION_FILE),
        Some(p) => p.to_path_buf(),
    }
}

/// Reads and validates the composition at `path` (a file; see
/// [`resolve_path`]).
pub fn load(path: &Path) -> Result<Composition, Diagnostics> {
    let text = match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let src = SourceFile::new(path, text);
                return Err(Diagnostic::at(
                    &src,
                    valid..valid + 1,
                    "the composition is not valid UTF-8",
                )
                .help("TOML files are UTF-8 text")
                .into());
            }
        },
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                "give the path of a testbed.toml or its folder, or create one with `testbed init`"
                    .to_string()
            } else {
                e.to_string()
            };
            return Err(Diagnostic::new(format!(
                "cannot read composition {}: {}",
                path.display(),
                validate::io_reason(&e)
            ))
            .help(hint)
            .into());
        }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The default cluster name is the folder's name; `.` has none, so ask
    // the file system for the absolute path.
    let folder = std::fs::canonicalize(&dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    validate::parse(SourceFile::new(path, text), &dir, folder.as_deref())
}

/// Loads, plans and renders every template: everything `testbed check` proves.
pub fn check(path: &Path, scale: &Scale) -> Result<(Composition, Plan), Diagnostics> {
    let comp = load(path)?;
    let plan = plan(&comp, scale)?;
    template::check_all(&comp, &plan)?;
    Ok((comp, plan))
}
