//! [`Driver`]: one script engine bound to one running cluster, for a whole
//! test run or an interactive session.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rhai::{Dynamic, Engine, Scope, AST};

use crate::cluster::Cluster;
use crate::error::DriverError;
use crate::event::EventSink;
use crate::report::{ScriptError, TestCase, TestReport};
use crate::script::{self, lock, Limit, Recorder, Runtime};
use crate::timeouts::{timeout_factor, Timeouts, FACTOR_ENV};
use crate::vocabulary::{self, ValueKind, Vocabulary};

/// How a [`Driver`] runs scripts.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// The script's path: error locations name it, and relative host paths
    /// in `copy_to`/`copy_from` are resolved from its folder.
    pub script: PathBuf,
    /// The limit of a whole [`Driver::run`]; `None` for no limit.
    pub time_limit: Option<Duration>,
    /// The default timeouts; their `factor` is replaced unless
    /// [`DriverOptions::factor`] is set.
    pub timeouts: Timeouts,
    /// The timeout factor; `None`: `$TESTBED_TIMEOUT_FACTOR`, else from the
    /// cluster's accelerator (1 with KVM, 5 under TCG).
    pub factor: Option<f64>,
}

impl DriverOptions {
    pub fn new(script: impl Into<PathBuf>) -> DriverOptions {
        DriverOptions {
            script: script.into(),
            time_limit: None,
            timeouts: Timeouts::default(),
            factor: None,
        }
    }
}

/// A script engine bound to a cluster. Variables persist between
/// [`Driver::eval`] calls (the REPL); [`Driver::run`] starts afresh.
pub struct Driver {
    rt: Arc<Runtime>,
    engine: Engine,
    scope: Scope<'static>,
    /// Functions defined in earlier `eval` calls.
    functions: AST,
    accel: String,
    time_limit: Option<Duration>,
    /// What the engine registered, for completion at the prompt.
    api: Vocabulary,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("runtime", &self.rt)
            .field("accel", &self.accel)
            .finish_non_exhaustive()
    }
}

/// Whether `name` can be a script variable (otherwise the node is only
/// reachable with `node("name")`).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a script's syntax and variable names before any cluster exists:
/// `nodes` are the node names the cluster will have.
pub fn check_script(source: &str, script: &Path, nodes: &[String]) -> Result<(), ScriptError> {
    let mut engine = Engine::new_raw();
    engine.set_strict_variables(true);
    let mut scope = Scope::new();
    for name in nodes.iter().filter(|n| is_identifier(n)) {
        scope.push_constant(name.clone(), ());
    }
    engine
        .compile_with_scope(&scope, source)
        .map(|_| ())
        .map_err(|e| script::parse_error(&e, script))
}

impl Driver {
    /// Asks the cluster for its nodes and accelerator and builds the
    /// engine.
    pub fn new(
        cluster: Arc<dyn Cluster>,
        options: DriverOptions,
        events: EventSink,
    ) -> Result<Driver, DriverError> {
        let status = cluster.status()?;
        let factor = match options.factor {
            Some(f) if f.is_finite() && f > 0.0 => f,
            Some(f) => {
                return Err(DriverError::Config(format!(
                    "the timeout factor must be above 0, got {f}"
                )))
            }
            None => timeout_factor(&status.accel, std::env::var(FACTOR_ENV).ok().as_deref())?,
        };
        let timeouts = Timeouts {
            factor,
            ..options.timeouts
        };
        let base_dir = options
            .script
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let rt = Arc::new(Runtime {
            cluster,
            events,
            timeouts,
            script: options.script.clone(),
            base_dir,
            cluster_name: status.cluster.clone(),
            nodes: status
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.role.clone()))
                .collect(),
            started: Mutex::new(Instant::now()),
            limit: Mutex::new(None),
            recorder: Mutex::new(Recorder::default()),
        });
        let engine = script::engine(&rt);
        let api = vocabulary::api(&engine);
        let mut driver = Driver {
            rt,
            engine,
            api,
            scope: Scope::new(),
            functions: AST::empty(),
            accel: status.accel,
            time_limit: options.time_limit,
        };
        driver.reset_scope();
        Ok(driver)
    }

    /// The cluster's nodes, in order.
    pub fn nodes(&self) -> Vec<String> {
        self.rt.nodes.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The factor every timeout is multiplied by.
    pub fn timeout_factor(&self) -> f64 {
        self.rt.timeouts.factor
    }

    /// A fresh scope: one variable per node whose name is an identifier.
    fn reset_scope(&mut self) {
        self.scope = Scope::new();
        for (name, _) in &self.rt.nodes {
            if is_identifier(name) {
                if let Ok(node) = self.rt.node(name) {
                    self.scope.push_constant(name.clone(), node);
                }
            }
        }
        self.functions = AST::empty();
    }

    /// Checks the script's syntax and variable names without running it.
    pub fn check(&self, source: &str) -> Result<(), ScriptError> {
        self.engine
            .compile_with_scope(&self.scope, source)
            .map(|_| ())
            .map_err(|e| script::parse_error(&e, &self.rt.script))
    }

    /// Runs a whole test script under the time limit and reports on it.
    /// Script errors end up in the report; this never fails.
    pub fn run(&mut self, source: &str) -> TestReport {
        self.reset_scope();
        *lock(&self.rt.recorder) = Recorder::default();
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let start = Instant::now();
        *lock(&self.rt.started) = start;
        *lock(&self.rt.limit) = self.time_limit.map(|total| Limit {
            deadline: start + total,
            total,
        });
        let result = match self.engine.compile_with_scope(&self.scope, source) {
            Err(e) => Err(script::parse_error(&e, &self.rt.script)),
            Ok(ast) => self
                .engine
                .run_ast_with_scope(&mut self.scope, &ast)
                .map_err(|e| script::script_error(&e, &self.rt.script)),
        };
        *lock(&self.rt.limit) = None;
        if let Err(e) = &result {
            self.rt.close_open_subtests(&e.to_string());
        }
        let duration = start.elapsed();
        let recorder = std::mem::take(&mut *lock(&self.rt.recorder));
        let mut cases = recorder.cases;
        let mut output = recorder.top;
        let script_name = self
            .rt
            .script
            .file_name()
            .map_or_else(|| "script".to_owned(), |n| n.to_string_lossy().into_owned());
        let failure = result.err();
        let outside = failure
            .as_ref()
            .filter(|f| recorder.last_subtest_failure.as_deref() != Some(&f.to_string()));
        if outside.is_some() || cases.is_empty() {
            cases.push(TestCase {
                name: script_name,
                duration,
                passed: outside.is_none(),
                failure: outside.map(ToString::to_string),
                output: std::mem::take(&mut output),
            });
        }
        TestReport {
            name: self.rt.cluster_name.clone(),
            script: self.rt.script.clone(),
            accel: self.accel.clone(),
            timeout_factor: self.rt.timeouts.factor,
            started_at,
            duration,
            passed: failure.is_none(),
            failure,
            cases,
            output,
        }
    }

    /// Whether `code` is cut short (an open block or string) rather than
    /// wrong: the REPL then reads more lines.
    pub fn is_incomplete(&self, code: &str) -> bool {
        match self.engine.compile_with_scope(&self.scope, code) {
            Ok(_) => false,
            Err(e) => script::is_incomplete(&e, code),
        }
    }

    /// The names a prompt completes, as of now: the API's functions and
    /// methods (read from the engine), the variables in scope (the nodes,
    /// then what earlier [`Driver::eval`] calls defined with `let`) and the
    /// functions they defined with `fn`.
    pub fn vocabulary(&self) -> Vocabulary {
        let mut v = self.api.clone();
        for (name, _, value) in self.scope.iter() {
            v.set_variable(name, ValueKind::of_value(&value));
        }
        for f in self.functions.iter_functions() {
            v.add_function(f.name, ValueKind::Other);
        }
        v
    }

    /// Evaluates a piece of script in the persistent scope (no time limit);
    /// returns the value's text unless it is `()`.
    pub fn eval(&mut self, code: &str) -> Result<Option<String>, ScriptError> {
        let ast = self
            .engine
            .compile_with_scope(&self.scope, code)
            .map_err(|e| script::parse_error(&e, &self.rt.script))?;
        let combined = self.functions.merge(&ast);
        let value: Dynamic = self
            .engine
            .eval_ast_with_scope(&mut self.scope, &combined)
            .map_err(|e| script::script_error(&e, &self.rt.script))?;
        self.functions = self.functions.merge(&ast.clone_functions_only());
        // Subtests run at the prompt are not part of any report.
        *lock(&self.rt.recorder) = Recorder::default();
        Ok((!value.is_unit()).then(|| script::display(&value)))
    }
}
