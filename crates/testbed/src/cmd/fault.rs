//! `testbed fault ...` and `testbed power ...`: network faults applied in the
//! cluster's virtual switch, and node power actions, from outside a script
//! (long experiments, manual exploration). Both are clients of the
//! supervisor API, like the test driver's `partition()`, `link()`,
//! `crash()`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use testbed_runtime::api::{Fault, NodeState, PowerAction, Reply, Request};
use testbed_runtime::switch::LinkChange;

use super::cluster::{connect, fetch_status, reply_error, state_dir};
use crate::output::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub struct FaultArgs {
    /// The composition: a testbed.toml or its folder [default: ./testbed.toml]
    #[arg(short = 'f', long = "file", value_name = "PATH", global = true)]
    pub path: Option<PathBuf>,
    #[command(subcommand)]
    pub fault: FaultCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum FaultCommand {
    /// Split the nodes into groups that cannot reach each other, e.g.
    /// `partition ctl,compute1 compute2` (unlisted nodes form one more group)
    Partition {
        /// Comma-separated node names, one argument per group
        #[arg(required = true, value_name = "NODE,NODE...")]
        groups: Vec<String>,
    },
    /// Remove every fault: partition, blocked nodes and link rules
    Heal,
    /// Cut every link of a node (its agent stays reachable)
    Block {
        /// The node
        node: String,
    },
    /// Undo `block`
    Unblock {
        /// The node
        node: String,
    },
    /// Change the link between two nodes (both directions); options given
    /// replace the link's current values, the others stay
    Link(LinkArgs),
    /// Print every fault change since `up`
    History {
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// One end
    pub a: String,
    /// The other end
    pub b: String,
    /// Added one-way delay, e.g. 50ms
    #[arg(long, value_parser = parse_delay)]
    pub delay: Option<Duration>,
    /// Delay varies within ± this (at most the delay), e.g. 5ms
    #[arg(long, value_parser = parse_delay)]
    pub jitter: Option<Duration>,
    /// Fraction of frames dropped, 0.0 to 1.0
    #[arg(long)]
    pub loss: Option<f64>,
    /// Bandwidth limit, e.g. 10mbit (`--rate none` removes it)
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Take the link down
    #[arg(long, conflicts_with = "up")]
    pub down: bool,
    /// Bring the link up again (keeps delay, loss and rate)
    #[arg(long)]
    pub up: bool,
    /// Remove every rule of the link first
    #[arg(long)]
    pub clear: bool,
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    testbed_model::units::parse_delay(s).map_err(|e| e.to_string())
}

/// A rate in bit/s; `none` is 0, which the switch reads as no limit.
fn parse_rate(s: &str) -> Result<u64, String> {
    if s == "none" {
        return Ok(0);
    }
    testbed_model::units::parse_rate(s).map_err(|e| e.to_string())
}

impl LinkArgs {
    fn change(&self) -> Result<LinkChange, Failure> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let change = LinkChange {
            clear: self.clear,
            down: if self.down {
                Some(true)
            } else if self.up {
                Some(false)
            } else {
                None
            },
            loss: self.loss,
            delay_ms: self.delay.map(ms),
            jitter_ms: self.jitter.map(ms),
            rate_bps: self.rate,
        };
        if change == LinkChange::default() {
            return Err(Failure::Usage(
                "fault link: give at least one of --delay, --jitter, --loss, --rate, --down, --up, --clear"
                    .to_owned(),
            ));
        }
        Ok(change)
    }
}

/// Splits `a,b c` style groups.
fn groups(args: &[String]) -> Result<Vec<Vec<String>>, Failure> {
    args.iter()
        .map(|g| {
            let nodes: Vec<String> = g
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect();
            if nodes.is_empty() {
                Err(Failure::Usage(format!(
                    "fault partition: empty group {g:?}; write groups as NODE,NODE"
                )))
            } else {
                Ok(nodes)
            }
        })
        .collect()
}

fn describe(rule: &testbed_runtime::switch::LinkRule) -> String {
    let mut parts = Vec::new();
    if rule.down {
        parts.push("down".to_owned());
    }
    if !rule.delay.is_zero() {
        parts.push(format!("delay {:?}", rule.delay));
        if !rule.jitter.is_zero() {
            parts.push(format!("jitter {:?}", rule.jitter));
        }
    }
    if rule.loss > 0.0 {
        parts.push(format!("loss {}", rule.loss));
    }
    if let Some(r) = rule.rate_bps {
        parts.push(format!("rate {r} bit/s"));
    }
    if parts.is_empty() {
        "no fault".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `testbed fault ...`.
pub fn fault(args: &FaultArgs) -> Outcome {
    let request = match &args.fault {
        FaultCommand::Partition { groups: g } => {
            Request::Fault(Fault::Partition { groups: groups(g)? })
        }
        FaultCommand::Heal => Request::Fault(Fault::Heal),
        FaultCommand::Block { node } => Request::Fault(Fault::Block { node: node.clone() }),
        FaultCommand::Unblock { node } => Request::Fault(Fault::Unblock { node: node.clone() }),
        FaultCommand::Link(link) => Request::Fault(Fault::Link {
            a: link.a.clone(),
            b: link.b.clone(),
            change: link.change()?,
        }),
        FaultCommand::History { .. } => Request::History,
    };
    let (cluster, dir) = state_dir(args.path.as_deref())?;
    let mut client = connect(&cluster, &dir)?;
    let reply = client
        .call(&request)
        .map_err(|e| Failure::Runtime(e.into()))?;
    match (&args.fault, reply) {
        (FaultCommand::History { json }, Reply::History { events }) => {
            if *json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&events).context("history as JSON")?
                );
            } else {
                for e in events {
                    outln!("{:.3} {}", e.at, e.change);
                }
            }
            Ok(())
        }
        (FaultCommand::Link(link), Reply::Link { rule }) => {
            errln!("link {}-{}: {}", link.a, link.b, describe(&rule));
            Ok(())
        }
        (_, Reply::Ok) => Ok(()),
        (_, other) => Err(reply_error(other)),
    }
}

value_enum! {
    /// A power action as `testbed power` takes it.
    pub struct PowerVerb(PowerAction) {
        PowerAction::Start => "start": "Boot a stopped node and wait until it is ready again",
        PowerAction::Shutdown => "shutdown": "Clean shutdown through the guest",
        PowerAction::Crash => "crash": "Instant power loss",
        PowerAction::Reboot => "reboot": "Clean reboot; waits until the node is ready again",
        PowerAction::Pause => "pause": "Freeze the node's CPUs",
        PowerAction::Resume => "resume": "Undo pause",
    }
}

#[derive(Debug, clap::Args)]
pub struct PowerArgs {
    /// The composition: a testbed.toml or its folder [default: ./testbed.toml]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// What to do
    #[arg(value_enum)]
    pub action: PowerVerb,
    /// The node
    pub node: String,
    /// Return once the supervisor accepted a start or reboot, without
    /// waiting for the node to be ready
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for readiness [default: the cluster's boot timeout]
    #[arg(long, value_name = "DURATION", value_parser = super::cluster::parse_duration)]
    pub timeout: Option<Duration>,
}

/// `testbed power ACTION NODE`.
pub fn power(args: &PowerArgs) -> Outcome {
    let (cluster, dir) = state_dir(args.path.as_deref())?;
    let action = args.action.0;
    let mut client = connect(&cluster, &dir)?;
    match client
        .call(&Request::Power {
            node: args.node.clone(),
            action,
        })
        .map_err(|e| Failure::Runtime(e.into()))?
    {
        Reply::Ok => {}
        other => return Err(reply_error(other)),
    }
    if args.no_wait || !matches!(action, PowerAction::Start | PowerAction::Reboot) {
        return Ok(());
    }
    let spec = testbed_runtime::spec::ClusterSpec::read(&dir.spec())
        .map_err(|e| Failure::Runtime(e.into()))?;
    let timeout = args.timeout.unwrap_or_else(|| spec.boot_timeout());
    wait_node_ready(&cluster, &dir, &args.node, timeout)
}

/// Polls the status until `node` is ready (or failed, or the time is up).
fn wait_node_ready(
    cluster: &str,
    dir: &testbed_runtime::state::StateDir,
    node: &str,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    let mut last = None;
    loop {
        let status = fetch_status(cluster, dir)?;
        let n = status
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| Failure::Runtime(anyhow!("no node {node} in cluster {cluster}")))?;
        if last != Some(n.state) {
            errln!("{:>6.1}s {node} {}", start.elapsed().as_secs_f64(), n.state);
            last = Some(n.state);
        }
        match n.state {
            NodeState::Ready => return Ok(()),
            NodeState::Failed | NodeState::Stopped => {
                return Err(Failure::Runtime(anyhow!(
                    "node {node} is {}: {}\n  console log: {}",
                    n.state,
                    n.message.as_deref().unwrap_or("no details"),
                    n.console_log.display()
                )))
            }
            _ => {}
        }
        if start.elapsed() > timeout {
            return Err(Failure::Runtime(anyhow!(
                "node {node} was not ready within {:.0}s (still {}); console log: {}",
                timeout.as_secs_f64(),
                n.state,
                n.console_log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
