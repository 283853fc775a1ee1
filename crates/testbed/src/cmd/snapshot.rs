//! `testbed snapshot save|restore|ls|rm`: snapshots of a whole cluster
//! (`docs/snapshots.md`); `testbed up --from NAME` starts from one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use testbed_runtime::api::SnapshotInfo;

use super::cluster::state_dir;
use crate::output::Outcome;

/// The composition, for verbs whose positional argument is a name.
#[derive(Debug, clap::Args)]
pub struct FileArg {
    /// The composition: a testbed.toml or its folder [default: ./testbed.toml]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save the running cluster whole (every node's memory and writable layer, the faults in force) under NAME, replacing a snapshot of that name
    Save {
        /// Letters, digits, '-', '_' and '.'
        name: String,
        #[command(flatten)]
        file: FileArg,
        /// Print the snapshot's description as JSON
        #[arg(long)]
        json: bool,
    },
    /// Bring every node of the running cluster back to the snapshot NAME (saved from this same `up`; otherwise use `up --from NAME`)
    Restore {
        name: String,
        #[command(flatten)]
        file: FileArg,
        /// Print the snapshot's description as JSON
        #[arg(long)]
        json: bool,
    },
    /// List the cluster's snapshots
    Ls {
        #[command(flatten)]
        file: FileArg,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove the snapshot NAME
    Rm {
        name: String,
        #[command(flatten)]
        file: FileArg,
    },
}

pub fn run(command: &SnapshotCommand) -> Outcome {
    match command {
        SnapshotCommand::Save { name, file, json } => {
            let (cluster, dir) = state_dir(file.path.as_deref())?;
            errln!("saving cluster {cluster} as snapshot {name}...");
            let info = testbed_cluster::snapshots::save(&cluster, &dir, name)?;
            show(&info, *json, "saved")
        }
        SnapshotCommand::Restore { name, file, json } => {
            let (cluster, dir) = state_dir(file.path.as_deref())?;
            errln!("restoring cluster {cluster} to snapshot {name}...");
            let info = testbed_cluster::snapshots::restore(&cluster, &dir, name)?;
            show(&info, *json, "restored")
        }
        SnapshotCommand::Ls { file, json } => {
            let cluster = cluster(file.path.as_deref())?;
            let all = testbed_cluster::snapshots::list(&cluster)?;
            if *json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&all).context("snapshots as JSON")?
                );
                return Ok(());
            }
            if all.is_empty() {
                errln!(
                    "cluster {cluster} has no snapshots (`testbed snapshot save NAME` makes one)"
                );
                return Ok(());
            }
            outln!(
                "{:<20} {:>8} {:>9}  {:<20} {}",
                "NAME",
                "NODES",
                "SIZE",
                "SAVED",
                "FAULTS"
            );
            for info in &all {
                let running = info.nodes.iter().filter(|n| n.running).count();
                outln!(
                    "{:<20} {:>8} {:>9}  {:<20} {}",
                    info.name,
                    format!("{running}/{}", info.nodes.len()),
                    mib(info.bytes()),
                    when(info.created_unix),
                    faults(info)
                );
            }
            Ok(())
        }
        SnapshotCommand::Rm { name, file } => {
            let cluster = cluster(file.path.as_deref())?;
            testbed_cluster::snapshots::remove(&cluster, name)?;
            errln!("removed snapshot {name} of cluster {cluster}");
            Ok(())
        }
    }
}

fn cluster(path: Option<&Path>) -> Result<String, crate::output::Failure> {
    Ok(testbed_cluster::locate(path)?.cluster)
}

fn show(info: &SnapshotInfo, json: bool, what: &str) -> Outcome {
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(info).context("snapshot as JSON")?
        );
        return Ok(());
    }
    let running = info.nodes.iter().filter(|n| n.running).count();
    outln!(
        "{what} snapshot {} of cluster {} in {:.1}s: {running} of {} nodes running, {}; faults: {}",
        info.name,
        info.cluster,
        info.took_ms as f64 / 1000.0,
        info.nodes.len(),
        mib(info.bytes()),
        faults(info)
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// `YYYY-MM-DD HH:MM` UTC, from the store's own timestamp format
/// (`YYYYMMDDTHHMMSSZ`).
fn when(unix: u64) -> String {
    let t = testbed_image::snapshot::format_timestamp(unix);
    format!(
        "{}-{}-{} {}:{}",
        &t[..4],
        &t[4..6],
        &t[6..8],
        &t[9..11],
        &t[11..13]
    )
}

fn faults(info: &SnapshotInfo) -> String {
    let f = &info.faults;
    let mut parts = Vec::new();
    if !f.partition.is_empty() {
        let groups: Vec<String> = f
            .partition
            .iter()
            .map(|g| format!("[{}]", g.join(",")))
            .collect();
        parts.push(format!("partition {}", groups.join(" ")));
    }
    if !f.blocked.is_empty() {
        parts.push(format!("blocked {}", f.blocked.join(",")));
    }
    if !f.links.is_empty() {
        parts.push(format!("{} link rules", f.links.len()));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(super::when(0), "1970-01-01 00:00");
        assert_eq!(super::when(1_796_529_427), "2026-12-06 03:57");
        assert_eq!(super::when(951_782_400), "2000-02-29 00:00");
    }
}
