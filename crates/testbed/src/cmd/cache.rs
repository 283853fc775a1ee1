//! `store push` and `store pull`: a composition's images in an OCI
//! registry (docs/cache.md).

use std::collections::BTreeMap;
use std::path::Path;

use testbed_cache::{CacheError, CacheEvent, Registry, Transfer};
use testbed_cluster::images;
use testbed_image::{Lockfile, Store};

use super::image::{failure, load};
use crate::output::{Failure, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Push,
    Pull,
}

fn cache_failure(e: CacheError) -> Failure {
    match e {
        CacheError::BadReference { .. } => Failure::Usage(e.to_string()),
        CacheError::Store(e) => failure(e),
        e => Failure::Runtime(e.into()),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `store push|pull [PATH] REPOSITORY`: every role's image of the
/// composition at PATH (its lock as it is: nothing is locked or built
/// here), one after the other; progress on stderr, one line per image on
/// stdout (or JSON).
pub fn transfer(direction: Direction, args: &[String], json: bool) -> Outcome {
    let (path, repository) = match args {
        [repository] => (None, repository),
        [path, repository] => (Some(Path::new(path)), repository),
        _ => {
            return Err(Failure::Usage(
                "give [PATH] REPOSITORY: the composition and the repository".into(),
            ))
        }
    };
    let registry = Registry::open(repository).map_err(cache_failure)?;
    let (comp, specs) = load(path, false)?;
    let lock_path = images::lock_path(&comp);
    let lock = Lockfile::read_if_exists(&lock_path)
        .map_err(failure)?
        .ok_or_else(|| {
            Failure::Usage(format!(
                "{} does not exist: {}",
                lock_path.display(),
                match direction {
                    Direction::Push => "build the images first (`testbed build`)",
                    Direction::Pull =>
                        "the keys to pull come from the lock; take it from where the images were built, or run `testbed lock`",
                }
            ))
        })?;
    lock.check_fresh(&specs, &lock_path).map_err(failure)?;
    let keys = testbed_image::keys(&specs, &lock, &lock_path).map_err(failure)?;
    let store = Store::open_default().map_err(failure)?;
    let mut done: BTreeMap<String, Transfer> = BTreeMap::new();
    let mut lines = Vec::new();
    for (spec, key) in specs.iter().zip(&keys) {
        let role = spec.role.as_str();
        if !done.contains_key(key) {
            let mut show = |event: CacheEvent| match event {
                CacheEvent::Pushed {
                    file,
                    part,
                    parts,
                    bytes,
                    sent,
                } => errln!(
                    "{role}: {file} part {part}/{parts}, {:.1} MiB{}",
                    mib(bytes),
                    if sent { "" } else { " (the registry has it)" }
                ),
                CacheEvent::Pulled {
                    file,
                    part,
                    parts,
                    bytes,
                } => errln!(
                    "{role}: {file} part {part}/{parts}, {:.1} MiB, checked",
                    mib(bytes)
                ),
            };
            let moved = match direction {
                Direction::Push => registry.push(&store, key, &mut show),
                Direction::Pull => registry.pull(&store, key, &mut show),
            }
            .map_err(cache_failure)?;
            done.insert(key.clone(), moved);
        }
        lines.push((role.to_owned(), done[key].clone()));
    }
    if direction == Direction::Pull {
        // `store ls` names the lock as their user, `store gc` keeps them.
        let roles: BTreeMap<String, String> = specs
            .iter()
            .zip(&keys)
            .map(|(s, k)| (s.role.clone(), k.clone()))
            .collect();
        store.register(&lock_path, &roles).map_err(failure)?;
    }
    if json {
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|(role, t)| {
                serde_json::json!({
                    "role": role, "key": t.key, "reference": t.reference, "digest": t.digest,
                    "blobs": t.blobs, "moved": t.moved, "bytes": t.bytes,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let verb = match direction {
        Direction::Push => "sent",
        Direction::Pull => "fetched",
    };
    for (role, t) in &lines {
        outln!(
            "{role:<12} {}  {verb} {} of {} blobs, {:.1} MiB  {}",
            &t.key[..t.key.len().min(12)],
            t.moved,
            t.blobs,
            mib(t.bytes),
            t.reference
        );
    }
    Ok(())
}
