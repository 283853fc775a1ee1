//! The result cache: a passing test's record, under its result key.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What is kept of a passing test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passed {
    /// The entry's name when it passed.
    pub name: String,
    /// Seconds since the Unix epoch.
    pub passed_at: f64,
    /// Seconds the test took.
    pub duration: f64,
}

/// A folder of `<key>.json` records.
#[derive(Debug, Clone)]
pub struct Results {
    dir: PathBuf,
}

impl Results {
    /// The default folder: `$XDG_CACHE_HOME/testbed/ci-results`, else
    /// `~/.cache/testbed/ci-results`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p).join("testbed/ci-results"));
        }
        std::env::var_os("HOME")
            .filter(|p| !p.is_empty())
            .map(|home| PathBuf::from(home).join(".cache/testbed/ci-results"))
    }

    pub fn new(dir: impl Into<PathBuf>) -> Results {
        Results { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record of `key`; a missing or unreadable one is none (the test
    /// runs).
    pub fn get(&self, key: &str) -> Option<Passed> {
        let text = fs::read_to_string(self.path(key)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records that the test of `key` passed (written whole, then renamed
    /// into place: a reader never sees half a record).
    pub fn put(&self, key: &str, passed: &Passed) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let text = serde_json::to_string_pretty(passed).map_err(io::Error::other)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(key)).map(drop).map_err(|e| e.error)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_read_back_and_a_damaged_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let results = Results::new(dir.path().join("r"));
        assert_eq!(results.get("k"), None);
        let passed = Passed {
            name: "a".into(),
            passed_at: 12.0,
            duration: 3.5,
        };
        results.put("k", &passed).unwrap();
        assert_eq!(results.get("k"), Some(passed));
        fs::write(dir.path().join("r/k.json"), "{").unwrap();
        assert_eq!(results.get("k"), None);
        let names: Vec<_> = fs::read_dir(dir.path().join("r")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }
}
