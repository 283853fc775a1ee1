//! Finding the compositions under a folder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use testbed_model::COMPOSITION_FILE;

/// Folders never searched: version control, build output, what `testbed
/// test` and `testbed ci` write, and Python's and Node's caches.
const SKIPPED: &[&str] = &[
    "target",
    "testbed-artifacts",
    "testbed-ci",
    "node_modules",
    "__pycache__",
];

/// Every `testbed.toml` under `dir` (itself included), sorted by path;
/// hidden folders, the folders of [`SKIPPED`] and `skip` (the output
/// folder) are not searched, and symbolic links to folders are not
/// followed (no loops, nothing outside `dir`).
pub fn compositions(dir: &Path, skip: Option<&Path>) -> io::Result<Vec<PathBuf>> {
    let skip = skip.and_then(|s| fs::canonicalize(s).ok());
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        if skip.is_some() && fs::canonicalize(&folder).ok() == skip {
            continue;
        }
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            // The folder given must be readable; a subfolder that is not
            // is no composition of ours.
            Err(e) if folder != dir && e.kind() == io::ErrorKind::PermissionDenied => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if !name.starts_with('.') && !SKIPPED.contains(&name.as_ref()) {
                    pending.push(entry.path());
                }
            } else if name == COMPOSITION_FILE {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// An entry's name: the composition's folder relative to `dir`, with `/`
/// separators; `.` for `dir` itself.
pub fn name(dir: &Path, composition: &Path) -> String {
    let folder = composition.parent().unwrap_or(Path::new(""));
    match folder.strip_prefix(dir) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
        Ok(rel) => rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => folder.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_compositions_sorted_and_skips_hidden_build_and_output_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for folder in ["b", "a/deep", ".git", "target/x", "out", "c"] {
            fs::create_dir_all(root.join(folder)).unwrap();
        }
        for file in [
            "b/testbed.toml",
            "a/deep/testbed.toml",
            ".git/testbed.toml",
            "target/x/testbed.toml",
            "out/testbed.toml",
            "c/other.toml",
            "testbed.toml",
        ] {
            fs::write(root.join(file), "").unwrap();
        }
        let found = compositions(root, Some(&root.join("out"))).unwrap();
        let names: Vec<String> = found.iter().map(|p| name(root, p)).collect();
        assert_eq!(names, ["a/deep", "b", "."]);
    }
}
