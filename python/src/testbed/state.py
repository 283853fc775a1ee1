"""Where a running cluster's files are: its state directory, found from
the composition the same way the ``testbed`` CLI finds it
(``crates/api/src/state.rs``, ``crates/model/src/lib.rs``).

The directory is ``<root>/<name>-<hash>``: ``root`` is
``$TESTBED_STATE_DIR``, else ``$XDG_RUNTIME_DIR/testbed``, else
``/tmp/testbed-UID``; ``name`` is the cluster's name (``[cluster] name``,
else derived from the composition's folder); ``hash`` is the 32-bit
FNV-1a hash of the composition's absolute path, in 8 hex digits.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Dict, List, Optional, Union

from .errors import ConfigError, UnsafeStateDir

#: The file name looked for when a folder is given.
COMPOSITION_FILE = "testbed.toml"

PathLike = Union[str, "os.PathLike[str]"]


def root(environ: Optional[Dict[str, str]] = None) -> Path:
    """Where state directories are created: ``$TESTBED_STATE_DIR``, else
    ``$XDG_RUNTIME_DIR/testbed``, else ``/tmp/testbed-UID``."""
    env = os.environ if environ is None else environ
    state = env.get("TESTBED_STATE_DIR")
    if state:
        return Path(state)
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "testbed"
    return Path("/tmp/testbed-{}".format(os.getuid()))


def fnv1a(data: bytes) -> int:
    """FNV-1a, 64 bits (only used to tell folders apart)."""
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def absolute(path: PathLike) -> str:
    """The path made absolute without touching the file system, as Rust's
    ``std::path::absolute`` does on Unix: the current folder is prepended
    to a relative path, ``.`` components and repeated slashes go, ``..``
    stays (symbolic links are not resolved), and a leading ``//`` is kept."""
    text = os.fspath(path)
    if text.startswith("/"):
        prefix = "//" if text.startswith("//") and not text.startswith("///") else "/"
        base = prefix
    else:
        base = os.getcwd()
    parts = [p for p in text.split("/") if p not in ("", ".")]
    out = base
    for part in parts:
        out = out + part if out.endswith("/") else out + "/" + part
    if text.endswith("/") and not out.endswith("/"):
        out += "/"
    return out


def cluster_key(name: str, composition: PathLike) -> str:
    """The name that tells the cluster ``name`` defined by ``composition``
    apart from every other: its state directory's name."""
    data = os.fsencode(absolute(composition))
    return "{}-{:08x}".format(name, fnv1a(data) & 0xFFFFFFFF)


def resolve_composition(path: Optional[PathLike] = None) -> Path:
    """The composition file for what a user gives: a ``testbed.toml``, its
    folder, or nothing (``./testbed.toml``). The path stays as given
    (relative or not), as the CLI keeps it."""
    if path is None:
        return Path(COMPOSITION_FILE)
    p = Path(path)
    if p.is_dir():
        return p / COMPOSITION_FILE
    return p


def name_from_folder(folder: str) -> Optional[str]:
    """The default cluster name from a folder name: lowercased, other
    characters turned into '-', leading digits and dashes dropped, cut to
    31 characters (``name_from_folder`` in the model crate)."""
    out = ""
    for c in folder.lower():
        if not (("a" <= c <= "z") or ("0" <= c <= "9")):
            c = "-"
        if c == "-" and (not out or out.endswith("-")):
            continue
        if not out and c.isdigit():
            continue
        out += c
    out = out[:31].rstrip("-")
    if re.fullmatch(r"[a-z][a-z0-9-]{0,30}", out) and not out.endswith("-"):
        return out
    return None


def _name_without_tomllib(text: str) -> Optional[str]:
    """``[cluster] name`` read line by line, for Pythons without
    ``tomllib`` (before 3.11): enough for the forms compositions use,
    ``name = "x"`` or ``name = 'x'`` under ``[cluster]``, or
    ``cluster.name = "x"`` / ``cluster = { name = "x" }`` at the top."""
    table: Optional[str] = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = re.match(r"\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$", line)
        if header:
            table = header.group(1).replace(" ", "")
            continue
        if line.startswith("[["):
            table = None
            continue
        value = r"\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|'([^']*)')"
        if table == "cluster":
            m = re.match(r"(?:name|\"name\"|'name')" + value, line)
        elif table == "":
            m = re.match(r"cluster\s*\.\s*name" + value, line) or re.match(
                r"cluster\s*=\s*\{.*?\bname" + value, line
            )
        else:
            m = None
        if m:
            return m.group(1) if m.group(1) is not None else m.group(2)
    return None


def cluster_name(composition: PathLike) -> str:
    """The cluster's name from its composition file: ``[cluster] name``,
    else the name derived from the composition's folder."""
    path = Path(composition)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            "cannot read composition {}: {}; give the path of a testbed.toml or its folder".format(
                path, e.strerror or e
            )
        ) from None
    name: Optional[str]
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # Python < 3.11
        name = _name_without_tomllib(text)
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("composition {} is not valid TOML: {}".format(path, e)) from None
        cluster = data.get("cluster")
        name = cluster.get("name") if isinstance(cluster, dict) else None
        if not isinstance(name, str):
            name = None
    if name:
        return name
    folder = os.path.basename(os.path.realpath(path.parent if str(path.parent) else "."))
    derived = name_from_folder(folder)
    if derived is None:
        raise ConfigError(
            'no cluster name: the folder name "{}" has no letters to make one from; set name = "..." under [cluster] in {}'.format(
                folder, path
            )
        )
    return derived


class StateDir:
    """One cluster's state directory (it exists while the cluster runs)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def for_cluster(
        cls, name: str, composition: PathLike, environ: Optional[Dict[str, str]] = None
    ) -> "StateDir":
        return cls(root(environ) / cluster_key(name, composition))

    @classmethod
    def for_composition(cls, path: Optional[PathLike] = None) -> "StateDir":
        """The state directory of the composition at ``path`` (a
        ``testbed.toml``, its folder, or ``None`` for ``./testbed.toml``)."""
        file = resolve_composition(path)
        return cls.for_cluster(cluster_name(file), file)

    def __repr__(self) -> str:
        return "StateDir({!r})".format(str(self.path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StateDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def check(self) -> None:
        """Refuses this directory, or the folder it is in, if someone else
        could control it (a symbolic link, not a folder, another user's, or
        writable by others), as the CLI does (``StateDir::check``): a
        planted directory's ``api.sock`` would receive the commands and
        files sent to the cluster. A directory that does not exist passes."""
        for folder in (self.path.parent, self.path):
            try:
                st = os.lstat(folder)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise UnsafeStateDir(folder, "cannot inspect it: {}".format(e.strerror or e)) from None
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeStateDir(folder, "it is a symbolic link")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeStateDir(folder, "it is not a directory")
            if st.st_uid != os.geteuid():
                raise UnsafeStateDir(
                    folder, "it belongs to uid {}, not to you (uid {})".format(st.st_uid, os.geteuid())
                )
            if st.st_mode & 0o022:
                raise UnsafeStateDir(folder, "others may write in it (mode {:o})".format(st.st_mode & 0o7777))

    @property
    def api_socket(self) -> Path:
        """The supervisor's JSON API."""
        return self.path / "api.sock"

    @property
    def spec(self) -> Path:
        """The cluster spec the supervisor runs (holds secrets; mode 0600)."""
        return self.path / "spec.json"

    def spec_facts(self) -> "SpecFacts":
        """What the client needs from the cluster's spec (and nothing
        else of it): the boot and activation timeouts ``up`` chose, and each
        node's services. ``None`` fields when the spec cannot be read."""
        try:
            with open(self.spec, encoding="utf-8") as f:
                spec = json.load(f)
        except (OSError, ValueError):
            return SpecFacts(None, {})
        boot = spec.get("boot_timeout_ms")
        activation = spec.get("activation_timeout_ms")
        total = None
        if isinstance(boot, int) and isinstance(activation, int):
            total = (boot + activation) / 1000.0
        services: Dict[str, List[str]] = {}
        for node in spec.get("nodes") or []:
            name = node.get("name") if isinstance(node, dict) else None
            units = (node.get("activation") or {}).get("services") if name else None
            if isinstance(name, str) and isinstance(units, list):
                services[name] = [u for u in units if isinstance(u, str)]
        return SpecFacts(total, services)


class SpecFacts:
    """The boot timeout (boot plus activation, in seconds) and the
    services per node, from a cluster's spec."""

    def __init__(self, boot_timeout: Optional[float], services: Dict[str, List[str]]):
        self.boot_timeout = boot_timeout
        self.services = services
