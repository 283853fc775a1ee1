//! The `testbed` command line: the only part of testbed that prints.
//!
//! Each verb lives in [`cmd`]; this file holds the argument definitions, the
//! dispatch and the exit-code policy: 0 success, 1 a runtime failure, 2 a
//! usage or input error (bad flags, an invalid composition).

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
mod print;
mod cmd;
mod output;
mod prompt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use testbed_model::ScaleArg;

/// Declarative, reproducible clusters of VMs and containers for testing
/// distributed systems.
#[derive(Debug, Parser)]
#[command(name = "testbed", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the composition is: a `testbed.toml`, or the folder holding one.
#[derive(Debug, clap::Args)]
struct CompositionArg {
    /// A testbed.toml or its folder [default: ./testbed.toml]
    #[arg(value_name = "PATH")]
    path: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ScaleArgs {
    /// Override a role's node count, e.g. `--scale compute=8` (repeatable)
    #[arg(long = "scale", value_name = "ROLE=N")]
    scale: Vec<ScaleArg>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a working starter composition
    Init(cmd::init::Args),
    /// Validate a composition and render its templates for every node
    Check {
        #[command(flatten)]
        comp: CompositionArg,
        #[command(flatten)]
        scale: ScaleArgs,
        /// Print the result as JSON (diagnostics included)
        #[arg(long)]
        json: bool,
    },
    /// Show the nodes, addresses and networks a composition expands to
    Plan {
        #[command(flatten)]
        comp: CompositionArg,
        #[command(flatten)]
        scale: ScaleArgs,
        /// Print the plan as JSON
        #[arg(long)]
        json: bool,
    },
    /// Draw the topology a composition expands to (nodes, roles, networks, addresses) as SVG, or as Graphviz DOT
    Graph {
        #[command(flatten)]
        comp: CompositionArg,
        #[command(flatten)]
        scale: ScaleArgs,
        /// svg (a standalone picture) or dot (for Graphviz)
        #[arg(long, value_parser = ["svg", "dot"], default_value = "svg")]
        format: String,
    },
    /// Print the JSON Schema of testbed.toml, for editors
    Schema,
    /// Check this host for what testbed needs (QEMU, KVM, memory, store, libvirt, podman) and say what to fix
    Doctor {
        /// Print the checks as JSON
        #[arg(long)]
        json: bool,
    },
    /// Pin every role's packages to exact versions in testbed.lock
    Lock {
        #[command(flatten)]
        comp: CompositionArg,
        /// Re-resolve every role against the archive's current versions (and list what changed)
        #[arg(long, conflicts_with = "check")]
        update: bool,
        /// Check that every locked package can still be had (store cache, --vendor, mirror, snapshot archive) and say from where; changes nothing
        #[arg(long)]
        check: bool,
        /// With --check: print the sources, the refused files and what is missing as JSON
        #[arg(long, requires = "check")]
        json: bool,
        #[command(flatten)]
        packages: cmd::image::PackageArgs,
    },
    /// Build every role's image into the store (nothing is redone when inputs are unchanged)
    Build {
        #[command(flatten)]
        comp: CompositionArg,
        /// Print the store entries as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        packages: cmd::image::PackageArgs,
    },
    /// Copy every package the lock names into a folder, for `build --offline --vendor DIR` (air-gapped machines, CI caches)
    Vendor {
        /// [PATH] DIR: the composition (a testbed.toml or its folder) [default: ./testbed.toml], and the folder to write (created if needed; files already there with the right digest are kept)
        #[arg(value_name = "PATH", num_args = 1..=2, required = true)]
        paths: Vec<PathBuf>,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Rebuild every image in a fresh temporary store and compare digests file by file
    Verify {
        #[command(flatten)]
        comp: CompositionArg,
    },
    /// Inspect or clean the image store
    #[command(subcommand)]
    Store(StoreCommand),
    /// Build what is missing, boot every node and wait until all are ready
    Up {
        #[command(flatten)]
        comp: CompositionArg,
        #[command(flatten)]
        scale: ScaleArgs,
        #[command(flatten)]
        args: cmd::cluster::UpArgs,
    },
    /// Show the running cluster's nodes, states, addresses and uptimes
    Status {
        #[command(flatten)]
        comp: CompositionArg,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a node; exits with the command's status
    Exec {
        #[command(flatten)]
        file: FileArg,
        #[command(flatten)]
        args: cmd::cluster::ExecArgs,
    },
    /// Copy a file to or from a node: `cp FILE NODE:/path` or `cp NODE:/path FILE`
    Cp {
        #[command(flatten)]
        file: FileArg,
        /// Source: a host path or NODE:/path
        src: String,
        /// Destination: a host path or NODE:/path
        dst: String,
    },
    /// Log in to a node with OpenSSH (through the agent; no network route needed)
    Ssh {
        #[command(flatten)]
        file: FileArg,
        /// The node
        node: String,
        /// Arguments for ssh after the host, e.g. a remote command
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Print an OpenSSH config for the cluster's nodes (for ssh -F, scp -F, Ansible)
    SshConfig {
        #[command(flatten)]
        comp: CompositionArg,
    },
    /// Connect standard input and output to a TCP port of a node (an ssh ProxyCommand)
    Forward {
        #[command(flatten)]
        file: FileArg,
        /// The node
        node: String,
        /// The TCP port in the node
        port: u16,
    },
    /// Attach to a node's serial console (Ctrl-] leaves)
    Console {
        #[command(flatten)]
        file: FileArg,
        /// The node
        node: String,
    },
    /// Print a node's serial console log
    Logs {
        #[command(flatten)]
        file: FileArg,
        /// The node
        node: String,
        /// Keep printing as the log grows
        #[arg(long)]
        follow: bool,
    },
    /// Inject network faults in the cluster's virtual switch: partition, heal, block, link delay/loss/rate
    Fault(cmd::fault::FaultArgs),
    /// Start, shut down, crash (power loss), reboot, pause or resume a node
    Power(cmd::fault::PowerArgs),
    /// Run the test script against the cluster (brought up if needed) and report
    Test {
        #[command(flatten)]
        comp: CompositionArg,
        #[command(flatten)]
        scale: ScaleArgs,
        #[command(flatten)]
        args: cmd::test::TestArgs,
    },
    /// Run the test of every composition under a folder: images built once, passing results cached, one JUnit/JSON/HTML report (docs/ci.md)
    Ci(cmd::ci::CiArgs),
    /// Save the running cluster whole, restore it, list or remove its snapshots (docs/snapshots.md)
    #[command(subcommand)]
    Snapshot(cmd::snapshot::SnapshotCommand),
    /// Stop every node and remove everything the cluster left on the host
    Down {
        #[command(flatten)]
        comp: CompositionArg,
    },
    /// Run a cluster's supervisor (started by `up`; not for direct use)
    #[command(hide = true)]
    Supervise {
        /// The cluster's state directory
        dir: PathBuf,
    },
    /// Run an image build's steps after mmdebstrap in its user namespace
    /// (started by a build as a user other than root; not for direct use)
    #[command(hide = true)]
    BuildSteps {
        /// The build's request file
        request: PathBuf,
    },
}

/// For verbs whose positional arguments are nodes and commands.
#[derive(Debug, clap::Args)]
struct FileArg {
    /// The composition: a testbed.toml or its folder [default: ./testbed.toml]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    path: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// List entries with their sizes and the lock files that use them
    Ls {
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove entries and cached packages that no existing lock file references
    Gc,
    /// Push the composition's images (built) to an OCI registry, one artifact per image tagged with its store key (docs/cache.md)
    Push {
        /// [PATH] REPOSITORY: the composition (a testbed.toml or its folder) [default: ./testbed.toml], and the repository, e.g. 127.0.0.1:5000/team/slurm
        #[arg(value_name = "PATH", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Pull the composition's images from an OCI registry into the store, each checked by digest before it is used (docs/cache.md)
    Pull {
        /// [PATH] REPOSITORY: the composition (a testbed.toml or its folder) [default: ./testbed.toml], and the repository, e.g. 127.0.0.1:5000/team/slurm
        #[arg(value_name = "PATH", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help, the version, or a usage error (exit 2), printed as clap
        // does, but quietly ended on a closed pipe like every other output.
        Err(e) => {
            if let Err(io) = e.print() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    std::process::exit(print::CLOSED_PIPE);
                }
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    // A build as a user runs its steps after mmdebstrap through this very
    // program, in a user namespace (testbed_image::rootless).
    if let Ok(exe) = std::env::current_exe() {
        testbed_image::rootless::register_helper(testbed_image::rootless::Helper {
            program: exe,
            args: vec!["build-steps".into()],
        });
    }
    let result = match cli.command {
        Command::Init(args) => cmd::init::run(&args),
        Command::Check { comp, scale, json } => {
            cmd::check::run(comp.path.as_deref(), &scale.scale, json)
        }
        Command::Plan { comp, scale, json } => {
            cmd::plan::run(comp.path.as_deref(), &scale.scale, json)
        }
        Command::Graph {
            comp,
            scale,
            format,
        } => cmd::plan::graph(comp.path.as_deref(), &scale.scale, &format),
        Command::Lock {
            comp,
            update,
            check,
            json,
            packages,
        } => cmd::image::lock(comp.path.as_deref(), update, check, json, &packages),
        Command::Build {
            comp,
            json,
            packages,
        } => cmd::image::build(comp.path.as_deref(), json, &packages),
        Command::Vendor { paths, json } => match paths.as_slice() {
            [dir] => cmd::image::vendor(None, dir, json),
            [comp, dir] => cmd::image::vendor(Some(comp), dir, json),
            _ => Err(output::Failure::Usage(
                "vendor takes [PATH] DIR: the composition and the folder to write".into(),
            )),
        },
        Command::Verify { comp } => cmd::image::verify(comp.path.as_deref()),
        Command::Store(StoreCommand::Ls { json }) => cmd::image::store_ls(json),
        Command::Store(StoreCommand::Gc) => cmd::image::store_gc(),
        Command::Store(StoreCommand::Push { args, json }) => {
            cmd::cache::transfer(cmd::cache::Direction::Push, &args, json)
        }
        Command::Store(StoreCommand::Pull { args, json }) => {
            cmd::cache::transfer(cmd::cache::Direction::Pull, &args, json)
        }
        Command::Up { comp, scale, args } => {
            cmd::cluster::up(comp.path.as_deref(), &scale.scale, &args)
        }
        Command::Status { comp, json } => cmd::cluster::status(comp.path.as_deref(), json),
        Command::Exec { file, args } => cmd::cluster::exec(file.path.as_deref(), &args),
        Command::Cp { file, src, dst } => cmd::cluster::cp(file.path.as_deref(), &src, &dst),
        Command::Ssh { file, node, args } => cmd::cluster::ssh(file.path.as_deref(), &node, &args),
        Command::SshConfig { comp } => cmd::cluster::ssh_config(comp.path.as_deref()),
        Command::Forward { file, node, port } => {
            cmd::cluster::forward(file.path.as_deref(), &node, port)
        }
        Command::Console { file, node } => cmd::cluster::console(file.path.as_deref(), &node),
        Command::Logs { file, node, follow } => {
            cmd::cluster::logs(file.path.as_deref(), &node, follow)
        }
        Command::Fault(args) => cmd::fault::fault(&args),
        Command::Power(args) => cmd::fault::power(&args),
        Command::Test { comp, scale, args } => {
            cmd::test::run(comp.path.as_deref(), &scale.scale, &args)
        }
        Command::Ci(args) => cmd::ci::run(&args),
        Command::Snapshot(command) => cmd::snapshot::run(&command),
        Command::Down { comp } => cmd::cluster::down(comp.path.as_deref()),
        Command::Supervise { dir } => cmd::cluster::supervise(&dir),
        Command::BuildSteps { request } => cmd::image::build_steps(&request),
        Command::Doctor { json } => cmd::doctor::doctor(json),
        Command::Schema => {
            outln!("{}", testbed_model::schema::json_schema());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap checks positional order, conflicts and names only when a
        // verb is parsed; this checks every verb at once.
        super::Cli::command().debug_assert();
    }
}
