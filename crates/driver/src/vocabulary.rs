//! What the interactive prompt offers on Tab: the script API's functions,
//! the methods and properties of nodes and links, and the variables in
//! scope. The API's part is read from the engine's own list of what it
//! registered ([`rhai::Engine::gen_fn_signatures`]), never from a list kept
//! by hand, so completion cannot drift from the API.

use rhai::{Dynamic, Engine};

use crate::driver::is_identifier;
use crate::script::{Link, Node, LINK_TYPE, NODE_TYPE};

/// The kind of value a variable holds or a function returns: what can
/// follow its `.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ValueKind {
    Node,
    Link,
    Other,
}

impl ValueKind {
    pub(crate) fn of_value(value: &Dynamic) -> ValueKind {
        if value.is::<Node>() {
            ValueKind::Node
        } else if value.is::<Link>() {
            ValueKind::Link
        } else {
            ValueKind::Other
        }
    }

    /// The kind of a type as a signature shows it: `Node`, `&mut Node`,
    /// `core::result::Result<testbed_driver::script::Node,…>`.
    fn of_type(text: &str) -> ValueKind {
        let text = text.trim();
        let text = match text.split_once('<') {
            Some((outer, inner)) if outer.rsplit("::").next() == Some("Result") => {
                inner.split(',').next().unwrap_or(inner)
            }
            _ => text,
        }
        .trim();
        let text = text.strip_prefix("&mut ").unwrap_or(text).trim();
        let last = text.rsplit("::").next().unwrap_or(text);
        if last == NODE_TYPE {
            ValueKind::Node
        } else if last == LINK_TYPE {
            ValueKind::Link
        } else {
            ValueKind::Other
        }
    }
}

/// A variable or a global function, with the kind of value it holds or
/// returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub name: String,
    pub kind: ValueKind,
}

/// A method (`ctl.succeed(…)`) or a property (`ctl.name`) of the values of
/// one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub of: ValueKind,
    pub name: String,
    pub property: bool,
    /// What it gives (a link's `delay` gives the link, for chains).
    pub returns: ValueKind,
}

/// The names the prompt completes; see [`crate::Driver::vocabulary`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vocabulary {
    /// Variables in scope: one per node (named after it), then those the
    /// session defined with `let`.
    pub variables: Vec<Name>,
    /// Global functions: the API's (`start_all`, `partition`, …), then
    /// those the session defined with `fn`.
    pub functions: Vec<Name>,
    /// Methods and properties of nodes and links.
    pub members: Vec<Member>,
}

impl Vocabulary {
    /// The methods and properties of values of kind `of`.
    pub fn members_of(&self, of: ValueKind) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.of == of)
    }

    /// Adds a variable, or updates its kind (a `let` that shadows another).
    pub(crate) fn set_variable(&mut self, name: &str, kind: ValueKind) {
        match self.variables.iter_mut().find(|v| v.name == name) {
            Some(v) => v.kind = kind,
            None => self.variables.push(Name {
                name: name.to_owned(),
                kind,
            }),
        }
    }

    /// Adds a global function unless it is there; an overload that returns
    /// a node or a link says what the function returns.
    pub(crate) fn add_function(&mut self, name: &str, kind: ValueKind) {
        match self.functions.iter_mut().find(|f| f.name == name) {
            Some(f) if f.kind == ValueKind::Other => f.kind = kind,
            Some(_) => {}
            None => self.functions.push(Name {
                name: name.to_owned(),
                kind,
            }),
        }
    }

    fn add_member(&mut self, of: ValueKind, name: &str, property: bool, returns: ValueKind) {
        match self
            .members
            .iter_mut()
            .find(|m| m.of == of && m.name == name)
        {
            Some(m) if m.returns == ValueKind::Other => m.returns = returns,
            Some(_) => {}
            None => self.members.push(Member {
                of,
                name: name.to_owned(),
                property,
                returns,
            }),
        }
    }
}

/// One function signature as [`Engine::gen_fn_signatures`] writes it:
/// `succeed(_: Node, _: &str) -> String`.
#[derive(Debug, PartialEq, Eq)]
struct Signature<'a> {
    name: &'a str,
    /// The type of the first parameter, if any.
    first: Option<&'a str>,
    returns: &'a str,
}

impl Signature<'_> {
    fn parse(text: &str) -> Option<Signature<'_>> {
        let (name, rest) = text.split_once('(')?;
        let (params, returns) = match rest.split_once(") -> ") {
            Some((params, returns)) => (params, returns),
            None => (rest.strip_suffix(')')?, ""),
        };
        let first = params
            .split(',')
            .next()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once(':').map_or(p, |(_, t)| t).trim());
        Some(Signature {
            name,
            first,
            returns,
        })
    }
}

/// What the engine registered, sorted by name: functions whose first parameter is a node
/// or a link are their methods, `get$x` functions their properties, and the
/// others global functions. Operators and the conversions `to_string` and
/// `to_debug` (what `print` uses) are left out.
pub(crate) fn api(engine: &Engine) -> Vocabulary {
    let mut vocabulary = Vocabulary::default();
    for text in engine.gen_fn_signatures(false) {
        let Some(sig) = Signature::parse(&text) else {
            continue;
        };
        let receiver = sig.first.map_or(ValueKind::Other, ValueKind::of_type);
        let returns = ValueKind::of_type(sig.returns);
        if let Some(property) = sig.name.strip_prefix("get$") {
            if receiver != ValueKind::Other && is_identifier(property) {
                vocabulary.add_member(receiver, property, true, returns);
            }
            continue;
        }
        if !is_identifier(sig.name) || matches!(sig.name, "to_string" | "to_debug") {
            continue;
        }
        match receiver {
            ValueKind::Other => vocabulary.add_function(sig.name, returns),
            of => vocabulary.add_member(of, sig.name, false, returns),
        }
    }
    // The engine lists them in no particular order.
    vocabulary.functions.sort_by(|a, b| a.name.cmp(&b.name));
    vocabulary
        .members
        .sort_by(|a, b| (a.of, &a.name).cmp(&(b.of, &b.name)));
    vocabulary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_split_into_name_receiver_and_result() {
        assert_eq!(
            Signature::parse("succeed(_: Node, _: &str) -> String"),
            Some(Signature {
                name: "succeed",
                first: Some("Node"),
                returns: "String"
            })
        );
        assert_eq!(
            Signature::parse("heal()"),
            Some(Signature {
                name: "heal",
                first: None,
                returns: ""
            })
        );
        assert_eq!(
            Signature::parse("get$name(_: &mut Node) -> ImmutableString").and_then(|s| s.first),
            Some("&mut Node")
        );
        assert_eq!(Signature::parse("broken"), None);
    }

    #[test]
    fn types_are_told_apart_through_references_results_and_paths() {
        assert_eq!(ValueKind::of_type("Node"), ValueKind::Node);
        assert_eq!(ValueKind::of_type("&mut Node"), ValueKind::Node);
        assert_eq!(
            ValueKind::of_type("Result<Link, Box<EvalAltResult>>"),
            ValueKind::Link
        );
        assert_eq!(
            ValueKind::of_type(
                "core::result::Result<testbed_driver::script::Node,alloc::boxed::Box<rhai::types::error::EvalAltResult>>"
            ),
            ValueKind::Node
        );
        assert_eq!(
            ValueKind::of_type("core::result::Result<(),alloc::boxed::Box<EvalAltResult>>"),
            ValueKind::Other
        );
        assert_eq!(
            ValueKind::of_type("testbed_driver::script::Node"),
            ValueKind::Node
        );
        assert_eq!(ValueKind::of_type("Array"), ValueKind::Other);
        assert_eq!(ValueKind::of_type("_"), ValueKind::Other);
        assert_eq!(ValueKind::of_type(""), ValueKind::Other);
    }
}
