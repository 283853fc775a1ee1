//! Which cluster a verb acts on: the composition, its plan and its state
//! directory.

use std::path::Path;

use testbed_model::{Composition, Plan, Scale};
use testbed_runtime::state::StateDir;

use crate::Error;

/// A checked composition (every template rendered for every node), its
/// plan, and the cluster's state directory: what `up` brings up.
#[derive(Debug, Clone)]
pub struct Target {
    pub comp: Composition,
    pub plan: Plan,
    pub dir: StateDir,
}

impl Target {
    /// Loads, plans and checks the composition at `path` (a
    /// `testbed.toml`, its folder, or `None` for `./testbed.toml`).
    pub fn load(path: Option<&Path>, scale: &Scale) -> Result<Target, Error> {
        let path = testbed_model::resolve_path(path);
        let (comp, plan) = testbed_model::check(&path, scale)?;
        let dir = StateDir::for_cluster(&plan.cluster, &comp.source.path);
        dir.check()?;
        Ok(Target { comp, plan, dir })
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.plan.cluster
    }
}

/// A cluster's name and state directory, found from its composition
/// without planning or rendering templates: the verbs that act on a
/// running cluster must work even if the file was edited since `up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub cluster: String,
    pub dir: StateDir,
}

/// The cluster of the composition at `path` (see [`Target::load`]). Both
/// refuse a state directory someone else could control
/// ([`StateDir::check`]).
pub fn locate(path: Option<&Path>) -> Result<Located, Error> {
    let path = testbed_model::resolve_path(path);
    let comp = testbed_model::load(&path)?;
    let dir = StateDir::for_cluster(&comp.cluster.name, &comp.source.path);
    dir.check()?;
    Ok(Located {
        cluster: comp.cluster.name,
        dir,
    })
}
