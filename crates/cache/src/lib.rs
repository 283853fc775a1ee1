//! testbed's store entries in an OCI registry (`docs/cache.md`).
//!
//! One store entry (one role's image: `kernel`, `initramfs`,
//! `rootfs.erofs`, ... and its `manifest.json`) is one OCI artifact,
//! tagged with its store key in a repository such as
//! `127.0.0.1:5000/team/slurm`:
//!
//! - its config blob is the entry's `manifest.json`, byte for byte (the key,
//!   the inputs the key is a hash of, the digest of every file);
//! - each file is cut into parts of at most [`PART`] bytes, each part
//!   compressed with zstd into one layer (so no layer is huge, and memory
//!   stays bounded on both ends), in order, annotated with its file and
//!   part number;
//! - the manifest's annotations repeat the key.
//!
//! A pull checks everything before the entry exists in the store: the
//! config's key is the one asked for and is the hash of its inputs, every
//! blob has its descriptor's digest, every file is rebuilt whole with its
//! manifest's size and SHA-256. It writes into the store's `.tmp` and renames
//! into place only then (`Store::commit`); on any error nothing is left.
//! Integrity, not trust: whoever may push to the repository decides what
//! the entry holds (`testbed verify` rebuilds an entry and compares).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};
use testbed_image::manifest::MANIFEST;
use testbed_image::{ImageError, Manifest, Store};

mod auth;

pub use auth::credentials;

/// The largest part of a file in one layer, before compression.
pub const PART: u64 = 64 << 20;

/// zstd's level for the layers: its default, fast both ways. The same
/// entry compressed by the same zstd makes the same blobs, so a second
/// push of it sends nothing.
const ZSTD_LEVEL: i32 = 3;

/// The artifact type of a store entry.
pub const ARTIFACT_TYPE: &str = "application/vnd.testbed.store-entry.v1";
/// The media type of its config blob (the entry's `manifest.json`).
pub const CONFIG_TYPE: &str = "application/vnd.testbed.store-entry.manifest.v1+json";
/// The media type of its layers (a part of a file, zstd-compressed).
pub const PART_TYPE: &str = "application/vnd.testbed.store-entry.part.v1+zstd";

const KEY_ANNOTATION: &str = "dev.testbed.key";
const FILE_ANNOTATION: &str = "dev.testbed.file";
const PART_ANNOTATION: &str = "dev.testbed.part";
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// What can go wrong, each naming the reference or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "{reference:?} is not a repository reference (e.g. 127.0.0.1:5000/team/slurm): {reason}"
    )]
    BadReference { reference: String, reason: String },
    #[error("image {key} is not in the store: build it first (`testbed build`)")]
    NotInStore { key: String },
    #[error("{reference} is not in the registry (`testbed store push` puts it there)")]
    NotInRegistry { reference: String },
    #[error("{reference}: {action}: {reason}")]
    Registry {
        reference: String,
        action: &'static str,
        reason: String,
    },
    #[error("{reference} is refused: {reason}; nothing was written to the store")]
    Refused { reference: String, reason: String },
    #[error(transparent)]
    Store(#[from] ImageError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, CacheError>;

/// Progress of a push or a pull, for the CLI to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheEvent {
    /// A part of a file was sent (`sent` false: the registry had it).
    Pushed {
        file: String,
        part: usize,
        parts: usize,
        bytes: u64,
        sent: bool,
    },
    /// A part of a file was fetched, checked and unpacked.
    Pulled {
        file: String,
        part: usize,
        parts: usize,
        bytes: u64,
    },
}

/// What a push or pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The store key.
    pub key: String,
    /// `REPOSITORY:KEY`.
    pub reference: String,
    /// The digest of the artifact's manifest.
    pub digest: String,
    /// Blobs (layers and config) of the artifact.
    pub blobs: usize,
    /// Of which sent or fetched (a push skips what the registry has).
    pub moved: usize,
    /// Compressed bytes sent or fetched.
    pub bytes: u64,
}

/// One repository of a registry.
pub struct Registry {
    repository: String,
    client: Client,
    auth: RegistryAuth,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

/// Whether `registry` (`host[:port]`) is this machine, which is spoken to
/// in plain HTTP (as container engines do); any other over HTTPS.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Registry {
    /// The repository `repository` (`HOST[:PORT]/PATH`, no tag), with the
    /// credentials of the usual container files ([`credentials`]).
    pub fn open(repository: &str) -> Result<Registry> {
        let bad = |reason: &str| CacheError::BadReference {
            reference: repository.to_owned(),
            reason: reason.to_owned(),
        };
        let (registry, path) = repository
            .split_once('/')
            .ok_or_else(|| bad("it names no registry host"))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad(
                "its first part must be a registry host, such as 127.0.0.1:5000",
            ));
        }
        if path.is_empty() || repository.contains('@') || path.contains(':') {
            return Err(bad(
                "give a repository without a tag or digest: the store key is the tag",
            ));
        }
        // Parsed once here, so that every later reference parses.
        let probe = format!("{repository}:probe");
        Reference::try_from(probe.as_str()).map_err(|e| bad(&e.to_string()))?;
        let protocol = if is_loopback(registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        // rustls needs one crypto provider for the process (another part
        // of it may have installed one first). ring's, which lacks the
        // post-quantum key exchange, rather than aws-lc's: that one is a
        // large C build (minutes added to every fresh build here), and
        // what goes over this connection is public images, verified by
        // digest.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let _ = provider.install_default();
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..ClientConfig::default()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CacheError::Registry {
                reference: repository.to_owned(),
                action: "start the client",
                reason: e.to_string(),
            })?;
        Ok(Registry {
            repository: repository.to_owned(),
            client,
            auth: credentials(registry),
            runtime,
        })
    }

    /// `REPOSITORY:KEY`.
    pub fn reference(&self, key: &str) -> String {
        format!("{}:{key}", self.repository)
    }

    fn parse(&self, key: &str) -> Result<Reference> {
        let reference = self.reference(key);
        Reference::try_from(reference.as_str()).map_err(|e| CacheError::BadReference {
            reference,
            reason: e.to_string(),
        })
    }

    fn failed(
        &self,
        key: &str,
        action: &'static str,
    ) -> impl Fn(oci_client::errors::OciDistributionError) -> CacheError + '_ {
        let reference = self.reference(key);
        move |e| CacheError::Registry {
            reference: reference.clone(),
            action,
            reason: e.to_string(),
        }
    }

    /// Whether the registry has an artifact for `key`.
    pub fn has(&self, key: &str) -> Result<bool> {
        let reference = self.parse(key)?;
        let found = self.runtime.block_on(async {
            self.client
                .auth(&reference, &self.auth, RegistryOperation::Pull)
                .await?;
            self.client
                .fetch_manifest_digest(&reference, &self.auth)
                .await
        });
        match found {
            Ok(_) => Ok(true),
            Err(e) if is_unknown(&e) => Ok(false),
            Err(e) => Err(self.failed(key, "look up")(e)),
        }
    }

    /// Pushes the store entry `key` as `REPOSITORY:KEY`. Blobs the
    /// registry has already are not sent again.
    pub fn push(
        &self,
        store: &Store,
        key: &str,
        progress: &mut dyn FnMut(CacheEvent),
    ) -> Result<Transfer> {
        let manifest = store.lookup(key).ok_or_else(|| CacheError::NotInStore {
            key: key.to_owned(),
        })?;
        let dir = store.entry_dir(key);
        let reference = self.parse(key)?;
        let failed = |action| self.failed(key, action);
        self.runtime
            .block_on(
                self.client
                    .auth(&reference, &self.auth, RegistryOperation::Push),
            )
            .map_err(failed("authenticate to"))?;
        let mut layers = Vec::new();
        let (mut moved, mut bytes) = (0, 0);
        for (file, info) in &manifest.outputs {
            let path = dir.join(file);
            let mut input = File::open(&path).map_err(io("cannot read", &path))?;
            let parts = parts_of(info.size);
            for part in 0..parts {
                let mut plain = Vec::new();
                (&mut input)
                    .take(PART)
                    .read_to_end(&mut plain)
                    .map_err(io("cannot read", &path))?;
                let packed = zstd::bulk::compress(&plain, ZSTD_LEVEL)
                    .map_err(io("cannot compress", &path))?;
                let digest = sha256(&packed);
                let sent = self.put_blob(&reference, packed.clone(), &digest, key)?;
                if sent {
                    moved += 1;
                    bytes += packed.len() as u64;
                }
                progress(CacheEvent::Pushed {
                    file: file.clone(),
                    part: part + 1,
                    parts,
                    bytes: packed.len() as u64,
                    sent,
                });
                let annotations = BTreeMap::from([
                    (FILE_ANNOTATION.to_owned(), file.clone()),
                    (PART_ANNOTATION.to_owned(), part.to_string()),
                    (TITLE_ANNOTATION.to_owned(), format!("{file}.{part}.zst")),
                ]);
                layers.push(OciDescriptor {
                    media_type: PART_TYPE.to_owned(),
                    digest,
                    size: packed.len() as i64,
                    urls: None,
                    annotations: Some(annotations),
                    artifact_type: None,
                });
            }
        }
        let config_bytes =
            std::fs::read(dir.join(MANIFEST)).map_err(io("cannot read", &dir.join(MANIFEST)))?;
        let config_digest = sha256(&config_bytes);
        if self.put_blob(&reference, config_bytes.clone(), &config_digest, key)? {
            moved += 1;
            bytes += config_bytes.len() as u64;
        }
        let blobs = layers.len() + 1;
        let artifact = OciImageManifest {
            schema_version: 2,
            media_type: Some(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_owned()),
            config: OciDescriptor {
                media_type: CONFIG_TYPE.to_owned(),
                digest: config_digest,
                size: config_bytes.len() as i64,
                urls: None,
                annotations: None,
                artifact_type: None,
            },
            layers,
            subject: None,
            artifact_type: Some(ARTIFACT_TYPE.to_owned()),
            annotations: Some(BTreeMap::from([(
                KEY_ANNOTATION.to_owned(),
                key.to_owned(),
            )])),
        };
        // Sent as serialized here, so that its digest is known: the same
        // entry always makes the same artifact.
        let manifest_bytes = serde_json::to_vec(&artifact).unwrap_or_default();
        let digest = sha256(&manifest_bytes);
        self.runtime
            .block_on(self.client.push_manifest_raw(
                &reference,
                manifest_bytes,
                http::HeaderValue::from_static(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE),
            ))
            .map_err(failed("push the manifest to"))?;
        Ok(Transfer {
            key: key.to_owned(),
            reference: self.reference(key),
            digest,
            blobs,
            moved,
            bytes,
        })
    }

    /// Sends a blob unless the registry has it; whether it was sent.
    fn put_blob(
        &self,
        reference: &Reference,
        data: Vec<u8>,
        digest: &str,
        key: &str,
    ) -> Result<bool> {
        let has = self
            .runtime
            .block_on(self.client.blob_exists(reference, digest))
            .map_err(self.failed(key, "look up a blob in"))?;
        if has {
            return Ok(false);
        }
        self.runtime
            .block_on(self.client.push_blob(reference, data, digest))
            .map_err(self.failed(key, "push a blob to"))?;
        Ok(true)
    }

    /// Pulls `REPOSITORY:KEY` into the store as entry `key`, checking
    /// everything first (see the crate's documentation). An entry the
    /// store has already is not pulled again (`moved` 0).
    pub fn pull(
        &self,
        store: &Store,
        key: &str,
        progress: &mut dyn FnMut(CacheEvent),
    ) -> Result<Transfer> {
        let reference = self.parse(key)?;
        let failed = |action| self.failed(key, action);
        let (artifact, digest) = self
            .runtime
            .block_on(self.client.pull_image_manifest(&reference, &self.auth))
            .map_err(|e| {
                if is_unknown(&e) {
                    CacheError::NotInRegistry {
                        reference: self.reference(key),
                    }
                } else {
                    failed("fetch the manifest from")(e)
                }
            })?;
        let refuse = |reason: String| CacheError::Refused {
            reference: self.reference(key),
            reason,
        };
        check_artifact(key, &artifact).map_err(refuse)?;
        if store.lookup(key).is_some() {
            return Ok(Transfer {
                key: key.to_owned(),
                reference: self.reference(key),
                digest,
                blobs: artifact.layers.len() + 1,
                moved: 0,
                bytes: 0,
            });
        }
        // The config: the entry's manifest, which must be of this key.
        let config = self.fetch(&reference, &artifact.config, CONFIG_LIMIT, key)?;
        let (manifest, plan) = plan(key, &artifact, &config).map_err(refuse)?;
        let tmp = store.temp_dir("pull")?;
        let result = self.unpack(&reference, key, &manifest, &plan, &tmp, progress);
        let (moved, bytes) = match result {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let written = std::fs::write(tmp.join(MANIFEST), &config)
            .map_err(io("cannot write", &tmp.join(MANIFEST)));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        store.commit(&tmp, key)?;
        Ok(Transfer {
            key: key.to_owned(),
            reference: self.reference(key),
            digest,
            blobs: artifact.layers.len() + 1,
            moved: moved + 1,
            bytes: bytes + config.len() as u64,
        })
    }

    /// Fetches the layers of `plan` into files in `tmp` and checks each
    /// file whole; (blobs, compressed bytes) fetched.
    fn unpack(
        &self,
        reference: &Reference,
        key: &str,
        manifest: &Manifest,
        plan: &Plan,
        tmp: &Path,
        progress: &mut dyn FnMut(CacheEvent),
    ) -> Result<(usize, u64)> {
        let refuse = |reason: String| CacheError::Refused {
            reference: self.reference(key),
            reason,
        };
        let (mut moved, mut bytes) = (0, 0);
        for (file, layers) in plan {
            let path = tmp.join(file);
            let mut out = File::create(&path).map_err(io("cannot write", &path))?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            for (part, layer) in layers.iter().enumerate() {
                let packed = self.fetch(reference, layer, LAYER_LIMIT, key)?;
                moved += 1;
                bytes += packed.len() as u64;
                let mut plain = Vec::new();
                zstd::stream::Decoder::new(&packed[..])
                    .map_err(|e| refuse(format!("part {part} of {file} is not zstd: {e}")))?
                    .take(PART + 1)
                    .read_to_end(&mut plain)
                    .map_err(|e| refuse(format!("part {part} of {file} does not unpack: {e}")))?;
                if plain.len() as u64 > PART {
                    return Err(refuse(format!(
                        "part {part} of {file} unpacks to more than {PART} bytes"
                    )));
                }
                size += plain.len() as u64;
                hash.update(&plain);
                out.write_all(&plain).map_err(io("cannot write", &path))?;
                progress(CacheEvent::Pulled {
                    file: file.clone(),
                    part: part + 1,
                    parts: layers.len(),
                    bytes: packed.len() as u64,
                });
            }
            out.sync_all().map_err(io("cannot write", &path))?;
            let expected = &manifest.outputs[file];
            let got = hex(&hash.finalize());
            if size != expected.size || got != expected.sha256 {
                return Err(refuse(format!(
                    "{file} rebuilt from its parts is {size} bytes with SHA-256 {got}; its manifest says {} bytes, {}",
                    expected.size, expected.sha256
                )));
            }
        }
        Ok((moved, bytes))
    }

    /// A blob, at most `limit` bytes, with its descriptor's digest.
    fn fetch(
        &self,
        reference: &Reference,
        descriptor: &OciDescriptor,
        limit: u64,
        key: &str,
    ) -> Result<Vec<u8>> {
        let refuse = |reason: String| CacheError::Refused {
            reference: self.reference(key),
            reason,
        };
        if descriptor.size < 0 || descriptor.size as u64 > limit {
            return Err(refuse(format!(
                "blob {} is {} bytes (at most {limit})",
                descriptor.digest, descriptor.size
            )));
        }
        let mut data = Vec::with_capacity(descriptor.size as usize);
        self.runtime
            .block_on(self.client.pull_blob(reference, descriptor, &mut data))
            .map_err(|e| refuse(format!("blob {}: {e}", descriptor.digest)))?;
        let got = sha256(&data);
        if got != descriptor.digest || data.len() as i64 != descriptor.size {
            return Err(refuse(format!(
                "blob {} arrived as {} bytes with digest {got}",
                descriptor.digest,
                data.len()
            )));
        }
        Ok(data)
    }
}

/// Whether the registry said it has no such manifest (or repository).
fn is_unknown(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    match e {
        E::ImageManifestNotFoundError(_) => true,
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, C::ManifestUnknown | C::NameUnknown)),
        _ => false,
    }
}

/// The most a config blob (an entry's manifest.json) may weigh.
const CONFIG_LIMIT: u64 = 16 << 20;
/// The most a layer may weigh: a part that zstd could not shrink, and
/// zstd's own framing.
const LAYER_LIMIT: u64 = PART + (PART >> 7) + (1 << 20);

fn parts_of(size: u64) -> usize {
    usize::try_from(size.div_ceil(PART).max(1)).unwrap_or(usize::MAX)
}

/// Each output file of an entry with its layers, in order.
pub type Plan = Vec<(String, Vec<OciDescriptor>)>;

/// Whether `artifact`, the manifest the registry gave for `key`, is a
/// testbed store entry of that key.
pub fn check_artifact(key: &str, artifact: &OciImageManifest) -> std::result::Result<(), String> {
    if artifact.artifact_type.as_deref() != Some(ARTIFACT_TYPE)
        || artifact.config.media_type != CONFIG_TYPE
    {
        return Err(format!(
            "it is not a testbed store entry (artifact type {:?}, config {})",
            artifact.artifact_type, artifact.config.media_type
        ));
    }
    let named = artifact
        .annotations
        .as_ref()
        .and_then(|a| a.get(KEY_ANNOTATION));
    if named.map(String::as_str) != Some(key) {
        return Err(format!("its annotations name key {named:?}"));
    }
    Ok(())
}

/// What a pull of `key` will write, from what the registry said before
/// any file is fetched: `artifact` (checked by [`check_artifact`]) and its
/// `config` blob (checked against its digest). The entry's manifest, and
/// each output file's layers in order; or why not.
pub fn plan(
    key: &str,
    artifact: &OciImageManifest,
    config: &[u8],
) -> std::result::Result<(Manifest, Plan), String> {
    check_artifact(key, artifact)?;
    let manifest: Manifest = serde_json::from_slice(config)
        .map_err(|e| format!("its manifest.json does not parse: {e}"))?;
    if manifest.key != key || manifest.inputs.key() != key {
        return Err(format!(
            "its manifest.json is of key {} (its inputs hash to {})",
            manifest.key,
            manifest.inputs.key()
        ));
    }
    let layers = plan_layers(&manifest, &artifact.layers)?;
    Ok((manifest, layers))
}

/// The layers of each output file of `manifest`, in order; every file
/// has its parts 0..n and nothing else is there.
fn plan_layers(manifest: &Manifest, layers: &[OciDescriptor]) -> std::result::Result<Plan, String> {
    let mut plan: Vec<(String, Vec<OciDescriptor>)> = Vec::new();
    for (file, info) in &manifest.outputs {
        let plain = !file.is_empty()
            && !file.starts_with('.')
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain || file == MANIFEST {
            return Err(format!("its manifest names a file {file:?}"));
        }
        let mut parts: Vec<(usize, OciDescriptor)> = Vec::new();
        for layer in layers {
            let note = |name: &str| {
                layer
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(name))
                    .cloned()
            };
            if note(FILE_ANNOTATION).as_deref() == Some(file.as_str()) {
                let part = note(PART_ANNOTATION)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("a layer of {file} has no part number"))?;
                parts.push((part, layer.clone()));
            }
        }
        parts.sort_by_key(|(n, _)| *n);
        let numbers: Vec<usize> = parts.iter().map(|(n, _)| *n).collect();
        // Compared, not built: a size from the registry may be absurd.
        let expected = parts_of(info.size);
        if numbers.len() != expected || numbers.iter().enumerate().any(|(i, n)| i != *n) {
            return Err(format!(
                "{file} ({} bytes) should have parts 0 to {}, it has {numbers:?}",
                info.size,
                expected - 1
            ));
        }
        plan.push((file.clone(), parts.into_iter().map(|(_, l)| l).collect()));
    }
    let planned: usize = plan.iter().map(|(_, l)| l.len()).sum();
    if planned != layers.len() {
        return Err(format!(
            "it has {} layers, of which {} belong to the files of its manifest",
            layers.len(),
            planned
        ));
    }
    Ok(plan)
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_spoken_to_in_plain_http() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["10.0.0.1:5000", "registry.example:5000", "[fe80::1]:5000"] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn references_need_a_registry_host_and_no_tag() {
        for bad in [
            "slurm",
            "team/slurm",
            "127.0.0.1:5000/slurm:v1",
            "127.0.0.1:5000/",
            "127.0.0.1:5000/x@sha256:00",
        ] {
            assert!(
                matches!(Registry::open(bad), Err(CacheError::BadReference { .. })),
                "{bad}"
            );
        }
        let r = Registry::open("127.0.0.1:5000/team/slurm").expect("a repository");
        assert_eq!(r.reference("abc"), "127.0.0.1:5000/team/slurm:abc");
    }

    #[test]
    fn parts_cover_a_file() {
        assert_eq!(parts_of(0), 1);
        assert_eq!(parts_of(1), 1);
        assert_eq!(parts_of(PART), 1);
        assert_eq!(parts_of(PART + 1), 2);
    }
}
