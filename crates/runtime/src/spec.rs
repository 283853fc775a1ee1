//! The cluster spec: everything the supervisor needs to run a cluster, and
//! how `up` makes it from a plan and built images.
//!
//! The spec is the boundary between the parts that understand compositions
//! (model, image builder) and the part that runs processes: the supervisor
//! reads nothing but this file. It holds per-node activations (the node
//! identity: host name, addresses, `/etc/hosts`, rendered templates,
//! secrets, SSH keys), so it is written with mode 0600 in the private state
//! directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use testbed_model::composition::{Composition, FileKind};
use testbed_model::plan::Plan;
use testbed_proto::{Activation, FileWrite, InterfaceConfig, SshConfig, SshHostKey};
use thiserror::Error;

use crate::accel::Accel;
use crate::container::EngineInfo;
use crate::keys::{self, KeyError, KeyPair};
use crate::state::{self, StateDir, StateError};

/// The unit that makes `testbed ssh` work; started before the role's
/// services so a node whose service fails can still be inspected.
pub const SSH_UNIT: &str = "ssh.service";

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("node {node}: no image was built for role {role}")]
    NoImage { node: String, role: String },
    #[error("node {node}: {message}")]
    Template { node: String, message: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot read the cluster spec {}: {message}", .path.display())]
    Read { path: PathBuf, message: String },
}

/// Everything the supervisor runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub cluster: String,
    /// The composition's absolute path, for messages and `status`.
    pub composition: PathBuf,
    /// What runs the nodes.
    #[serde(default)]
    pub backend: BackendSpec,
    pub accel: Accel,
    /// How long a node may take from QEMU's start to its agent's hello.
    pub boot_timeout_ms: u64,
    /// How long activation (files, addresses, services) may take.
    pub activation_timeout_ms: u64,
    /// Seeds the switch's loss and jitter, so runs are repeatable.
    pub seed: u64,
    /// Where role snapshots are kept and made (the store's `.snapshots`):
    /// VM nodes start from their role's snapshot instead of booting.
    /// `None` (`--cold`) boots every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<PathBuf>,
    /// Where this cluster's snapshots (`testbed snapshot save`) are kept:
    /// the store's `.clusters/<cluster>`. `None` for a spec written by an
    /// older testbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<PathBuf>,
    /// Set by `up --from NAME`: the cluster snapshot every node resumes
    /// from instead of booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<PathBuf>,
    pub networks: Vec<NetworkSpec>,
    pub nodes: Vec<NodeSpec>,
}

/// What runs a cluster's nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendSpec {
    /// One QEMU process per node, owned by the supervisor.
    #[default]
    Qemu,
    /// One container per node, owned by a container engine.
    Container { engine: EngineInfo },
    /// One transient libvirt domain per node, on one or more libvirt hosts.
    Libvirt {
        /// The hosts' libvirt URIs.
        hosts: Vec<String>,
        /// Node → index into `hosts`.
        placement: BTreeMap<String, usize>,
    },
}

impl BackendSpec {
    /// The name `status` shows.
    pub fn name(&self) -> String {
        match self {
            BackendSpec::Qemu => "qemu".to_owned(),
            BackendSpec::Container { engine } => engine.engine.to_string(),
            BackendSpec::Libvirt { .. } => "libvirt".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// CIDR.
    pub subnet: String,
}

/// The files a VM boots from: one store entry, shared by a role's nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFiles {
    /// The store key.
    pub key: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    /// The root file system as a tar archive (what containers are made of).
    #[serde(default)]
    pub archive: PathBuf,
    /// The kernel command line the image's stage 1 expects.
    pub cmdline: String,
}

impl ImageFiles {
    /// The store entry's folder, which holds every one of these files.
    pub fn dir(&self) -> PathBuf {
        self.kernel
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub role: String,
    pub memory_mib: u64,
    pub cpus: u32,
    pub image: ImageFiles,
    pub nics: Vec<NicSpec>,
    pub activation: Activation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    pub network: String,
    pub mac: String,
    pub ip: String,
    pub prefix: u8,
}

impl ClusterSpec {
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_millis(self.boot_timeout_ms)
    }

    pub fn activation_timeout(&self) -> Duration {
        Duration::from_millis(self.activation_timeout_ms)
    }

    /// Reads a spec written by [`ClusterSpec::write`].
    pub fn read(path: &Path) -> Result<ClusterSpec, SpecError> {
        let text = std::fs::read(path).map_err(|e| SpecError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        serde_json::from_slice(&text).map_err(|e| SpecError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Writes the spec atomically with mode 0600 (it holds secrets).
    pub fn write(&self, path: &Path) -> Result<(), SpecError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| SpecError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        state::write_atomic(path, &json, 0o600)?;
        Ok(())
    }
}

/// What `up` decided beyond the plan.
#[derive(Debug, Clone)]
pub struct Options {
    pub backend: BackendSpec,
    pub accel: Accel,
    pub boot_timeout: Duration,
    pub activation_timeout: Duration,
    pub seed: u64,
    /// See [`ClusterSpec::snapshots`].
    pub snapshots: Option<PathBuf>,
    /// See [`ClusterSpec::saved`].
    pub saved: Option<PathBuf>,
}

/// The text of `/etc/hosts` for every node: each node's first address
/// under its bare name, and every address as `NODE.NETWORK`.
pub fn hosts_file(plan: &Plan) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    text.push_str(&format!(
        "\n# cluster {}, written by testbed at activation\n",
        plan.cluster
    ));
    for node in &plan.nodes {
        for (i, nic) in node.nics.iter().enumerate() {
            if i == 0 {
                text.push_str(&format!(
                    "{}\t{} {}.{}\n",
                    nic.ip, node.name, node.name, nic.network
                ));
            } else {
                text.push_str(&format!("{}\t{}.{}\n", nic.ip, node.name, nic.network));
            }
        }
    }
    text
}

/// SSH material of a cluster, written to its state directory.
#[derive(Debug)]
pub struct SshMaterial {
    pub client: KeyPair,
    pub host_keys: BTreeMap<String, KeyPair>,
}

/// The client key, `known_hosts` and the OpenSSH config (see
/// [`ssh_config`]) under `state/ssh`.
pub fn write_ssh(dir: &StateDir, ssh: &SshMaterial, proxy: &[String]) -> Result<(), SpecError> {
    let ssh_dir = dir.ssh_dir();
    std::fs::create_dir_all(&ssh_dir).map_err(|source| StateError::Io {
        what: "create",
        path: ssh_dir.clone(),
        source,
    })?;
    state::write_atomic(
        &ssh_dir.join("id_ed25519"),
        ssh.client.private_key.as_bytes(),
        0o600,
    )?;
    let mut known = String::new();
    for (node, key) in &ssh.host_keys {
        // `ssh_config` sets `HostKeyAlias NODE`, so this is the name ssh
        // looks the key up by.
        known.push_str(&format!("{node} {}\n", key.public_key));
    }
    state::write_atomic(&ssh_dir.join("known_hosts"), known.as_bytes(), 0o600)?;
    let nodes: Vec<&str> = ssh.host_keys.keys().map(String::as_str).collect();
    let config = ssh_config(dir, &nodes, proxy);
    state::write_atomic(&ssh_dir.join("config"), config.as_bytes(), 0o600)?;
    Ok(())
}

/// An OpenSSH client config reaching every node through the supervisor
/// (`proxy` is the command that forwards stdio to a node's port: the
/// `testbed` binary with its arguments; `%n` is replaced per node), usable
/// by `ssh -F`, `scp -F` and Ansible's `ansible_ssh_common_args`.
pub fn ssh_config(dir: &StateDir, nodes: &[&str], proxy: &[String]) -> String {
    let ssh_dir = dir.ssh_dir();
    let quote = |s: &str| {
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=%:,+@".contains(c))
        {
            s.to_owned()
        } else {
            format!("\"{}\"", s.replace('"', "\\\""))
        }
    };
    let mut text = String::from("# Written by testbed; regenerated at every `up`.\n");
    for node in nodes {
        let command: Vec<String> = proxy
            .iter()
            .map(|a| quote(&a.replace("%n", node)))
            .collect();
        text.push_str(&format!(
            "\nHost {node}\n  HostName {node}\n  HostKeyAlias {node}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  ProxyCommand {}\n  LogLevel ERROR\n",
            quote(&ssh_dir.join("id_ed25519").to_string_lossy()),
            quote(&ssh_dir.join("known_hosts").to_string_lossy()),
            command.join(" "),
        ));
    }
    text
}

/// Builds the spec of `plan`: renders every node's templates, generates the
/// cluster's secrets and SSH keys (scratch files in `scratch`), and fills
/// one activation per node. `images` maps role names to their files.
pub fn prepare(
    comp: &Composition,
    plan: &Plan,
    images: &BTreeMap<String, ImageFiles>,
    options: &Options,
    scratch: &Path,
) -> Result<(ClusterSpec, SshMaterial), SpecError> {
    let hosts = hosts_file(plan);
    let mut secrets = BTreeMap::new();
    for secret in &comp.secrets {
        let bytes = keys::random_bytes(&secret.name, secret.bytes as usize)?;
        secrets.insert(secret.name.clone(), bytes);
    }
    let client = keys::ed25519(scratch, &format!("testbed@{}", plan.cluster))?;
    let mut host_keys = BTreeMap::new();
    let mut nodes = Vec::new();
    let mut templates = BTreeMap::new();
    for node in &plan.nodes {
        let image = images
            .get(&node.role)
            .ok_or_else(|| SpecError::NoImage {
                node: node.name.clone(),
                role: node.role.clone(),
            })?
            .clone();
        let role = comp.role(&node.role).ok_or_else(|| SpecError::NoImage {
            node: node.name.clone(),
            role: node.role.clone(),
        })?;
        let mut files = Vec::new();
        for file in &role.files {
            let FileKind::Template(path) = &file.kind else {
                continue;
            };
            if !templates.contains_key(path) {
                // Resolved and checked again right before reading: a link
                // swapped since validation is refused.
                let source =
                    testbed_model::template::read(&comp.confinement, path).map_err(|d| {
                        SpecError::Template {
                            node: node.name.clone(),
                            message: d.to_string(),
                        }
                    })?;
                templates.insert(path.clone(), source);
            }
            let text = testbed_model::template::render(plan, &node.name, &templates[path])
                .map_err(|d| SpecError::Template {
                    node: node.name.clone(),
                    message: d.to_string(),
                })?;
            files.push(FileWrite {
                path: file.path.clone(),
                contents: text.into_bytes(),
                owner: file.owner.clone(),
                mode: file.mode,
            });
        }
        let node_secrets = comp
            .secrets
            .iter()
            .filter(|s| s.roles.contains(&node.role))
            .map(|s| FileWrite {
                path: s.file.clone(),
                contents: secrets[&s.name].clone(),
                owner: s.owner.clone(),
                mode: s.mode,
            })
            .collect();
        let host_key = keys::ed25519(scratch, &format!("root@{}", node.name))?;
        let mut services = vec![SSH_UNIT.to_owned()];
        services.extend(role.services.iter().cloned());
        let activation = Activation {
            hostname: node.name.clone(),
            interfaces: node
                .nics
                .iter()
                .map(|nic| InterfaceConfig {
                    mac: nic.mac.to_string(),
                    addresses: vec![format!("{}/{}", nic.ip, nic.prefix)],
                    mtu: None,
                    network: Some(nic.network.clone()),
                })
                .collect(),
            hosts: hosts.clone(),
            files,
            secrets: node_secrets,
            ssh: Some(SshConfig {
                host_keys: vec![SshHostKey {
                    algorithm: "ed25519".to_owned(),
                    private_key: host_key.private_key.clone(),
                    public_key: host_key.public_key.clone(),
                }],
                authorized_keys: vec![client.public_key.clone()],
            }),
            services,
            service_timeout_ms: testbed_proto::millis(options.activation_timeout),
            identity: None,
        };
        host_keys.insert(node.name.clone(), host_key);
        nodes.push(NodeSpec {
            name: node.name.clone(),
            role: node.role.clone(),
            memory_mib: node.memory_mib,
            cpus: node.cpus,
            image,
            nics: node
                .nics
                .iter()
                .map(|nic| NicSpec {
                    network: nic.network.clone(),
                    mac: nic.mac.to_string(),
                    ip: nic.ip.to_string(),
                    prefix: nic.prefix,
                })
                .collect(),
            activation,
        });
    }
    let spec = ClusterSpec {
        cluster: plan.cluster.clone(),
        composition: std::path::absolute(&comp.source.path)
            .unwrap_or_else(|_| comp.source.path.clone()),
        backend: options.backend.clone(),
        accel: options.accel,
        boot_timeout_ms: testbed_proto::millis(options.boot_timeout),
        activation_timeout_ms: testbed_proto::millis(options.activation_timeout),
        seed: options.seed,
        snapshots: options.snapshots.clone(),
        saved: options.saved.clone(),
        resume: None,
        networks: plan
            .networks
            .iter()
            .map(|n| NetworkSpec {
                name: n.name.clone(),
                subnet: n.subnet.to_string(),
            })
            .collect(),
        nodes,
    };
    Ok((spec, SshMaterial { client, host_keys }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> (Composition, Plan) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/slurm/testbed.toml");
        testbed_model::check(&path, &testbed_model::Scale::default()).expect("example is valid")
    }

    fn images() -> BTreeMap<String, ImageFiles> {
        ["ctl", "nfs", "compute"]
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    ImageFiles {
                        key: format!("key-{r}"),
                        kernel: PathBuf::from(format!("/store/{r}/kernel")),
                        initramfs: PathBuf::from(format!("/store/{r}/initramfs")),
                        rootfs: PathBuf::from(format!("/store/{r}/rootfs.erofs")),
                        archive: PathBuf::from(format!("/store/{r}/rootfs.tar.gz")),
                        cmdline: "console=ttyS0".to_owned(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_example_becomes_six_activations_with_shared_secrets_and_own_keys() {
        let (comp, plan) = example();
        let scratch = tempfile::tempdir().unwrap();
        let options = Options {
            backend: BackendSpec::Qemu,
            accel: Accel::Tcg,
            boot_timeout: Duration::from_secs(300),
            activation_timeout: Duration::from_secs(120),
            seed: 7,
            snapshots: None,
            saved: None,
        };
        let (spec, ssh) = prepare(&comp, &plan, &images(), &options, scratch.path()).unwrap();
        let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["ctl", "nfs", "compute1", "compute2", "compute3", "compute4"]
        );
        let ctl = spec.node("ctl").unwrap();
        let c3 = spec.node("compute3").unwrap();
        assert_eq!(ctl.image.key, "key-ctl");
        assert_eq!(c3.image.key, "key-compute");
        assert_eq!(ctl.activation.hostname, "ctl");
        assert_eq!(
            ctl.activation.services,
            ["ssh.service", "munge", "slurmctld", "home.automount"]
        );
        // One munge key for the whole cluster.
        assert_eq!(ctl.activation.secrets.len(), 1);
        assert_eq!(ctl.activation.secrets[0].contents.len(), 1024);
        assert_eq!(
            ctl.activation.secrets[0].contents,
            c3.activation.secrets[0].contents
        );
        // slurm.conf is rendered from the topology.
        let conf = String::from_utf8(ctl.activation.files[0].contents.clone()).unwrap();
        assert!(conf.contains("compute4"), "{conf}");
        // /etc/hosts names every node by name.
        assert!(ctl
            .activation
            .hosts
            .contains(&format!("{}\tcompute3 compute3.lan", c3.nics[0].ip)));
        // Every node has its own host key; all trust the one client key.
        assert_eq!(ssh.host_keys.len(), 6);
        let ctl_ssh = ctl.activation.ssh.as_ref().unwrap();
        let c3_ssh = c3.activation.ssh.as_ref().unwrap();
        assert_ne!(
            ctl_ssh.host_keys[0].public_key,
            c3_ssh.host_keys[0].public_key
        );
        assert_eq!(ctl_ssh.authorized_keys, vec![ssh.client.public_key.clone()]);
        // The spec round-trips through its file.
        let state = tempfile::tempdir().unwrap();
        let file = state.path().join("spec.json");
        spec.write(&file).unwrap();
        assert_eq!(ClusterSpec::read(&file).unwrap(), spec);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn ssh_config_has_a_host_block_per_node_with_the_proxy() {
        let dir = StateDir::at("/run/tb/slurm-1234abcd");
        let proxy = vec![
            "/usr/bin/testbed".to_owned(),
            "forward".to_owned(),
            "--file".to_owned(),
            "/home/me/my cluster/testbed.toml".to_owned(),
            "%n".to_owned(),
            "22".to_owned(),
        ];
        let text = ssh_config(&dir, &["ctl", "compute1"], &proxy);
        assert!(text.contains("\nHost ctl\n"), "{text}");
        assert!(text.contains(
            "ProxyCommand /usr/bin/testbed forward --file \"/home/me/my cluster/testbed.toml\" compute1 22"
        ), "{text}");
        assert!(text.contains("IdentityFile /run/tb/slurm-1234abcd/ssh/id_ed25519"));
        assert!(text.contains("StrictHostKeyChecking yes"));
    }
}
