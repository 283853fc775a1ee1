//! `testbed init`: write a working starter composition.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::ValueEnum;

use crate::output::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder to write into (created if missing) [default: .]
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Which starter to write
    #[arg(long, value_enum, default_value_t = Template::Minimal)]
    template: Template,
    /// Overwrite files that already exist
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Template {
    /// Two nodes on one network, with a templated file
    Minimal,
    /// A Slurm controller and four compute nodes (the bundled example)
    Slurm,
}

const MINIMAL_TOML: &str = r#"# A starter testbed composition: two nodes on one network.
# Validate it with `testbed check`, see its nodes with `testbed plan`.
# The format is documented in docs/composition.md; `testbed schema` prints
# its JSON Schema for editors.

[cluster]
name = "NAME"
distro = "debian/bookworm"

[defaults]
memory = "512MiB"
cpus = 1

[roles.node]
count = 2                       # nodes node1 and node2
packages = []                   # Debian packages for this role's image
services = []                   # systemd units started once the node is up
files."/etc/motd" = { template = "motd.j2" }
"#;

const MINIMAL_MOTD: &str = "This is {{ node.name }} ({{ node.ip }}), one of {{ nodes | length }} nodes of cluster {{ cluster.name }}.\n";

const SLURM_TOML: &str = include_str!("../../../../examples/slurm/testbed.toml");
const SLURM_CONF: &str = include_str!("../../../../examples/slurm/slurm.conf.j2");
const SLURM_TEST: &str = include_str!("../../../../examples/slurm/test.rhai");
const SLURM_EXPORTS: &str = include_str!("../../../../examples/slurm/exports.j2");
const SLURM_MPI_HELLO: &str = include_str!("../../../../examples/slurm/mpi-hello.py");

/// A cluster name derived from the target folder, or a neutral default when
/// the folder's name is not a valid cluster name.
fn cluster_name(dir: &Path) -> String {
    let folder = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_lowercase()));
    let valid = |s: &str| {
        let mut c = s.chars();
        matches!(c.next(), Some(f) if f.is_ascii_lowercase())
            && c.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            && !s.ends_with('-')
            && s.len() <= 31
    };
    match folder {
        Some(name) if valid(&name) => name,
        _ => "demo".to_string(),
    }
}

pub fn run(args: &Args) -> Outcome {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    let name = cluster_name(&dir);
    let files: Vec<(&str, String)> = match args.template {
        Template::Minimal => vec![
            (
                "testbed.toml",
                MINIMAL_TOML.replace("name = \"NAME\"", &format!("name = \"{name}\"")),
            ),
            ("motd.j2", MINIMAL_MOTD.to_string()),
        ],
        Template::Slurm => vec![
            (
                "testbed.toml",
                SLURM_TOML.replace("name = \"slurm\"", &format!("name = \"{name}\"")),
            ),
            ("slurm.conf.j2", SLURM_CONF.to_string()),
            ("exports.j2", SLURM_EXPORTS.to_string()),
            ("mpi-hello.py", SLURM_MPI_HELLO.to_string()),
            ("test.rhai", SLURM_TEST.to_string()),
        ],
    };
    // Refuse before writing anything, so a refusal leaves the folder as it was.
    if !args.force {
        let existing: Vec<String> = files
            .iter()
            .map(|(f, _)| dir.join(f))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(Failure::Usage(format!(
                "{} already exist{}; use --force to overwrite",
                existing.join(", "),
                if existing.len() == 1 { "s" } else { "" }
            )));
        }
    }
    for (file, text) in &files {
        let path = dir.join(file);
        // Write beside the target and rename, so an interrupted init never
        // leaves a half-written composition.
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        outln!("created {}", path.display());
    }
    outln!(
        "next: testbed check {0}   # validate\n      testbed plan {0}    # see the nodes and addresses",
        dir.display()
    );
    Ok(())
}
