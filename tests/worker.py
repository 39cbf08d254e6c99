"""A worker for tests: records every signal it gets, spawns what it is told.

    python worker.py STATE_DIR [--ignore TERM,QUIT] [--exit-on SIG[:CODE]]
                     [--child] [--daemon] [--orphans N] [--exit-after SEC]

It writes STATE_DIR/ready.json ({"pid", "child", "daemon"}) once its handlers
are installed, and appends "NAME MONOTONIC" lines to STATE_DIR/<pid>.log for
each signal received, in every process it starts (child and daemon too).
"""

import argparse
import json
import os
import signal
import sys
import time

RECORDED = ["HUP", "INT", "QUIT", "USR1", "USR2", "ALRM", "TERM", "CONT", "TSTP", "TTIN", "TTOU", "WINCH", "URG"]


# Signals whose default action would stop or do nothing: recorded, then ignored.
HARMLESS = {"CONT", "TSTP", "TTIN", "TTOU", "WINCH", "URG"}


def record_signals(state: str, ignore: set[str], exit_on: dict[str, int]) -> None:
    # Imported here, not in the handler: an import is not re-entrant, and a
    # storm of signals runs the handler inside itself (importlib's lock breaks).
    from graceshell import shutdown

    path = os.path.join(state, f"{os.getpid()}.log")

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name[3:]
        with open(path, "a") as log:
            log.write(f"{name} {time.monotonic():.6f}\n")
        seen = os.path.join(state, f"notice-{os.getpid()}.json")
        if not os.path.exists(seen):  # what the shutdown notice said when the first signal arrived
            with open(seen, "w") as out:
                json.dump({"requested": shutdown.requested(), "notice": shutdown.notice(),
                           "remaining": shutdown.remaining(), "now": time.time()}, out)
        if name in exit_on:
            os._exit(exit_on[name])
        if name in ignore or name in HARMLESS:
            return
        # Die of it, as a worker without a handler would.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for name in RECORDED:
        signal.signal(getattr(signal, "SIG" + name), handler)


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def fork_recorder(state: str, ignore: set[str], daemon: bool) -> int:
    """A child (or, with `daemon`, a setsid'd double-forked grandchild) that records signals."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        if daemon:
            os.setsid()
            if os.fork():
                os._exit(0)  # the middle process exits: the daemon is orphaned
        record_signals(state, ignore, {})
        os.write(write_fd, str(os.getpid()).encode())
        os.close(write_fd)
        sleep_forever()
    os.close(write_fd)
    if daemon:
        os.waitpid(pid, 0)
    real = int(os.read(read_fd, 32))
    os.close(read_fd)
    return real


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state")
    parser.add_argument("--ignore", default="")
    parser.add_argument("--exit-on", default="")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--daemon", action="store_true")
    parser.add_argument("--orphans", type=int, default=0)
    parser.add_argument("--exit-after", type=float)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--job", action="append", default=[], help="ID:NAME of a job held in flight")
    parser.add_argument("--job-seconds", type=float, help="end the jobs after this long")
    parser.add_argument("--corrupt-job", action="store_true", help="leave a broken ledger file")
    args = parser.parse_args()
    ignore = {s for s in args.ignore.split(",") if s}
    exit_on = {}
    for item in filter(None, args.exit_on.split(",")):
        name, _, code = item.partition(":")
        exit_on[name] = int(code or 0)
    record_signals(args.state, ignore, exit_on)
    ready = {"pid": os.getpid(), "child": None, "daemon": None, "orphans": []}
    if args.child:
        ready["child"] = fork_recorder(args.state, ignore, daemon=False)
    if args.daemon:
        ready["daemon"] = fork_recorder(args.state, ignore, daemon=True)
    for _ in range(args.orphans):
        # Grandchildren that exit at once after their parent: zombies for graceshell.
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:
                time.sleep(0.05)
                os._exit(0)
            os._exit(0)
        os.waitpid(pid, 0)
    from graceshell import jobs

    held = []
    for spec in args.job:
        job_id, _, name = spec.partition(":")
        tracker = jobs.track(job_id, name or None, queue="default")
        tracker.__enter__()
        held.append(tracker)
    if args.corrupt_job:
        with open(os.path.join(os.environ["GRACESHELL_JOBS_DIR"], "broken.json"), "w") as out:
            out.write('{"id": "half-writ')
    tmp = os.path.join(args.state, "ready.tmp")
    with open(tmp, "w") as out:
        json.dump(ready, out)
    os.rename(tmp, os.path.join(args.state, "ready.json"))
    if args.job_seconds is not None:
        time.sleep(args.job_seconds)
        for tracker in held:
            tracker.__exit__(None, None, None)
    if args.exit_after is not None:
        time.sleep(args.exit_after)
        sys.exit(args.exit_code)
    sleep_forever()


if __name__ == "__main__":
    main()
