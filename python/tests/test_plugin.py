"""The pytest plugin, run by pytest's own ``pytester`` against the fake
supervisor (and the fake ``testbed`` command where the plugin brings the
cluster up): configuration by marker, option and ini file; one cluster per
session; keep on failure; and a failing test's report with the node, the
command, the output, the consoles and journals, kept in the artifacts
folder."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import FakeCli
from fake_supervisor import FakeSupervisor
from testbed import Cluster


@pytest.fixture(autouse=True)
def own_rootdir(pytester: pytest.Pytester) -> None:
    """An ini file in the test's folder makes it the inner run's rootdir,
    so test ids are ``test_x.py::test_y``."""
    pytester.makeini("[pytest]\n")


def test_a_failing_test_shows_node_command_output_and_keeps_the_logs(
    pytester: pytest.Pytester, fake: FakeSupervisor, composition: Path
) -> None:
    fake.canned["journalctl -b --no-pager"] = (b"Jan 01 slurmd[42]: the journal of this node\n", b"", 0)
    pytester.makepyfile(
        test_x="""
        import pytest

        pytestmark = pytest.mark.testbed(path={path!r})

        def test_fine(testbed_cluster):
            assert testbed_cluster["ctl"].succeed("echo fine") == "fine\\n"

        def test_broken(testbed_cluster):
            testbed_cluster["compute1"].succeed("echo out-text; echo err-text >&2; exit 3")
        """.format(path=str(composition.parent))
    )
    result = pytester.runpytest("--junitxml=report.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            ">       testbed_cluster*.succeed(*",  # the test's own line
            "E       testbed.errors.CommandFailed: command `echo out-text; echo err-text >&2; exit 3` on node compute1 failed: exit status 3",
            "E       stdout:",
            "E       out-text",
            "E       stderr:",
            "E       err-text",
            "test_x.py:9: CommandFailed",
            "*- testbed ctl console log (last lines) -*",
            "*ctl boot line 59",
            "*- testbed compute1 journal (last lines) -*",
            "Jan 01 slurmd[42]: the journal of this node",
            "*- testbed artifacts of cluster fake -*",
            "*testbed-artifacts/test_x.py_test_broken",
            "everything was collected",
        ]
    )
    # The console log's report section shows its last 40 lines only.
    assert "ctl boot line 19\n" not in result.stdout.str() and "ctl boot line 20\n" in result.stdout.str()
    art = composition.parent / "testbed-artifacts" / "test_x.py_test_broken"
    for node in ("ctl", "compute1", "compute2"):
        assert (art / node / "console.log").read_text().startswith("[  0.00] {} boot line 0".format(node))
        assert (art / node / "journal.txt").read_text() == "Jan 01 slurmd[42]: the journal of this node\n"
        assert (art / node / "state.txt").read_text() == "ready\n"
    assert (art / "problems.txt").read_text() == "everything was collected\n"
    assert sorted(p.name for p in (composition.parent / "testbed-artifacts").iterdir()) == ["test_x.py_test_broken"]
    report = ET.parse(str(pytester.path / "report.xml"))
    props = {p.get("name"): p.get("value") for p in report.iter("property")}
    assert props == {"testbed_artifacts": str(art)}
    # The cluster was running before: it stays up.
    assert Cluster.is_running(composition)


def test_the_plugin_brings_one_cluster_up_for_the_session_and_takes_it_down(
    pytester: pytest.Pytester, fake_cli: FakeCli, composition: Path
) -> None:
    for name in ("test_a", "test_b"):
        pytester.makepyfile(
            **{
                name: """
                def test_one(testbed_cluster):
                    assert [n.name for n in testbed_cluster.role("compute")] == ["compute1", "compute2", "compute3"]

                def test_two(testbed_cluster):
                    testbed_cluster["compute3"].succeed("true")
                """
            }
        )
    result = pytester.runpytest("--testbed-composition={}".format(composition.parent), "--testbed-scale=compute=3")
    result.assert_outcomes(passed=4)
    assert fake_cli.calls() == [["up", str(composition), "--scale", "compute=3"], ["down", str(composition)]]
    assert not Cluster.is_running(composition)


def test_keep_on_failure_leaves_the_cluster_running(
    pytester: pytest.Pytester, fake_cli: FakeCli, composition: Path
) -> None:
    pytester.makepyfile(
        test_k="""
        def test_broken(testbed_cluster):
            testbed_cluster["ctl"].fail("true")
        """
    )
    result = pytester.runpytest("--testbed-composition={}".format(composition), "--testbed-keep-on-failure")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*command `true` on node ctl succeeded but was expected to fail: exit status 0",
            "*= testbed =*",
            "artifacts of test_k.py::test_broken: *testbed-artifacts/test_k.py_test_broken",
            "cluster fake left running (a test that used it failed); `testbed down {}` removes it".format(composition),
        ]
    )
    assert fake_cli.verbs() == ["up"]
    assert Cluster.is_running(composition)
    Cluster.attach(composition).down()


def test_function_scope_from_the_ini_file_and_a_composition_relative_to_it(
    pytester: pytest.Pytester, fake_cli: FakeCli, composition: Path
) -> None:
    comp = pytester.path / "cluster"
    comp.mkdir()
    (comp / "testbed.toml").write_text(composition.read_text())
    pytester.makeini(
        """
        [pytest]
        testbed_composition = cluster
        testbed_scope = function
        testbed_scale = compute=1
        """
    )
    pytester.makepyfile(
        test_f="""
        def test_one(testbed_cluster):
            assert [n.name for n in testbed_cluster.nodes] == ["ctl", "compute"]

        def test_two(testbed_cluster):
            assert testbed_cluster["compute"].succeed("echo $FAKE_NODE") == "compute\\n"
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    file = str(comp / "testbed.toml")
    up = ["up", file, "--scale", "compute=1"]
    assert fake_cli.calls() == [up, ["down", file], up, ["down", file]]


def test_module_scope_brings_the_cluster_up_for_each_module(
    pytester: pytest.Pytester, fake_cli: FakeCli, composition: Path
) -> None:
    body = """
        import pytest

        pytestmark = pytest.mark.testbed(path={path!r}, scope="module")

        def test_one(testbed_cluster):
            testbed_cluster["ctl"].succeed("true")

        def test_two(testbed_cluster):
            testbed_cluster["compute2"].succeed("true")
        """.format(path=str(composition))
    pytester.makepyfile(test_m1=body, test_m2=body)
    result = pytester.runpytest()
    result.assert_outcomes(passed=4)
    file = str(composition)
    assert fake_cli.calls() == [["up", file], ["down", file], ["up", file], ["down", file]]


def test_other_settings_in_another_module_mean_another_up(
    pytester: pytest.Pytester, fake_cli: FakeCli, composition: Path
) -> None:
    pytester.makepyfile(
        test_1="""
        import pytest

        @pytest.mark.testbed(path={path!r}, scale={{"compute": 1}})
        def test_small(testbed_cluster):
            assert len(testbed_cluster.nodes) == 2
        """.format(path=str(composition)),
        test_2="""
        import pytest

        @pytest.mark.testbed({path!r}, scale={{"compute": 4}}, backend="qemu")
        def test_big(testbed_cluster):
            assert len(testbed_cluster.nodes) == 5
        """.format(path=str(composition)),
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    file = str(composition)
    assert fake_cli.calls() == [
        ["up", file, "--scale", "compute=1"],
        ["down", file],
        ["up", file, "--scale", "compute=4", "--backend", "qemu"],
        ["down", file],
    ]


def test_a_wider_fixture_gets_its_cluster_with_cluster_for(
    pytester: pytest.Pytester, fake: FakeSupervisor, composition: Path
) -> None:
    fake.units[("ctl", "slurmctld")] = "active"
    pytester.makepyfile(
        test_m="""
        import pytest
        from testbed.pytest_plugin import cluster_for

        pytestmark = pytest.mark.testbed(path={path!r})

        @pytest.fixture(scope="module")
        def ctl(request):
            node = cluster_for(request)["ctl"]
            node.wait_for_unit("slurmctld")
            return node

        def test_uses_the_module_fixture(ctl):
            assert ctl.succeed("echo $FAKE_NODE") == "ctl\\n"

        def test_a_node_fixture_is_enough_for_artifacts(ctl):
            ctl.succeed("exit 7")
        """.format(path=str(composition))
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*on node ctl failed: exit status 7", "*- testbed ctl console log (last lines) -*"])
    assert (composition.parent / "testbed-artifacts" / "test_m.py_test_a_node_fixture_is_enough_for_artifacts" / "ctl" / "console.log").is_file()


def test_a_bad_marker_is_an_error_that_says_what_is_known(pytester: pytest.Pytester, fake: FakeSupervisor, composition: Path) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.testbed(path={path!r}, scael={{"compute": 2}})
        def test_x(testbed_cluster):
            pass
        """.format(path=str(composition))
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ConfigError: unknown argument of the testbed marker: scael (known: accel, backend, *)"])


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.testbed(path=None, scale=None, backend=None, *): the cluster testbed_cluster gives"])
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["testbed clusters:", "*--testbed-composition=PATH*"])
