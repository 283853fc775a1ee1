//! The user's config file, `$XDG_CONFIG_HOME/testbed/config.toml`
//! (`~/.config/testbed/config.toml` by default): settings that belong to
//! a person or a machine rather than to a composition. Today one table:
//!
//! ```toml
//! [cache]
//! repository = "127.0.0.1:5000/team/slurm"
//! push = false
//! ```
//!
//! Parsed like a composition (serde with spans, then checks), so that every
//! problem, an unknown key included, is a [`Diagnostic`] at file:line:column.
//! A missing file is no setting; a file that is there but broken is an
//! error, never silently ignored. [`crate::images::CacheSetting::resolve`]
//! says how it ranks against the environment and the composition.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use testbed_model::units::check_repository;
use testbed_model::{Diagnostic, Diagnostics, SourceFile};
use toml::Spanned;

/// The file's path under the configuration folder.
pub const CONFIG_FILE: &str = "testbed/config.toml";

/// The user's settings, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserConfig {
    /// `[cache]`, when it names a repository.
    pub cache: Option<CacheConfig>,
}

/// `[cache]` of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// `repository`: `HOST[:PORT]/PATH`.
    pub repository: String,
    /// `push` (default false).
    pub push: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    cache: Option<RawCache>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default)]
    repository: Option<Spanned<String>>,
    #[serde(default)]
    push: Option<Spanned<bool>>,
}

/// Where the config file is, given `$XDG_CONFIG_HOME` and `$HOME`: the
/// first when it is set to an absolute path (the XDG base directory
/// specification says to ignore a relative one), else `$HOME/.config`;
/// `None` when neither can be used.
pub fn config_path(xdg_config_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    let absolute = |v: Option<&OsStr>| {
        v.map(PathBuf::from)
            .filter(|p| p.is_absolute() && !p.as_os_str().is_empty())
    };
    let base = absolute(xdg_config_home).or_else(|| absolute(home).map(|h| h.join(".config")))?;
    Some(base.join(CONFIG_FILE))
}

/// The config file of this process's user ([`config_path`] of its
/// environment).
pub fn default_path() -> Option<PathBuf> {
    config_path(
        std::env::var_os("XDG_CONFIG_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// Reads the config file at `path`: `None` when there is none, the
/// validated settings otherwise, and every problem with its location.
pub fn read(path: &Path) -> Result<Option<UserConfig>, Diagnostics> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Diagnostic::new(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))
            .help("fix its permissions, or remove it to use no config file")
            .into())
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let src = SourceFile::new(path, String::from_utf8_lossy(e.as_bytes()).into_owned());
            return Err(Diagnostic::at(
                &src,
                valid..valid + 1,
                "the config file is not valid UTF-8",
            )
            .help("TOML files are UTF-8 text")
            .into());
        }
    };
    parse(SourceFile::new(path, text)).map(Some)
}

/// Parses and checks the text of a config file.
pub fn parse(src: Arc<SourceFile>) -> Result<UserConfig, Diagnostics> {
    let raw: RawConfig = toml::from_str(&src.text).map_err(|e| {
        let message = e.message().trim_end_matches('\n').to_string();
        let mut d = Diagnostic::at(&src, e.span().unwrap_or(0..0), message.clone());
        if message.starts_with("unknown field") {
            d = d.help(
                "the config file has one table, [cache], with the keys repository and push (docs/cache.md)",
            );
        }
        Diagnostics::from(d)
    })?;
    let Some(cache) = raw.cache else {
        return Ok(UserConfig::default());
    };
    let mut problems = Vec::new();
    let repository = match &cache.repository {
        Some(r) => match check_repository(r.get_ref()) {
            Ok(()) => Some(r.get_ref().clone()),
            Err(e) => {
                problems.push(Diagnostic::at(&src, r.span(), e.message).help(e.help));
                None
            }
        },
        None => {
            if let Some(push) = &cache.push {
                problems.push(
                    Diagnostic::at(
                        &src,
                        push.span(),
                        format!("push = {} without a repository", push.get_ref()),
                    )
                    .help("name the repository to push to with repository = \"HOST[:PORT]/PATH\" under [cache], or remove push"),
                );
            }
            None
        }
    };
    if !problems.is_empty() {
        return Err(Diagnostics(problems));
    }
    Ok(UserConfig {
        cache: repository.map(|repository| CacheConfig {
            repository,
            push: cache.push.is_some_and(|p| *p.get_ref()),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<UserConfig, Diagnostics> {
        parse(SourceFile::new("/home/u/.config/testbed/config.toml", text))
    }

    /// The only diagnostic, as `line:column: message (help)`.
    fn refused(text: &str) -> String {
        let d = parsed(text).expect_err("refused");
        assert_eq!(d.len(), 1, "{d}");
        let d = d.iter().next().expect("one");
        let loc = d.location.as_ref().expect("a location");
        assert_eq!(loc.file, Path::new("/home/u/.config/testbed/config.toml"));
        format!(
            "{}:{}: {} ({})",
            loc.line,
            loc.column,
            d.message,
            d.help.as_deref().unwrap_or("")
        )
    }

    #[test]
    fn the_path_follows_xdg_config_home_then_home() {
        let some = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            config_path(some("/xdg"), some("/home/u")),
            Some(PathBuf::from("/xdg/testbed/config.toml"))
        );
        assert_eq!(
            config_path(None, some("/home/u")),
            Some(PathBuf::from("/home/u/.config/testbed/config.toml"))
        );
        // A relative or empty XDG_CONFIG_HOME is ignored, as the XDG
        // specification says.
        for xdg in ["", "relative/dir"] {
            assert_eq!(
                config_path(some(xdg), some("/home/u")),
                Some(PathBuf::from("/home/u/.config/testbed/config.toml")),
                "{xdg}"
            );
        }
        assert_eq!(config_path(None, None), None);
        assert_eq!(config_path(None, some("")), None);
    }

    #[test]
    fn a_cache_table_gives_a_repository_and_push() {
        assert_eq!(parsed(""), Ok(UserConfig::default()));
        assert_eq!(parsed("[cache]\n"), Ok(UserConfig::default()));
        assert_eq!(
            parsed("[cache]\nrepository = \"127.0.0.1:5000/me/images\"\n"),
            Ok(UserConfig {
                cache: Some(CacheConfig {
                    repository: "127.0.0.1:5000/me/images".into(),
                    push: false
                })
            })
        );
        assert_eq!(
            parsed("# mine\n[cache]\nrepository = \"registry.example/me/images\"\npush = true\n"),
            Ok(UserConfig {
                cache: Some(CacheConfig {
                    repository: "registry.example/me/images".into(),
                    push: true
                })
            })
        );
    }

    #[test]
    fn problems_point_at_the_file_line_and_column() {
        assert_eq!(
            refused("[cache]\nrepository = \"x\"\npushh = true\n"),
            "3:1: unknown field `pushh`, expected `repository` or `push` (the config file has one table, [cache], with the keys repository and push (docs/cache.md))"
        );
        let top = refused("[cache]\n[store]\npath = \"/x\"\n");
        assert!(
            top.starts_with("2:2: unknown field `store`, expected `cache`"),
            "{top}"
        );
        assert_eq!(
            refused("[cache]\npush = true\n"),
            "2:8: push = true without a repository (name the repository to push to with repository = \"HOST[:PORT]/PATH\" under [cache], or remove push)"
        );
        let scheme = refused("[cache]\nrepository = \"https://ghcr.io/me/x\"\n");
        assert!(
            scheme.starts_with(
                "2:14: bad cache repository \"https://ghcr.io/me/x\": a repository has no scheme"
            ),
            "{scheme}"
        );
        let typed = refused("[cache]\npush = \"yes\"\n");
        assert!(
            typed.starts_with("2:8: invalid type: string \"yes\", expected a boolean"),
            "{typed}"
        );
        let syntax = refused("[cache\n");
        assert!(syntax.starts_with("1:7: "), "{syntax}");
    }

    #[test]
    fn a_missing_file_is_no_setting_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        assert_eq!(read(&path), Ok(None));
        std::fs::write(&path, "[cache]\nrepository = \"localhost:5000/x\"\n").expect("write");
        assert_eq!(
            read(&path).map(|c| c.and_then(|c| c.cache).map(|c| c.repository)),
            Ok(Some("localhost:5000/x".into()))
        );
        std::fs::write(&path, b"[cache]\nrepository = \"\xff\"\n").expect("write");
        let e = read(&path).expect_err("not UTF-8").to_string();
        assert!(
            e.starts_with(&format!(
                "{}:2:15: the config file is not valid UTF-8",
                path.display()
            )),
            "{e}"
        );
        // A folder where the file should be cannot be read.
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("mkdir");
        let e = read(&path).expect_err("a folder").to_string();
        assert!(
            e.starts_with(&format!("cannot read the config file {}", path.display())),
            "{e}"
        );
    }
}
