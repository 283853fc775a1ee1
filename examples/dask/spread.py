#!/usr/bin/python3
"""A small Dask client for the example's test, run on the scheduler node.

    spread.py [--scheduler ADDRESS] workers [--expect NAME,NAME,...] [--within SECONDS]
        Prints the names of the workers registered with the scheduler, one
        a line. With --expect, waits up to --within seconds until exactly
        those are registered, and exits 1 naming the missing and unexpected
        ones if they never are.

    spread.py [--scheduler ADDRESS] run TASKS [--delay SECONDS]
              [--ready PATH --go PATH] [--output PATH]
        Runs TASKS small tasks (each sleeps, then returns the host name of
        the worker that ran it) and prints (or writes to --output, once
        complete):
            assigned NAME NAME ...   every worker the scheduler gave a task
            ran NAME COUNT           one line per worker that returned results
            total COUNT              results gathered
        A worker can be assigned tasks and still return none: when the
        scheduler drops it, its tasks are rerun on the others.
        With --ready and --go, it creates the first file once connected and
        submits only when the second exists, so a test can start it (slow
        under emulation) ahead of time and have it submit at a chosen moment.
"""

import argparse
import os
import socket
import sys
import time
from collections import Counter

from distributed import Client

SCHEDULER = "tcp://scheduler:8786"


def where(_index, delay):
    """A task: the host it ran on (pure=False makes each call a new task)."""
    time.sleep(delay)
    return socket.gethostname()


def worker_names(client):
    """Address -> name of every worker the scheduler knows now."""
    workers = client.scheduler_info()["workers"]
    return {addr: str(info.get("name", addr)) for addr, info in workers.items()}


def cmd_workers(client, args):
    names = sorted(worker_names(client).values())
    if args.expect is not None:
        expected = sorted(n for n in args.expect.split(",") if n)
        deadline = time.monotonic() + args.within
        while names != expected and time.monotonic() < deadline:
            time.sleep(1)
            names = sorted(worker_names(client).values())
        if names != expected:
            missing = sorted(set(expected) - set(names))
            unexpected = sorted(set(names) - set(expected))
            print(
                f"registered workers: {' '.join(names) or '(none)'}; "
                f"missing: {' '.join(missing) or '(none)'}; "
                f"unexpected: {' '.join(unexpected) or '(none)'}",
                file=sys.stderr,
            )
            return 1
    for name in names:
        print(name)
    return 0


def cmd_run(client, args):
    if args.go:
        if args.ready:
            open(args.ready, "w").close()
        while not os.path.exists(args.go):
            time.sleep(0.2)
    futures = client.map(where, range(args.tasks), delay=args.delay, pure=False)
    keys = {f.key for f in futures}
    # Watch which workers hold our tasks until every result is in: a worker
    # that is later dropped still shows up here.
    names = worker_names(client)
    assigned = set()
    while not all(f.done() for f in futures):
        names.update(worker_names(client))
        for addr, processing in client.processing().items():
            if keys.intersection(processing):
                assigned.add(names.get(addr, addr))
        time.sleep(0.5)
    hosts = client.gather(futures)
    lines = ["assigned " + " ".join(sorted(assigned))]
    lines += [f"ran {host} {n}" for host, n in sorted(Counter(hosts).items())]
    lines.append(f"total {len(hosts)}")
    text = "".join(line + "\n" for line in lines)
    if args.output:
        with open(args.output + ".tmp", "w") as f:
            f.write(text)
        os.rename(args.output + ".tmp", args.output)
    else:
        sys.stdout.write(text)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    workers = sub.add_parser("workers", help="list the registered workers")
    workers.add_argument("--expect", help="comma-separated names to wait for")
    workers.add_argument("--within", type=float, default=60.0)
    run = sub.add_parser("run", help="run small tasks, say where they ran")
    run.add_argument("tasks", type=int)
    run.add_argument("--delay", type=float, default=0.5)
    run.add_argument("--ready", help="created once connected (with --go)")
    run.add_argument("--go", help="submit only once this file exists")
    run.add_argument("--output", help="write the result here, not to stdout")
    parser.add_argument("--scheduler", default=SCHEDULER, help=f"default: {SCHEDULER}")
    args = parser.parse_args()
    # Under software emulation the first connection can take a while.
    with Client(args.scheduler, timeout="120s") as client:
        if args.command == "workers":
            return cmd_workers(client, args)
        return cmd_run(client, args)


if __name__ == "__main__":
    sys.exit(main())
