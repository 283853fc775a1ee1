//! Golden files: a test compares its output with a file checked in under
//! its crate's `tests/snapshots/`; `UPDATE_SNAPSHOTS=1` rewrites the files
//! instead (then review the diff).

use std::path::Path;

/// The environment variable that makes [`assert_matches_file`] rewrite
/// the files.
pub const UPDATE_VAR: &str = "UPDATE_SNAPSHOTS";

/// Compares `actual` with the file at `path` (a missing file is empty);
/// with `UPDATE_SNAPSHOTS` set, writes `actual` there instead.
pub fn assert_matches_file(path: &Path, actual: &str) {
    if std::env::var_os(UPDATE_VAR).is_some() {
        std::fs::write(path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        expected == actual,
        "snapshot {} differs; run with {UPDATE_VAR}=1 and review the diff\n--- actual ---\n{actual}",
        path.display()
    );
}

/// `assert_snapshot!(name, actual)`: compares `actual` (a `&str`) with
/// `tests/snapshots/<name>` of the crate whose test calls it;
/// `UPDATE_SNAPSHOTS=1` rewrites the file ([`assert_matches_file`]).
#[macro_export]
macro_rules! assert_snapshot {
    ($name:expr, $actual:expr $(,)?) => {
        $crate::snapshot::assert_matches_file(
            &::std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/snapshots")
                .join($name),
            $actual,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_matches_its_own_text_and_not_another() {
        if std::env::var_os(UPDATE_VAR).is_some() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("golden.txt");
        std::fs::write(&path, "a\nb\n").expect("write");
        assert_matches_file(&path, "a\nb\n");
        let differs = std::panic::catch_unwind(|| assert_matches_file(&path, "a\nc\n"));
        assert!(differs.is_err());
    }
}
