//! Stage one of parsing: the file as written, with spans.
//!
//! These structs mirror `testbed.toml` key for key. They accept anything of the
//! right TOML type and keep the byte span of every value, so that stage two
//! ([`crate::validate`]) can point at the offending text. Unknown keys are
//! rejected here by serde (`deny_unknown_fields`). The JSON Schema published by
//! `testbed schema` is derived from these structs, so editors and the parser
//! can never disagree about which keys exist.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

/// A map whose keys keep their spans (duplicate keys are a TOML error already).
pub type SpannedMap<V> = IndexMap<Spanned<String>, Spanned<V>>;

/// The whole file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "testbed composition",
    description = "A testbed.toml file: a cluster of nodes described by roles"
)]
pub struct RawComposition {
    /// The cluster's identity and distribution.
    #[serde(default)]
    #[schemars(with = "RawCluster")]
    pub cluster: Option<Spanned<RawCluster>>,
    /// Role keys inherited by every role.
    #[serde(default)]
    #[schemars(with = "RawRole")]
    pub defaults: Option<Spanned<RawRole>>,
    /// The roles; each role expands to `count` nodes.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, RawRole>")]
    pub roles: SpannedMap<RawRole>,
    /// Secrets generated once per cluster at `up`, never part of an image.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, RawSecret>")]
    pub secrets: SpannedMap<RawSecret>,
    /// The L2 networks between nodes; without this table there is one network `lan`.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, RawNetwork>")]
    // Not wrapped in `Spanned`: toml cannot give spanned keys inside a
    // spanned table, and the keys' spans matter more.
    pub networks: Option<SpannedMap<RawNetwork>>,
    /// The libvirt hosts nodes are placed on, in order; used only by
    /// `--backend libvirt` (`testbed up --host URI` replaces this list).
    #[serde(default)]
    #[schemars(with = "Vec<RawHost>")]
    pub hosts: Option<Spanned<Vec<RawHost>>>,
    /// The test run by `testbed test`.
    #[serde(default)]
    #[schemars(with = "RawTest")]
    pub test: Option<Spanned<RawTest>>,
}

/// `[cluster]`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `[a-z][a-z0-9-]{0,30}`; default: the composition's folder name.
    #[serde(default)]
    #[schemars(with = "String", regex(pattern = r"^[a-z][a-z0-9-]{0,30}$"))]
    pub name: Option<Spanned<String>>,
    /// The distribution of every node, as `vendor/suite`.
    #[serde(default)]
    #[schemars(with = "SupportedDistro")]
    pub distro: Option<Spanned<String>>,
    /// The kernel package installed in every image (default `linux-image-cloud-amd64`).
    #[serde(default)]
    #[schemars(with = "String")]
    pub kernel: Option<Spanned<String>>,
    /// An apt mirror URL for image builds (default: the host's apt sources).
    #[serde(default)]
    #[schemars(with = "String")]
    pub mirror: Option<Spanned<String>>,
    /// The base URL of a Debian snapshot archive (laid out as
    /// `BASE/archive/ARCHIVE/YYYYMMDDTHHMMSSZ/`) that image builds fetch a
    /// locked package from when the mirror no longer has it, or `"off"` for
    /// no such fallback. An `http://`, `https://` or `file://` URL (default:
    /// Debian's public snapshot service for `debian/*` distros; the
    /// environment variable `TESTBED_SNAPSHOT` overrides both). Not part of
    /// any image key: every package is checked against the lock's SHA-256.
    #[serde(default)]
    #[schemars(with = "String")]
    pub snapshot: Option<Spanned<String>>,
    /// Paths outside the composition's folder that `source` and `template`
    /// files may come from: folders (everything under them) or single
    /// files, absolute or relative to the composition, e.g.
    /// `["/opt/shared-certs"]`. Without them, every such file must be in the
    /// composition's folder once symbolic links are resolved, so that a
    /// composition cannot copy other files of the host into an image.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allow_paths_outside: Option<Spanned<Vec<Spanned<String>>>>,
    /// A repository of an OCI registry (`HOST[:PORT]/PATH`, no scheme, tag
    /// or digest, e.g. `"127.0.0.1:5000/team/slurm"`) that `testbed build`
    /// and `testbed up` pull every image the store lacks from before
    /// building it. The environment variable `TESTBED_CACHE` overrides it
    /// (`TESTBED_CACHE=off` turns the cache off); it overrides the user's
    /// config file (`~/.config/testbed/config.toml`). A cache that cannot be
    /// reached is a warning: images are built locally.
    #[serde(default)]
    #[schemars(with = "String")]
    pub cache: Option<Spanned<String>>,
    /// Whether `build` and `up` push every image of the composition that
    /// `cache` lacks after building (default `false`); needs `cache`. The
    /// environment variable `TESTBED_CACHE_PUSH` (`1` or `0`) overrides it.
    #[serde(default)]
    #[schemars(with = "bool")]
    pub cache_push: Option<Spanned<bool>>,
}

/// `[roles.NAME]` and `[defaults]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    /// How many nodes (default 1). One node is named like the role; several
    /// are named `ROLE1`..`ROLEn`.
    #[serde(default)]
    #[schemars(with = "u32", range(min = 1))]
    pub count: Option<Spanned<i64>>,
    /// Guest memory with a binary unit, e.g. `"512MiB"` or `"1GiB"` (default `"512MiB"`).
    #[serde(default)]
    #[schemars(with = "String", regex(pattern = r"^[0-9]+\s*(KiB|MiB|GiB|TiB)$"))]
    pub memory: Option<Spanned<String>>,
    /// Virtual CPUs (default 1).
    #[serde(default)]
    #[schemars(with = "u32", range(min = 1, max = 256))]
    pub cpus: Option<Spanned<i64>>,
    /// Debian packages installed in the role's image; merged with `[defaults]`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub packages: Option<Spanned<Vec<Spanned<String>>>>,
    /// Answers to Debian's install-time questions, as lines of
    /// `debconf-set-selections` (`"package question type value"`), given
    /// before the role's packages are installed; merged with `[defaults]`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub debconf: Option<Spanned<Vec<Spanned<String>>>>,
    /// systemd units started after activation; readiness waits on them.
    /// Merged with `[defaults]`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub services: Option<Spanned<Vec<Spanned<String>>>>,
    /// The networks this role's nodes are attached to (default: all).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub networks: Option<Spanned<Vec<Spanned<String>>>>,
    /// Files placed in the guest, keyed by absolute path; merged with `[defaults]`.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, RawFile>")]
    pub files: SpannedMap<RawFile>,
    /// The name of a `[[hosts]]` entry every node of the role is placed on
    /// (`--backend libvirt` only; default: round-robin over the hosts).
    #[serde(default)]
    #[schemars(with = "String")]
    pub host: Option<Spanned<String>>,
}

/// `[[hosts]]`: a libvirt hypervisor host.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    /// `[a-z][a-z0-9-]*`, at most 63 characters; default `hostN`, N being
    /// the entry's position (1-based).
    #[serde(default)]
    #[schemars(with = "String", regex(pattern = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: Option<Spanned<String>>,
    /// The host's libvirt URI, e.g. `"qemu:///system"` or
    /// `"qemu+ssh://root@node7/system"`.
    #[schemars(with = "String")]
    pub uri: Spanned<String>,
}

/// `files."/abs/path"`: exactly one of `content`, `source` or `template`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// The file's text, inline. Baked into the image.
    #[serde(default)]
    #[schemars(with = "String")]
    pub content: Option<Spanned<String>>,
    /// A file to copy, relative to the composition. Baked into the image.
    #[serde(default)]
    #[schemars(with = "String")]
    pub source: Option<Spanned<String>>,
    /// A Jinja template, relative to the composition, rendered per node at
    /// activation (it may mention the topology).
    #[serde(default)]
    #[schemars(with = "String")]
    pub template: Option<Spanned<String>>,
    /// Octal permission bits as a string (default `"0644"`).
    #[serde(default)]
    #[schemars(with = "String", regex(pattern = r"^0?[0-7]{3,4}$"))]
    pub mode: Option<Spanned<String>>,
    /// `user` or `user:group` (default `root:root`).
    #[serde(default)]
    #[schemars(with = "String")]
    pub owner: Option<Spanned<String>>,
}

/// `[secrets.NAME]`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// Absolute path of the secret in the guests.
    #[schemars(with = "String")]
    pub file: Option<Spanned<String>>,
    /// How many random bytes (default 32).
    #[serde(default)]
    #[schemars(with = "u32", range(min = 1, max = 65536))]
    pub bytes: Option<Spanned<i64>>,
    /// `user` or `user:group` (default `root:root`).
    #[serde(default)]
    #[schemars(with = "String")]
    pub owner: Option<Spanned<String>>,
    /// Octal permission bits as a string (default `"0400"`).
    #[serde(default)]
    #[schemars(with = "String", regex(pattern = r"^0?[0-7]{3,4}$"))]
    pub mode: Option<Spanned<String>>,
    /// The roles that receive the secret (default: all).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub roles: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[networks.NAME]`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// IPv4 CIDR, e.g. `"10.44.0.0/24"` (default: a distinct /24 per network).
    #[serde(default)]
    #[schemars(with = "String")]
    pub subnet: Option<Spanned<String>>,
}

/// `[test]`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    /// The test script, relative to the composition.
    #[serde(default)]
    #[schemars(with = "String")]
    pub script: Option<Spanned<String>>,
    /// Time limit for the whole test, e.g. `"30m"`, `"90s"` (default `"30m"`).
    #[serde(default)]
    #[schemars(with = "String")]
    pub timeout: Option<Spanned<String>>,
}

/// The distributions the image builder knows; used for the schema only.
#[derive(Debug, JsonSchema)]
pub enum SupportedDistro {
    /// Debian 12.
    #[serde(rename = "debian/bookworm")]
    DebianBookworm,
}
