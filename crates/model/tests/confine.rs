//! `source` and `template` files are read only from the composition's
//! folder, after symbolic links are resolved, and from the paths listed in
//! `[cluster] allow_paths_outside`: a composition cloned from elsewhere
//! cannot copy the host's files (`../../etc/shadow`, `/etc/shadow`, a link
//! to either) into an image. Refusals point at the offending value; the
//! check is made again when a file is read, so a link swapped after
//! validation is refused too.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use testbed_model::{check, template, Composition, Diagnostic, Diagnostics, FileKind, Scale};

/// A scratch tree: `outer/` holds `secret.txt`, `shared/ca.pem` and
/// `shared/secret-link` (a link from the shared folder to `secret.txt`);
/// the composition lives in `outer/comp/`.
struct Tree {
    _tmp: tempfile::TempDir,
    /// `outer`, canonical.
    outer: PathBuf,
    comp: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let tmp = tempfile::tempdir().expect("tmp");
        let outer = std::fs::canonicalize(tmp.path()).expect("canonical");
        let comp = outer.join("comp");
        std::fs::create_dir_all(comp.join("files")).expect("mkdir");
        std::fs::create_dir_all(outer.join("shared")).expect("mkdir");
        std::fs::write(outer.join("secret.txt"), "root:secret\n").expect("write");
        std::fs::write(outer.join("shared/ca.pem"), "CERT\n").expect("write");
        symlink(outer.join("secret.txt"), outer.join("shared/secret-link")).expect("symlink");
        std::fs::write(comp.join("files/inside.conf"), "inside\n").expect("write");
        std::fs::write(comp.join("files/x.j2"), "{{ node.name }}\n").expect("write");
        std::fs::write(outer.join("outside.j2"), "{{ node.name }}\n").expect("write");
        Tree {
            _tmp: tmp,
            outer,
            comp,
        }
    }

    fn link(&self, name: &str, target: &Path) {
        symlink(target, self.comp.join(name)).expect("symlink");
    }

    fn check(&self, toml: &str) -> Result<Composition, Diagnostics> {
        let path = self.comp.join("testbed.toml");
        std::fs::write(&path, toml).expect("write composition");
        check(&path, &Scale::default()).map(|(comp, _)| comp)
    }

    fn refuse(&self, toml: &str) -> Diagnostic {
        let diags = self.check(toml).expect_err("must be refused");
        assert_eq!(diags.len(), 1, "{diags}");
        diags.0.into_iter().next().expect("one")
    }
}

/// The path a role's file is read from.
fn file_path(comp: &Composition, guest: &str) -> PathBuf {
    let f = comp.roles[0]
        .files
        .iter()
        .find(|f| f.path == guest)
        .expect("file");
    match &f.kind {
        FileKind::Source(p) | FileKind::Template(p) => p.clone(),
        FileKind::Content(_) => panic!("inline content"),
    }
}

fn at(d: &Diagnostic) -> (usize, usize) {
    let loc = d.location.as_ref().expect("location");
    (loc.line, loc.column)
}

fn help(d: &Diagnostic) -> &str {
    d.help.as_deref().unwrap_or("")
}

#[test]
fn a_dotdot_escape_is_refused_at_its_line_and_column() {
    let t = Tree::new();
    let d = t.refuse("[roles.ctl]\nfiles.\"/etc/stolen\" = { source = \"../secret.txt\" }\n");
    assert_eq!(
        d.message,
        format!(
            "source \"../secret.txt\" is outside the composition's folder: it resolves to {}",
            t.outer.join("secret.txt").display()
        )
    );
    assert_eq!(at(&d), (2, 34));
    // What to do: the rule, and the way out with the folder to allow.
    assert!(help(&d).contains(&t.comp.display().to_string()), "{d}");
    assert!(
        help(&d).contains(&format!(
            "allow_paths_outside = [\"{}\"]",
            t.outer.display()
        )),
        "{d}"
    );
    let shown = d.to_string();
    assert!(
        shown.starts_with(&format!("{}:2:34: ", t.comp.join("testbed.toml").display())),
        "{shown}"
    );

    // Also as a table of its own, and deeper.
    let d = t.refuse(
        "[roles.ctl]\n\n[roles.ctl.files.\"/etc/stolen\"]\nsource = \"files/./../../secret.txt\"\n",
    );
    assert!(
        d.message.contains("is outside the composition's folder"),
        "{d}"
    );
    assert_eq!(at(&d), (4, 10));
}

#[test]
fn an_absolute_path_is_refused() {
    let t = Tree::new();
    let secret = t.outer.join("secret.txt");
    let d = t.refuse(&format!(
        "[roles.ctl]\nfiles.\"/etc/stolen\" = {{ source = \"{}\" }}\n",
        secret.display()
    ));
    assert_eq!(
        d.message,
        format!(
            "source \"{}\" is an absolute path outside the composition's folder",
            secret.display()
        )
    );
    assert_eq!(at(&d), (2, 34));
    assert!(help(&d).contains("allow_paths_outside"), "{d}");

    // Even one into the composition's folder: it is written relative.
    let inside = t.comp.join("files/inside.conf");
    let d = t.refuse(&format!(
        "[roles.ctl]\nfiles.\"/etc/x\" = {{ source = \"{}\" }}\n",
        inside.display()
    ));
    assert!(d.message.ends_with("is an absolute path"), "{d}");
    assert_eq!(
        help(&d),
        "it is in the composition's folder: write it relative to it, \"files/inside.conf\""
    );
}

#[test]
fn a_symlink_inside_the_folder_that_points_outside_is_refused() {
    let t = Tree::new();
    t.link("files/innocent.conf", &t.outer.join("secret.txt"));
    let d = t.refuse("[roles.ctl]\nfiles.\"/etc/x\" = { source = \"files/innocent.conf\" }\n");
    assert_eq!(
        d.message,
        format!(
            "source \"files/innocent.conf\" is outside the composition's folder: it resolves to {} through a symbolic link",
            t.outer.join("secret.txt").display()
        )
    );
    assert_eq!(at(&d), (2, 29));

    // A linked folder, relative link: the same.
    symlink("../..", t.comp.join("files/up")).expect("symlink");
    let d = t.refuse("[roles.ctl]\nfiles.\"/etc/x\" = { source = \"files/up/secret.txt\" }\n");
    assert!(d.message.ends_with("through a symbolic link"), "{d}");
}

#[test]
fn a_symlink_inside_the_folder_that_points_inside_is_accepted() {
    let t = Tree::new();
    symlink("files/inside.conf", t.comp.join("link.conf")).expect("symlink");
    t.link("abs-link.conf", &t.comp.join("files/inside.conf"));
    let comp = t
        .check(
            "[roles.ctl]\nfiles.\"/etc/a\" = { source = \"link.conf\" }\nfiles.\"/etc/b\" = { source = \"abs-link.conf\" }\n",
        )
        .expect("valid");
    for guest in ["/etc/a", "/etc/b"] {
        let path = file_path(&comp, guest);
        assert_eq!(comp.confinement.read(&path).expect("read"), b"inside\n");
    }
}

#[test]
fn a_plain_relative_source_is_accepted_and_read() {
    let t = Tree::new();
    let comp = t
        .check("[roles.ctl]\nfiles.\"/etc/x\" = { source = \"files/inside.conf\" }\n")
        .expect("valid");
    let path = file_path(&comp, "/etc/x");
    assert_eq!(path, t.comp.join("files/inside.conf"));
    assert_eq!(comp.confinement.root(), t.comp);
    assert!(comp.confinement.allowed().is_empty());
    assert_eq!(comp.confinement.read(&path).expect("read"), b"inside\n");
}

#[test]
fn allow_paths_outside_accepts_files_under_its_paths_only() {
    let t = Tree::new();
    let shared = t.outer.join("shared");
    t.link("files/ca-link.pem", &shared.join("ca.pem"));
    let toml = |files: &str| {
        format!(
            "[cluster]\nallow_paths_outside = [\"{}\"]\n[roles.ctl]\n{files}",
            shared.display()
        )
    };
    let comp = t
        .check(&toml(&format!(
            "files.\"/a\" = {{ source = \"../shared/ca.pem\" }}\n\
             files.\"/b\" = {{ source = \"{}\" }}\n\
             files.\"/c\" = {{ source = \"files/ca-link.pem\" }}\n",
            shared.join("ca.pem").display()
        )))
        .expect("valid");
    assert_eq!(comp.confinement.allowed(), std::slice::from_ref(&shared));
    for guest in ["/a", "/b", "/c"] {
        let path = file_path(&comp, guest);
        assert_eq!(comp.confinement.read(&path).expect("read"), b"CERT\n");
    }

    // Other files outside are still refused, relative or absolute...
    let d = t.refuse(&toml("files.\"/x\" = { source = \"../secret.txt\" }\n"));
    assert!(
        d.message.contains("is outside the composition's folder"),
        "{d}"
    );
    assert_eq!(at(&d), (4, 25));
    let d = t.refuse(&toml(&format!(
        "files.\"/x\" = {{ source = \"{}\" }}\n",
        t.outer.join("secret.txt").display()
    )));
    assert!(
        d.message
            .ends_with("is an absolute path outside the composition's folder"),
        "{d}"
    );
    // ...and so is a link in the allowed folder that leads out of it.
    let d = t.refuse(&toml(
        "files.\"/x\" = { source = \"../shared/secret-link\" }\n",
    ));
    assert!(
        d.message.contains(&format!(
            "it resolves to {}",
            t.outer.join("secret.txt").display()
        )),
        "{d}"
    );

    // A relative entry is relative to the composition's folder.
    let comp = t
        .check("[cluster]\nallow_paths_outside = [\"../shared\"]\n[roles.ctl]\nfiles.\"/a\" = { source = \"../shared/ca.pem\" }\n")
        .expect("valid");
    assert_eq!(comp.confinement.allowed(), std::slice::from_ref(&shared));

    // A single file may be allowed.
    let comp = t
        .check("[cluster]\nallow_paths_outside = [\"../shared/ca.pem\"]\n[roles.ctl]\nfiles.\"/a\" = { source = \"../shared/ca.pem\" }\n")
        .expect("valid");
    assert_eq!(comp.confinement.allowed(), [shared.join("ca.pem")]);
}

#[test]
fn allow_paths_outside_must_name_existing_paths_and_not_the_root() {
    let t = Tree::new();
    let d = t.refuse("[cluster]\nallow_paths_outside = [\"../nowhere\"]\n[roles.ctl]\n");
    assert_eq!(d.message, "allowed path \"../nowhere\" not found");
    assert_eq!(at(&d), (2, 24));
    assert!(help(&d).contains("no such file"), "{d}");

    let d = t.refuse("[cluster]\nallow_paths_outside = [\"/\"]\n[roles.ctl]\n");
    assert_eq!(
        d.message,
        "allow_paths_outside lists \"/\", the whole file system"
    );
    assert_eq!(at(&d), (2, 24));
    // Whatever leads there.
    let d = t.refuse("[cluster]\nallow_paths_outside = [\"/../..\"]\n[roles.ctl]\n");
    assert!(d.message.contains("the whole file system"), "{d}");

    let d = t.refuse("[cluster]\nallow_paths_outside = [\"\"]\n[roles.ctl]\n");
    assert_eq!(d.message, "empty path in allow_paths_outside");

    // A typo in the key is an unknown key, like any other.
    let d = t.refuse("[cluster]\nallow_path_outside = [\"../shared\"]\n[roles.ctl]\n");
    assert!(
        d.message.starts_with("unknown field `allow_path_outside`"),
        "{d}"
    );
}

#[test]
fn template_paths_are_confined_likewise() {
    let t = Tree::new();
    let d = t.refuse("[roles.ctl]\nfiles.\"/etc/x\" = { template = \"../outside.j2\" }\n");
    assert!(
        d.message
            .starts_with("template \"../outside.j2\" is outside the composition's folder"),
        "{d}"
    );
    assert_eq!(at(&d), (2, 31));
    assert!(
        help(&d).starts_with("template files are read only from"),
        "{d}"
    );

    let d = t.refuse(&format!(
        "[roles.ctl]\nfiles.\"/etc/x\" = {{ template = \"{}\" }}\n",
        t.outer.join("outside.j2").display()
    ));
    assert!(
        d.message
            .ends_with("is an absolute path outside the composition's folder"),
        "{d}"
    );

    t.link("files/link.j2", &t.outer.join("outside.j2"));
    let d = t.refuse("[roles.ctl]\nfiles.\"/etc/x\" = { template = \"files/link.j2\" }\n");
    assert!(d.message.ends_with("through a symbolic link"), "{d}");

    // In [defaults]: reported once, at the line of [defaults].
    let diags = t
        .check("[defaults]\nfiles.\"/etc/x\" = { template = \"../outside.j2\" }\n[roles.a]\n[roles.b]\n")
        .expect_err("refused");
    assert_eq!(diags.len(), 1, "{diags}");

    // Inside, or under an allowed path: accepted, and rendered by check.
    t.check("[roles.ctl]\nfiles.\"/etc/x\" = { template = \"files/x.j2\" }\n")
        .expect("valid");
    t.check("[cluster]\nallow_paths_outside = [\"../outside.j2\"]\n[roles.ctl]\nfiles.\"/etc/x\" = { template = \"files/link.j2\" }\n")
        .expect("valid");
}

#[test]
fn a_link_swapped_after_validation_is_refused_when_read() {
    let t = Tree::new();
    std::fs::write(t.comp.join("files/real.conf"), "real\n").expect("write");
    t.link("files/swap.conf", &t.comp.join("files/real.conf"));
    t.link("files/swap.j2", &t.comp.join("files/x.j2"));
    let comp = t
        .check("[roles.ctl]\nfiles.\"/etc/a\" = { source = \"files/swap.conf\" }\nfiles.\"/etc/b\" = { template = \"files/swap.j2\" }\n")
        .expect("valid");
    let source = file_path(&comp, "/etc/a");
    let tmpl = file_path(&comp, "/etc/b");
    assert_eq!(comp.confinement.read(&source).expect("read"), b"real\n");
    assert!(template::read(&comp.confinement, &tmpl).is_ok());

    // Validated; now both links point out of the folder.
    for (link, target) in [
        ("files/swap.conf", "secret.txt"),
        ("files/swap.j2", "outside.j2"),
    ] {
        std::fs::remove_file(t.comp.join(link)).expect("rm");
        t.link(link, &t.outer.join(target));
    }
    let e = comp.confinement.read(&source).expect_err("refused");
    assert!(e.is_refused(), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "{} resolves to {}, outside the composition's folder {} (refused: a composition may read files only from its folder and the paths listed in [cluster] allow_paths_outside)",
            source.display(),
            t.outer.join("secret.txt").display(),
            t.comp.display()
        )
    );
    let d = template::read(&comp.confinement, &tmpl).expect_err("refused");
    assert!(
        d.message
            .starts_with(&format!("template {} resolves to", tmpl.display())),
        "{d}"
    );

    // Swapped for a folder: not read either.
    std::fs::remove_file(t.comp.join("files/swap.conf")).expect("rm");
    std::fs::create_dir(t.comp.join("files/swap.conf")).expect("mkdir");
    let e = comp.confinement.read(&source).expect_err("not a file");
    assert!(e.to_string().ends_with("is not a regular file"), "{e}");
    assert!(!e.is_refused());

    // Gone: an I/O error, not a refusal.
    std::fs::remove_dir(t.comp.join("files/swap.conf")).expect("rm");
    let e = comp.confinement.read(&source).expect_err("gone");
    assert!(!e.is_refused(), "{e}");
}
