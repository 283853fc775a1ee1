"""The etcd example's test in Python: what test.rhai checks, with pytest and
the testbed plugin (docs/python.md).

    pytest examples/etcd/test_etcd.py

brings the cluster up if it is not running (``testbed up``), runs the
tests on it, and takes it down again (``--testbed-keep`` leaves it up; a
cluster that was running before stays up). It works for any
``--testbed-scale etcd=N`` with N >= 3.

Each test starts from a healthy cluster with no fault (the ``members``
fixture heals, starts every node and waits for etcd's health), so the
tests can run alone: ``pytest examples/etcd/test_etcd.py -k partition``.
"""

import json
import logging
import uuid

import pytest

log = logging.getLogger(__name__)

# The cluster of this folder's testbed.toml (a marker's path is relative to
# the test file).
pytestmark = pytest.mark.testbed(path=".")

# Every etcdctl call has its own limits, well inside the client's timeouts,
# so that a call that cannot succeed (no quorum) fails with etcd's message
# instead of hanging.
ETCDCTL = "etcdctl --dial-timeout=5s --command-timeout=20s"

# Every key of a run under a prefix of its own: a cluster that was up
# before (test.rhai ran on it, or an earlier pytest session) holds keys of
# the same names, and "the minority does not have the majority's write"
# must not see an older run's write.
RUN = "py-{}".format(uuid.uuid4().hex[:8])


def url(member):
    """A member's client URL, by host name (/etc/hosts lists every node)."""
    return "http://{}:2379".format(member.name)


def urls(members):
    return ",".join(url(m) for m in members)


def agreed_leader(asker, members):
    """Asks, from ``asker``, every member of ``members`` for its status;
    returns the one leader they all agree on (a node). Fails, saying why,
    if one does not answer, sees no leader, or sees another leader."""
    out = asker.succeed("{} --endpoints={} endpoint status -w json".format(ETCDCTL, urls(members)))
    statuses = json.loads(out)
    assert len(statuses) == len(members), "{} of {} members answered: {}".format(len(statuses), len(members), out)
    names = {}
    leaders = set()
    for s in statuses:
        name = s["Endpoint"].split("//", 1)[1].split(":", 1)[0]
        names[s["Status"]["header"]["member_id"]] = name
        leader = s["Status"].get("leader", 0)
        assert leader != 0, "{} sees no leader: {}".format(name, out)
        leaders.add(leader)
    assert len(leaders) == 1, "the members do not agree on one leader: {}".format(out)
    leader = leaders.pop()
    assert leader in names, "the leader {} is none of {}: {}".format(leader, urls(members), out)
    return asker.cluster[names[leader]]


def has_locally(member, key, value):
    """``member`` holds ``key`` = ``value`` in its own copy of the data: a
    serializable read is answered locally, without asking the leader."""
    member.wait_until_succeeds(
        "test \"$(etcdctl --command-timeout=20s get {} --print-value-only --consistency=s)\" = '{}'".format(
            key, value
        ),
        60,
    )


def read(member, key):
    """A linearizable read (through the leader's quorum) of ``key``."""
    return member.succeed("{} get {} --print-value-only".format(ETCDCTL, key)).strip()


def assert_all_started(members):
    listing = members[0].succeed("{} member list".format(ETCDCTL))
    for m in members:
        assert ", started, {}, ".format(m.name) in listing, "{} is not a started member: {}".format(m.name, listing)
    rows = [line for line in listing.splitlines() if line.strip()]
    assert len(rows) == len(members), "not {} members: {}".format(len(members), listing)


@pytest.fixture
def members(testbed_cluster):
    """The etcd members, every one running and healthy, no fault in force."""
    testbed_cluster.heal()
    testbed_cluster.start_all()
    members = testbed_cluster.role("etcd")
    assert len(members) >= 3, "the test needs 3 members or more, the cluster has {}".format(len(members))
    for m in members:
        m.wait_for_unit("etcd")
    members[0].wait_until_succeeds("{} endpoint health --cluster".format(ETCDCTL), 120)
    return members


def test_all_members_are_healthy_and_agree_on_one_leader(members):
    assert_all_started(members)
    leader = agreed_leader(members[0], members)
    log.info("leader: %s", leader.name)


def test_a_write_on_one_member_is_readable_on_every_member(members):
    writer = members[0]
    value = "hello from {}".format(writer.name)
    writer.succeed("{} put {}/greeting '{}'".format(ETCDCTL, RUN, value))
    for m in members:
        has_locally(m, RUN + "/greeting", value)
        assert read(m, RUN + "/greeting") == value, "{} reads another greeting".format(m.name)


def test_writes_survive_the_loss_of_a_member_which_catches_up_when_back(members):
    members[0].succeed("{} put {}/before-crash kept".format(ETCDCTL, RUN))
    # Crash the leader: the survivors must elect a new one before they can
    # take writes.
    victim = agreed_leader(members[0], members)
    rest = [m for m in members if m != victim]
    victim.crash()

    for m in rest:
        m.wait_until_succeeds("{} put {}/while-down/{} written-by-{}".format(ETCDCTL, RUN, m.name, m.name), 120)
    new_leader = agreed_leader(rest[0], rest)
    log.info("%s crashed; the survivors elected %s", victim.name, new_leader.name)
    assert new_leader != victim
    for m in rest:
        for w in rest:
            assert read(m, "{}/while-down/{}".format(RUN, w.name)) == "written-by-{}".format(w.name)

    # The node boots with an empty disk; etcd-bootstrap-state replaces the
    # member and the leader sends it the data.
    victim.start()
    victim.wait_for_unit("etcd")
    for w in rest:
        has_locally(victim, "{}/while-down/{}".format(RUN, w.name), "written-by-{}".format(w.name))
    has_locally(victim, RUN + "/before-crash", "kept")
    members[0].wait_until_succeeds("{} endpoint health --cluster".format(ETCDCTL), 120)
    assert_all_started(members)
    agreed_leader(members[0], members)


def test_a_partitioned_minority_cannot_write_the_majority_can(testbed_cluster, members):
    # The minority is the current leader, alone: the majority has to elect
    # a new leader before it can take writes again, and the old one has to
    # notice it lost its quorum.
    cut = agreed_leader(members[0], members)
    majority = [m for m in members if m != cut]
    with testbed_cluster.partition(majority, [cut]):
        for m in majority:
            m.wait_until_succeeds(
                "{} --endpoints={} put {}/partition/majority written-by-{}".format(ETCDCTL, urls(majority), RUN, m.name),
                120,
            )
        log.info("the majority elected %s", agreed_leader(majority[0], majority).name)

        # On the minority side a write cannot reach a quorum: etcdctl gives
        # up after its command timeout and exits non-zero.
        refused = cut.run("etcdctl --command-timeout=15s put {}/partition/minority written-by-the-minority".format(RUN))
        assert not refused.succeeded, "a write on {} succeeded in the minority: {}".format(cut.name, refused.stdout)
        log.info("%s refused the write: %s", cut.name, refused.stderr.strip().splitlines()[-1:])
        # Nor can it serve a linearizable read, which needs the quorum too.
        cut.fail("etcdctl --command-timeout=15s get {}/partition/majority".format(RUN))
        # Its local copy is stale: the majority's write never reached it.
        stale = cut.succeed(
            "etcdctl --command-timeout=15s get {}/partition/majority --print-value-only --consistency=s".format(RUN)
        )
        assert stale.strip() == "", "{} has the majority's write while cut off: {}".format(cut.name, stale)
    # Leaving the block removed the partition: the member writes again.
    cut.wait_until_succeeds("{} put {}/after-partition/{} ok".format(ETCDCTL, RUN, cut.name), 120)


def test_healing_the_partition_brings_the_minority_up_to_date(testbed_cluster, members):
    cut = agreed_leader(members[0], members)
    majority = [m for m in members if m != cut]
    testbed_cluster.partition(majority, [cut])
    last = majority[-1]
    majority[0].wait_until_succeeds(
        "{} --endpoints={} put {}/heal/majority written-by-{}".format(ETCDCTL, urls(majority), RUN, last.name), 120
    )
    cut.fail("etcdctl --command-timeout=15s put {}/heal/minority written-by-the-minority".format(RUN))

    testbed_cluster.heal()
    assert [str(e) for e in testbed_cluster.fault_history()][-2:] == [
        "partition [{}] [{}]".format(",".join(m.name for m in majority), cut.name),
        "heal",
    ]
    has_locally(cut, RUN + "/heal/majority", "written-by-{}".format(last.name))
    cut.wait_until_succeeds("{} put {}/after-heal/{} ok".format(ETCDCTL, RUN, cut.name), 120)
    members[0].wait_until_succeeds("{} endpoint health --cluster".format(ETCDCTL), 120)
    log.info("leader: %s", agreed_leader(members[0], members).name)
    # The write the minority refused was never committed, so it appears
    # nowhere.
    for m in members:
        has_locally(m, "{}/after-heal/{}".format(RUN, cut.name), "ok")
        assert read(m, RUN + "/heal/minority") == "", "{} has the minority's refused write".format(m.name)
