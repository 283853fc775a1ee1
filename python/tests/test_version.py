"""The package's version is the Rust workspace's."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import testbed

REPO = Path(__file__).resolve().parents[2]


def workspace_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    section = re.search(r"^\[workspace\.package\]\s*$(.*?)(?=^\[)", text, re.M | re.S)
    assert section is not None, "no [workspace.package] in Cargo.toml"
    version = re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.M)
    assert version is not None, "no version in [workspace.package]"
    return version.group(1)


def test_the_version_is_the_workspaces() -> None:
    version = workspace_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert testbed.__version__ == version
    # What pip installed says the same.
    assert metadata.version("testbed") == version
