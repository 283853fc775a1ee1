"""The testinfra backend (``testbed://NODE``) against the fake supervisor,
whose nodes run commands on this host: registration in testinfra's table,
``get_host`` with the composition in the host spec, the option, the
variable; host patterns; and ``pytest --hosts=testbed://...``."""

from __future__ import annotations

from pathlib import Path

import pytest
import testinfra
import testinfra.backend

import testbed.testinfra as backend
from fake_supervisor import FakeSupervisor
from testbed import ConfigError


@pytest.fixture(autouse=True)
def fresh_backend() -> None:
    """Each test attaches anew (each has its own fake cluster)."""
    backend.forget_clusters()
    backend.set_default_composition(None)
    testinfra.host.Host._host_cache.clear()


def test_the_backend_is_registered_in_testinfras_table() -> None:
    assert testinfra.backend.BACKENDS["testbed"] == "testbed.testinfra.TestbedBackend"
    assert testinfra.backend.get_backend_class("testbed") is backend.TestbedBackend
    backend.register()  # twice is harmless
    host, kw = testinfra.backend.parse_hostspec("testbed://ctl?composition=~/x&timeout=5")
    assert host == "ctl"
    assert kw["connection"] == "testbed" and kw["timeout"] == "5"
    assert kw["composition"] == str(Path("~/x").expanduser())


def test_get_host_runs_commands_on_the_node(fake: FakeSupervisor, composition: Path, tmp_path: Path) -> None:
    host = testinfra.get_host("testbed://compute1?composition={}".format(composition.parent))
    assert host.backend.get_pytest_id() == "testbed://compute1"
    assert host.backend.role == "compute"
    assert host.check_output("echo $FAKE_NODE") == "compute1"
    failed = host.run("echo out; echo err >&2; exit 3")
    assert (failed.rc, failed.stdout, failed.stderr, failed.succeeded) == (3, "out\n", "err\n", False)
    quoted = host.run("printf '%%s|' %s %s", "a b", "it's")
    assert quoted.stdout == "a b|it's|"
    # testinfra's modules, here on this host's files.
    f = tmp_path / "motd"
    f.write_text("hello\n")
    assert host.file(str(f)).exists and host.file(str(f)).content_string == "hello\n"
    assert not host.file(str(tmp_path / "none")).exists
    request = [r for r in fake.requests if r["op"] == "exec"][-1]
    assert request["node"] == "compute1" and request["exec"]["timeout_ms"] == 300 * 5 * 1000


def test_a_timeout_in_the_host_spec_bounds_each_command(fake: FakeSupervisor, composition: Path) -> None:
    host = testinfra.get_host("testbed://ctl?composition={}&timeout=0.2".format(composition))
    assert host.run("sleep 30").rc == 124
    request = [r for r in fake.requests if r["op"] == "exec"][-1]
    assert request["exec"]["timeout_ms"] == 1000  # 0.2 s times the factor 5


def test_the_composition_from_the_variable_or_the_plugin(fake: FakeSupervisor, composition: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESTBED_COMPOSITION", str(composition.parent))
    assert testinfra.get_host("testbed://ctl").check_output("echo $FAKE_NODE") == "ctl"
    monkeypatch.delenv("TESTBED_COMPOSITION")
    backend.forget_clusters()
    backend.set_default_composition(str(composition))
    assert testinfra.get_host("testbed://compute2").check_output("echo $FAKE_NODE") == "compute2"
    # And nothing given means the current folder.
    backend.set_default_composition(None)
    backend.forget_clusters()
    monkeypatch.chdir(composition.parent)
    assert testinfra.get_host("testbed://ctl").backend.cluster.name == "fake"


def test_patterns_stand_for_the_nodes_they_match(fake: FakeSupervisor, composition: Path) -> None:
    hosts = testinfra.get_hosts(["testbed://compute*?composition={}".format(composition)])
    assert sorted(h.backend.get_hostname() for h in hosts) == ["compute1", "compute2"]
    every = testinfra.get_hosts(["testbed://*"], composition=str(composition))
    assert sorted(h.backend.get_hostname() for h in every) == ["compute1", "compute2", "ctl"]
    with pytest.raises(ConfigError, match=r"testbed://db\*: no node of cluster fake matches \(nodes: ctl, compute1, compute2\)"):
        testinfra.get_hosts(["testbed://db*?composition={}".format(composition)])


def test_an_unknown_node_is_named(fake: FakeSupervisor, composition: Path) -> None:
    host = testinfra.get_host("testbed://nope?composition={}".format(composition))
    with pytest.raises(KeyError, match="no node nope in cluster fake"):
        host.run("true")


def test_pytest_hosts_option_runs_a_suite_on_the_nodes(pytester: pytest.Pytester, fake: FakeSupervisor, composition: Path) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(
        test_infra="""
        def test_the_node_is_itself(host):
            assert host.run("echo $FAKE_NODE").stdout.strip() == host.backend.get_hostname()

        def test_the_ctl_has_no_such_file(host):
            assert not host.file("/nonexistent/slurm.conf").exists, host.backend.get_hostname()
        """
    )
    result = pytester.runpytest(
        "--hosts=testbed://ctl,testbed://compute1",
        "--testbed-composition={}".format(composition.parent),
        "-v",
    )
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "test_infra.py::test_the_node_is_itself?testbed://compute1? PASSED*",
            "test_infra.py::test_the_node_is_itself?testbed://ctl? PASSED*",
        ]
    )


def test_a_failing_testinfra_test_keeps_the_artifacts_of_its_cluster(pytester: pytest.Pytester, fake: FakeSupervisor, composition: Path) -> None:
    fake.canned["journalctl -b --no-pager"] = (b"the journal\n", b"", 0)
    pytester.makeini("[pytest]\ntestbed_composition = {}\n".format(composition))
    pytester.makepyfile(
        test_svc="""
        testinfra_hosts = ["testbed://compute*"]

        def test_slurmd_config(host):
            assert host.file("/nonexistent/slurm.conf").exists
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*- testbed compute2 journal (last lines) -*", "the journal"])
    art = composition.parent / "testbed-artifacts"
    assert sorted(p.name for p in art.iterdir()) == [
        "test_svc.py_test_slurmd_config_testbed_compute1",
        "test_svc.py_test_slurmd_config_testbed_compute2",
    ]
    assert (art / "test_svc.py_test_slurmd_config_testbed_compute1" / "ctl" / "journal.txt").read_text() == "the journal\n"
