//! Registry credentials from the files container tools keep them in.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

/// The files searched, in order: `$REGISTRY_AUTH_FILE`, podman's
/// (`$XDG_RUNTIME_DIR/containers/auth.json`, then
/// `$XDG_CONFIG_HOME/containers/auth.json`), docker's
/// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
pub fn auth_files() -> Vec<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let mut files = Vec::new();
    files.extend(env("REGISTRY_AUTH_FILE"));
    files.extend(env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    files.extend(
        env("XDG_CONFIG_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".config")))
            .map(|d| d.join("containers/auth.json")),
    );
    files.extend(
        env("DOCKER_CONFIG")
            .or_else(|| home.as_ref().map(|h| h.join(".docker")))
            .map(|d| d.join("config.json")),
    );
    files
}

/// The credentials for `registry` (`host[:port]`): the first file of
/// [`auth_files`] with an `auths` entry for it holding `auth`
/// (base64 of `user:password`, as `podman login` and `docker login`
/// write it); anonymous otherwise. Credential helpers (`credHelpers`,
/// `credsStore`) are not run.
pub fn credentials(registry: &str) -> RegistryAuth {
    auth_files()
        .iter()
        .find_map(|file| from_file(file, registry))
        .unwrap_or(RegistryAuth::Anonymous)
}

fn from_file(file: &Path, registry: &str) -> Option<RegistryAuth> {
    let text = std::fs::read_to_string(file).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = config.get("auths")?.as_object()?;
    auths.iter().find_map(|(name, entry)| {
        // Docker once wrote `https://host/v1/`; podman may add a path.
        let host = name
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        if host != registry {
            return None;
        }
        let encoded = entry.get("auth")?.as_str()?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let (user, password) = String::from_utf8(decoded)
            .ok()?
            .split_once(':')
            .map(|(u, p)| (u.to_owned(), p.to_owned()))?;
        Some(RegistryAuth::Basic(user, password))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_of_podman_or_docker_is_found_by_registry() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("auth.json");
        // "user:secret" and "other:pw", as `podman login` writes them.
        std::fs::write(
            &file,
            r#"{"auths": {"https://127.0.0.1:5000/v1/": {"auth": "dXNlcjpzZWNyZXQ="},
                          "10.0.0.1:5000/team": {"auth": "b3RoZXI6cHc="}}}"#,
        )
        .unwrap();
        assert!(matches!(
            from_file(&file, "127.0.0.1:5000"),
            Some(RegistryAuth::Basic(u, p)) if u == "user" && p == "secret"
        ));
        assert!(matches!(
            from_file(&file, "10.0.0.1:5000"),
            Some(RegistryAuth::Basic(u, p)) if u == "other" && p == "pw"
        ));
        assert!(from_file(&file, "127.0.0.1:5001").is_none());
        std::fs::write(&file, "not json").unwrap();
        assert!(from_file(&file, "127.0.0.1:5000").is_none());
    }
}
