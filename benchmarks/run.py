"""graceshell side by side with tini, dumb-init, honcho and supervisord.

    python benchmarks/run.py [--smoke] [--throughput-only] [--json FILE]

Every figure is measured in this run, on this machine, for graceshell and
for each peer found: start-up, forwarding latency, ladder accuracy, idle
cost, peak RSS, killing a 1000-process tree, a zombie storm, the
throughput of `start`'s output prefixer, and the price of a job: workers
draining no-op tasks bare and under graceshell (benchmarks/throughput.py).
Medians with p90/p99 over many trials; ratios against the peers of the same
run. It installs nothing: a missing peer is named with the command that
installs it, and skipped. `--smoke` runs a few trials of each (under a
minute) for CI; `--throughput-only` runs the price of a job alone.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import throughput  # benchmarks/throughput.py, beside this script

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
GRACESHELL = str(BIN / "graceshell") if (BIN / "graceshell").exists() else None
PEER_INSTALL = {"tini": "apt-get install tini", "dumb-init": "apt-get install dumb-init",
                "honcho": "pip install honcho", "supervisord": "pip install supervisor"}


# -- helpers -----------------------------------------------------------------------------------

def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"median": round(statistics.median(ordered), 4), "p90": round(at(0.90), 4),
            "p99": round(at(0.99), 4), "n": len(ordered)}


def which(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def build(workdir: Path, name: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("benchmarks: needs a C compiler (cc) for the receiver and the forker")
    out = workdir / name
    subprocess.run([cc, "-O2", "-o", str(out), str(HERE / f"{name}.c")], check=True)
    return str(out)


def kill_tree(pid: int, known: list | None = None) -> None:
    """Kill a wrapper and everything below it (benchmark cleanup).

    The descendants are listed before anything dies (a dead wrapper's children
    go to init and out of reach of the walk); then the wrapper's process group,
    which also holds what a dead middle process left to init (honcho's
    `sh -c` does), and each listed process.
    """
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    procs += known or []  # listed at start-up: a stop may already have orphaned some
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


class Wrappers:
    """How to run COMMAND under each wrapper found on this machine."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.missing: list[str] = []
        self.found = {name: which(name) for name in ("tini", "dumb-init", "honcho", "supervisord")}
        for name, path in self.found.items():
            if path is None:
                self.missing.append(f"{name} ({PEER_INSTALL[name]})")

    def argv(self, name: str, command: list[str], *, budget: float = 25.0) -> list[str] | None:
        if name == "bare":
            return command
        if name == "graceshell":
            return [GRACESHELL, "run", "--platform", "none", "--log-format", "json", "--second-signal", "forward",
                    "--budget", f"{budget}s", "--linger", "0s", "--", *command] if GRACESHELL else None
        path = self.found.get(name)
        if path is None:
            return None
        if name == "tini":
            return [path, "-s", "--", *command]
        if name == "dumb-init":
            return [path, *command]
        if name == "honcho":
            procfile = self.workdir / f"Procfile.{os.getpid()}.{time.monotonic_ns()}"
            procfile.write_text("w: " + " ".join(command) + "\n")
            return [path, "-f", str(procfile), "-d", str(self.workdir), "start"]
        if name == "supervisord":
            return self.supervisord(command, stopwaitsecs=budget)
        return None

    def supervisord(self, command: list[str], *, stopwaitsecs: float) -> list[str] | None:
        path = self.found["supervisord"]
        if path is None:
            return None
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        conf = self.workdir / f"supervisord-{tag}.conf"
        conf.write_text(f"""[supervisord]
nodaemon=true
logfile=/dev/null
pidfile={self.workdir}/supervisord-{tag}.pid
[unix_http_server]
file={self.workdir}/supervisor-{tag}.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:w]
command={' '.join(command)}
autorestart=false
startsecs=0
stopsignal=TERM
stopwaitsecs={max(1, int(stopwaitsecs))}
stopasgroup=true
killasgroup=true
stdout_logfile=/dev/fd/1
stdout_logfile_maxbytes=0
redirect_stderr=true
""")
        return [path, "-c", str(conf)]


# -- 1. start-up ---------------------------------------------------------------------------------

def startup(wrappers: Wrappers, receiver: str, trials: int) -> dict[str, object]:
    results: dict[str, object] = {}
    cases = {"bare true": ["true"], "python3 -c pass": [sys.executable, "-c", "pass"]}
    for name in ("tini", "dumb-init", "graceshell"):
        argv = wrappers.argv(name, ["true"])
        if argv:
            cases[f"{name} true"] = argv
    if wrappers.found["honcho"]:
        cases["honcho run true"] = [wrappers.found["honcho"], "run", "true"]
    # Interleaved, one of each per round: a machine that slows down for a
    # while slows every wrapper alike, and the ratios stay fair.
    times: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(trials):
        for label, argv in cases.items():
            began = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[label].append((time.perf_counter() - began) * 1000)
    for label in cases:
        results[label] = stats(times[label])
    # How long after its own start graceshell has exec'd the worker.
    if GRACESHELL:
        delays = []
        for _ in range(trials):
            launched = time.monotonic_ns()
            proc = subprocess.Popen(wrappers.argv("graceshell", [receiver]), stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            line = proc.stdout.readline().split()  # type: ignore[union-attr]
            delays.append((int(line[2]) - launched) / 1e6)
            kill_tree(proc.pid)
            proc.wait()
        results["graceshell: worker exec'd after (ms)"] = stats(delays)
        # How long after its own start graceshell catches TERM (its SigCgt
        # mask): before that, a TERM to graceshell as PID 1 would be lost. The
        # same for a Python script whose first line catches it: the bound.
        bound = HERE / "catch_term.py"
        for label, argv in (("graceshell: TERM caught after (ms)", wrappers.argv("graceshell", ["sleep", "5"])),
                            ("python3 catching TERM on its first line (ms)", [sys.executable, str(bound)])):
            caught = []
            for _ in range(trials):
                launched = time.monotonic_ns()
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
                while not _catches_term(proc.pid):
                    pass  # spinning, not sleeping: a sleep's granularity would be the measure
                caught.append((time.monotonic_ns() - launched) / 1e6)
                kill_tree(proc.pid)
                proc.wait()
            results[label] = stats(caught)
    return results


def _catches_term(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def imports(trials: int) -> dict[str, object]:
    """`python -X importtime -m graceshell run -- true`: what click, structlog
    and graceshell's own command line cost to import, and proof that the
    logging library comes after the spawn (it is imported by the supervisor
    once the worker runs)."""
    cumulative: dict[str, list[float]] = {"click": [], "structlog": [], "graceshell.cli": []}
    after_spawn = True
    for _ in range(trials):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "graceshell", "run", "--platform", "none",
                               "--log-format", "json", "--", "true"], capture_output=True, text=True)
        order = []
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and line.count("|") == 2:
                _, total, name = line.split("|")
                order.append(name.strip())
                if name.strip() in cumulative:
                    cumulative[name.strip()].append(int(total) / 1000)
        # graceshell.engine.tree spawns the worker; structlog must not be imported before it.
        after_spawn &= "structlog" in order and order.index("graceshell.engine.tree") < order.index("structlog")
    results: dict[str, object] = {f"import {name}, ms": stats(values) for name, values in cumulative.items() if values}
    results["structlog imported after the spawn"] = after_spawn
    return results


# -- 2. forwarding ---------------------------------------------------------------------------------

def _receiver_under(argv: list[str]) -> tuple[subprocess.Popen, int]:
    import psutil

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    while True:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"no ready line from {argv[0]}")
        if b"ready" in line:  # honcho and supervisord prefix the worker's lines
            worker = int(line[line.index(b"ready"):].split()[1])
            try:  # for the cleanup: the stop may orphan it before kill_tree walks the tree
                proc.known = [psutil.Process(worker)]  # type: ignore[attr-defined]
            except psutil.NoSuchProcess:
                proc.known = []  # type: ignore[attr-defined]
            return proc, worker


def _next_signal(proc: subprocess.Popen, timeout: float = 5.0) -> tuple[int, int] | None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    line = proc.stdout.readline()
    words = line.split()
    if len(words) >= 2 and words[-2].isdigit() and words[-1].isdigit():
        return int(words[-2]), int(words[-1])
    return _next_signal(proc, timeout)


def forwarding(wrappers: Wrappers, receiver: str, trials: int) -> dict[str, object]:
    """SIGTERM to the wrapper -> handler entered in the worker, one fresh run per trial."""
    results: dict[str, object] = {}
    for name in ("bare", "tini", "dumb-init", "graceshell", "honcho", "supervisord"):
        argv = wrappers.argv(name, [receiver])
        if argv is None:
            continue
        latencies = []
        for _ in range(trials):
            proc, _pid = _receiver_under(argv)
            time.sleep(0.15)  # let the wrapper settle into its loop
            sent = time.monotonic_ns()
            os.kill(proc.pid, signal.SIGTERM)
            got = _next_signal(proc)
            if got is not None and got[0] == signal.SIGTERM:
                latencies.append((got[1] - sent) / 1e6)
            kill_tree(proc.pid, proc.known)  # type: ignore[attr-defined]
            proc.wait()
        if latencies:
            results[name if name != "bare" else "kernel floor (direct)"] = stats(latencies)
    # Steady state: many forwards in one run (graceshell passes USR1 as it is).
    if GRACESHELL:
        proc, _pid = _receiver_under(wrappers.argv("graceshell", [receiver]))
        time.sleep(0.2)
        latencies = []
        for _ in range(trials * 10):
            sent = time.monotonic_ns()
            os.kill(proc.pid, signal.SIGUSR1)
            got = _next_signal(proc)
            if got is not None:
                latencies.append((got[1] - sent) / 1e6)
            time.sleep(0.002)
        kill_tree(proc.pid, proc.known)  # type: ignore[attr-defined]
        proc.wait()
        results["graceshell, repeated USR1"] = stats(latencies)
    return results


# -- 3. ladder accuracy ------------------------------------------------------------------------------

def ladder(wrappers: Wrappers, receiver: str, trials: int) -> dict[str, object]:
    """KILL offset vs the worker's death, measured from the TERM the worker received (ms late)."""
    results: dict[str, object] = {}
    for name, budget in (("graceshell", 0.5), ("supervisord", 1.0)):
        argv = wrappers.argv(name, [receiver], budget=budget)
        if argv is None:
            continue
        if name == "graceshell":
            argv = argv[:argv.index("--")] + ["--ladder", "USR2@0.25s"] + argv[argv.index("--"):]
        step_errors, kill_errors = [], []
        for _ in range(trials):
            proc, worker = _receiver_under(argv)
            pidfd = os.pidfd_open(worker)
            time.sleep(0.15)
            os.kill(proc.pid, signal.SIGTERM)
            got = _next_signal(proc)
            if got is None:
                kill_tree(proc.pid, proc.known)  # type: ignore[attr-defined]
                proc.wait()
                continue
            term_at = got[1]
            if name == "graceshell":
                step = _next_signal(proc)
                if step is not None:
                    step_errors.append((step[1] - term_at) / 1e6 - 250)
            select.select([pidfd], [], [], budget + 5)
            kill_errors.append((time.monotonic_ns() - term_at) / 1e6 - budget * 1000)
            os.close(pidfd)
            kill_tree(proc.pid, proc.known)  # type: ignore[attr-defined]
            proc.wait()
        results[f"{name} KILL at {budget:g}s"] = stats(kill_errors)
        if step_errors:
            results[f"{name} step at 0.25s"] = stats(step_errors)
    return results


# -- 4, 5. idle cost and RSS ----------------------------------------------------------------------

def _threads_counters(pid: int) -> tuple[float, int, float]:
    """CPU seconds, voluntary context switches (all threads), peak RSS in MB."""
    import psutil

    proc = psutil.Process(pid)
    cpu = sum(proc.cpu_times()[:2])
    switches = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches"):
                    switches += int(line.split()[1])
    with open(f"/proc/{pid}/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    return cpu, switches, hwm / 1024


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def idle(wrappers: Wrappers, seconds: float) -> dict[str, object]:
    """Every wrapper at once over an idle `sleep`, for the same `seconds`."""
    running = {}
    for name in ("tini", "dumb-init", "graceshell", "graceshell --http", "honcho", "supervisord"):
        argv = wrappers.argv(name.split()[0], ["sleep", str(int(seconds) + 60)])
        if argv is not None and name.endswith("--http"):  # the endpoint on, nobody calling it
            argv = [*argv[:2], "--http", f"127.0.0.1:{_free_port()}", *argv[2:]]
        if argv is not None:
            running[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True)
    time.sleep(2.0)
    before = {name: _threads_counters(proc.pid) for name, proc in running.items()}
    time.sleep(seconds)
    results: dict[str, object] = {}
    for name, proc in running.items():
        cpu, switches, rss = _threads_counters(proc.pid)
        results[name] = {"cpu_s_per_min": round((cpu - before[name][0]) * 60 / seconds, 4),
                         "wakeups_per_s": round((switches - before[name][1]) / seconds, 2),
                         "peak_rss_mb": round(rss, 1)}
        kill_tree(proc.pid)
        proc.wait()
    return results


# -- 6. killing a 1000-process tree ----------------------------------------------------------------

def tree_kill(wrappers: Wrappers, forker: str, size: int, escaped: int) -> dict[str, object]:
    import psutil

    results: dict[str, object] = {}
    # Wrappers that kill on their own; the fixed wait of each is subtracted.
    waits = {"graceshell": 0.0, "supervisord": 1.0, "honcho": 5.0, "tini": None, "dumb-init": None}
    for name, wait in waits.items():
        pids_file = wrappers.workdir / f"pids-{name}"
        # graceshell: a budget of 0, so its SIGKILL of the tree comes with the stop itself.
        argv = wrappers.argv(name, [forker, "tree", str(size), str(escaped)],
                             budget=wait if wait is not None else 1.0)
        if argv is None:
            continue
        env = {**os.environ, "FORKER_PIDS": str(pids_file)}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        while b"ready" not in (proc.stdout.readline() or b"ready"):  # type: ignore[union-attr]
            pass
        pids = [int(line) for line in pids_file.read_text().split()]
        began = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        limit = 10.0 if wait is not None else 2.0
        try:
            proc.wait(limit)
            took = time.monotonic() - began - (wait or 0.0)
        except subprocess.TimeoutExpired:
            took = None
        time.sleep(0.3)
        survivors = [pid for pid in pids if psutil.pid_exists(pid)
                     and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        never = f"did not exit within {limit:g}s" + (" (forwards only)" if wait is None else "")
        results[name] = {"kill_and_reap_s": round(took, 3) if took is not None else never,
                         "survivors": len(survivors), "of": len(pids)}
        kill_tree(proc.pid)
        for pid in survivors:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    return results


# -- 7. zombie storm ------------------------------------------------------------------------------

def zombie_storm(wrappers: Wrappers, forker: str, size: int) -> dict[str, object]:
    import psutil

    results: dict[str, object] = {}
    for name in ("graceshell", "tini", "dumb-init"):
        argv = wrappers.argv(name, [forker, "storm", str(size)])
        if argv is None:
            continue
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        began = time.monotonic()
        while b"done" not in (proc.stdout.readline() or b"done"):  # type: ignore[union-attr]
            pass
        forked_s = time.monotonic() - began
        time.sleep(1.0)
        zombies = [p for p in psutil.Process(proc.pid).children() if p.status() == psutil.STATUS_ZOMBIE]
        subreaper = name in ("graceshell", "tini")
        results[name] = {"zombies_left": len(zombies) if subreaper else "n/a (not a subreaper here)",
                         "storm_s": round(forked_s, 3)}
        kill_tree(proc.pid)
        proc.wait()
    return results


# -- 8. output throughput of start ------------------------------------------------------------------

def prefixer(wrappers: Wrappers, forker: str, lines: int) -> dict[str, object]:
    results: dict[str, object] = {}
    workdir = wrappers.workdir / "prefixer"
    workdir.mkdir(exist_ok=True)
    (workdir / "Procfile").write_text(f"a: {forker} lines {lines}\n")
    cases = {}
    if GRACESHELL:
        cases["graceshell start"] = [GRACESHELL, "start", "--platform", "none", "--linger", "0s"]
    if wrappers.found["honcho"]:
        cases["honcho start"] = [wrappers.found["honcho"], "start"]
    for label, argv in cases.items():
        began = time.monotonic()
        proc = subprocess.run(argv, cwd=workdir, capture_output=True, timeout=600)
        took = time.monotonic() - began
        payload = [line for line in proc.stdout.splitlines() if line.endswith(b"x" * 20)]
        whole = sum(1 for i, line in enumerate(payload) if line.endswith(b"%08d " % i + b"x" * 91))
        results[label] = {"lines_per_s": round(lines / took), "seconds": round(took, 3),
                          "lines_seen": len(payload), "lines_whole_in_order": whole, "of": lines}
    return results


# -- the report -----------------------------------------------------------------------------------

def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


# The start-up and first-stop targets, checked against this run's own figures.
TARGETS = (
    ("worker exec'd after graceshell's start, ms", "start-up, wall ms", "graceshell: worker exec'd after (ms)", 70.0),
    ("first stop forwarded, ms", "forwarding latency, ms (SIGTERM to the wrapper -> handler in the worker)",
     "graceshell", 0.3),
    ("peak RSS, MB", "idle cost and peak RSS", "graceshell", 25.0),
)


THROUGHPUT = "the price of a job: no-op tasks drained, bare and under graceshell"


def print_targets(report: dict[str, object]) -> None:
    print("\ntargets")
    for label, section, key, limit in TARGETS:
        figures = report.get(section)
        value = figures.get(key) if isinstance(figures, dict) else None
        if isinstance(value, dict):
            value = value.get("median", value.get("peak_rss_mb"))
        if isinstance(value, (int, float)):
            print(f"  {label:<44} {value:9.3f}  target <= {limit:g}: {'met' if value <= limit else 'NOT met'}")
    up = report.get("start-up, wall ms")
    if isinstance(up, dict) and "honcho run true" in up and "graceshell true" in up:
        times = up["graceshell true"]["median"] / up["honcho run true"]["median"]
        print(f"  {'run -- true / honcho run true':<44} {times:9.3f}  target <= 1.1: "
              f"{'met' if times <= 1.1 else 'NOT met'}")
    jobs = report.get(THROUGHPUT)
    for label, row in (jobs.items() if isinstance(jobs, dict) else ()):
        if isinstance(row, dict) and "ratio" in row:
            print(f"  {label + ', graceshell / bare tasks/s':<44} {row['ratio']:9.3f}  target >= 0.97: "
                  f"{'met' if row['ratio'] >= 0.97 else 'NOT met'}")
            per_core = row["graceshell CPU s per 1000 jobs"] * 100  # % of a core at 1,000 jobs/s
            print(f"  {label + ', graceshell % core at 1000/s':<44} {per_core:9.3f}  target < 1: "
                  f"{'met' if per_core < 1 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few trials of each (about 30 s), for CI")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only the price of a job: workers draining no-op tasks, bare and under graceshell")
    parser.add_argument("--tasks", type=int, default=None, help="no-op tasks per drain (default 3000; 100 in --smoke)")
    parser.add_argument("--trials", type=int, default=None, help="interleaved rounds (default 5; 1 in --smoke)")
    args = parser.parse_args()
    if GRACESHELL is None:
        sys.exit("benchmarks: graceshell is not installed next to this Python (make test sets it up)")
    smoke = args.smoke
    tasks = args.tasks or (100 if smoke else 3000)
    trials = args.trials or (1 if smoke else 5)
    # Measure graceshell as pip installs it: with its bytecode compiled (an
    # editable checkout under PYTHONDONTWRITEBYTECODE would compile every
    # module on every start).
    import compileall

    import graceshell

    compileall.compile_dir(str(Path(graceshell.__file__).parent), quiet=1)
    report: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
                                 "python": sys.version.split()[0], "smoke": smoke}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wrappers = Wrappers(workdir)
        if wrappers.missing:
            print("missing peers, skipped: " + ", ".join(wrappers.missing))
        receiver, forker = build(workdir, "receiver"), build(workdir, "forker")
        sections = [
            ("start-up, wall ms", lambda: startup(wrappers, receiver, 5 if smoke else 40)),
            ("imports on the start path (python -X importtime)", lambda: imports(3 if smoke else 20)),
            ("forwarding latency, ms (SIGTERM to the wrapper -> handler in the worker)",
             lambda: forwarding(wrappers, receiver, 3 if smoke else 30)),
            ("ladder accuracy, ms late (from the worker's TERM)", lambda: ladder(wrappers, receiver, 2 if smoke else 20)),
            ("idle cost and peak RSS", lambda: idle(wrappers, 3.0 if smoke else 30.0)),
            ("tree kill (1000 processes, 100 escaped with setsid)",
             lambda: tree_kill(wrappers, forker, 100 if smoke else 1000, 10 if smoke else 100)),
            ("zombie storm", lambda: zombie_storm(wrappers, forker, 500 if smoke else 10000)),
            ("start output throughput", lambda: prefixer(wrappers, forker, 20000 if smoke else 500000)),
            (THROUGHPUT, lambda: throughput.throughput(workdir, GRACESHELL, tasks, trials, smoke)),
        ]
        if args.throughput_only:
            sections = [s for s in sections if s[0] == THROUGHPUT]
        for title, measure in sections:
            figures = measure()
            report[title] = figures
            print(f"\n{title}")
            if title == THROUGHPUT:
                throughput.print_table(figures)
                continue
            for label, value in figures.items():
                if isinstance(value, dict) and "median" in value:
                    print(f"  {label:<38} median {value['median']:9.3f}  p90 {value['p90']:9.3f}  "
                          f"p99 {value['p99']:9.3f}  (n={value['n']})")
                else:
                    print(f"  {label:<38} {json.dumps(value)}")
    print_targets(report)  # graceshell run -- true against honcho run true among them
    thru = report.get("start output throughput")
    if isinstance(thru, dict) and "honcho start" in thru and "graceshell start" in thru:
        print(f"start output, graceshell vs honcho: "
              f"{ratio(thru['graceshell start']['lines_per_s'], thru['honcho start']['lines_per_s'])} the lines/s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
