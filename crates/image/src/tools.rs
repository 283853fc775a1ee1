//! Host programs the builder runs, and the Debian packages that provide
//! them, so that a missing one is reported as something to install rather
//! than as "No such file or directory".

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{ImageError, Result};

/// A host program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// The program name, looked up in `PATH`.
    pub name: &'static str,
    /// The Debian package to install when it is missing.
    pub package: &'static str,
}

/// Builds root filesystems.
pub const MMDEBSTRAP: Tool = Tool {
    name: "mmdebstrap",
    package: "mmdebstrap",
};
/// Resolves and downloads packages.
pub const APT_GET: Tool = Tool {
    name: "apt-get",
    package: "apt",
};
/// Builds the read-only root image.
pub const MKFS_EROFS: Tool = Tool {
    name: "mkfs.erofs",
    package: "erofs-utils",
};

/// Every tool a full build needs.
pub const BUILD_TOOLS: &[Tool] = &[APT_GET, MMDEBSTRAP, MKFS_EROFS];

/// Finds `tool` in `PATH`.
pub fn find(tool: Tool) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Root's PATH usually has the sbin directories, other users' may not;
    // the tools we need can live there, so look there too.
    let extra = [Path::new("/usr/sbin"), Path::new("/sbin")];
    std::env::split_paths(&path)
        .chain(extra.iter().map(|p| p.to_path_buf()))
        .map(|dir| dir.join(tool.name))
        .find(|candidate| candidate.is_file())
        .ok_or(ImageError::MissingTool {
            tool: tool.name,
            package: tool.package,
        })
}

/// Checks that every tool in `tools` is installed.
pub fn require(tools: &[Tool]) -> Result<()> {
    for tool in tools {
        find(*tool)?;
    }
    Ok(())
}

/// Runs a command to completion, capturing its output; a non-zero exit is
/// an error that carries the tail of its standard error.
pub(crate) fn run(cmd: &mut Command, what: impl Into<String>) -> Result<Output> {
    let what = what.into();
    let output = cmd.output().map_err(|e| ImageError::Command {
        what: what.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(ImageError::Command {
            what,
            status: output.status.to_string(),
            stderr: tail(&output.stderr, 20),
        })
    }
}

/// The last `lines` lines of a program's output, as text.
pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
