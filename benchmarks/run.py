"""graceshell's own figures: start-up, forwarding latency, ladder accuracy, idle cost.

    python benchmarks/run.py [--quick] [--json FILE]

Medians (and p90/p99) of many trials on this machine, each beside a reference
measured in the same run: `python3 -c pass` for start-up, a direct signal to
the same receiver for forwarding. It installs nothing; it needs a C compiler
(cc) for the receiver and says so when there is none.
"""

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

HERE = Path(__file__).resolve().parent
GRACESHELL = [sys.executable, "-m", "graceshell", "run", "--platform", "none", "--log-format", "json"]


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"median": statistics.median(ordered), "p90": at(0.90), "p99": at(0.99), "n": len(ordered)}


def build_receiver(workdir: Path) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("benchmarks: needs a C compiler (cc) to build the signal receiver")
    out = workdir / "receiver"
    subprocess.run([cc, "-O2", "-o", str(out), str(HERE / "receiver.c")], check=True)
    return str(out)


def wall_time(argv: list[str], trials: int) -> dict[str, float]:
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        subprocess.run(argv, stderr=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return percentiles(times)


class Receiver:
    """The receiver, bare or under graceshell, with its output on a pipe."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        self.out = self.proc.stdout
        word, pid = self.out.readline().split()
        assert word == b"ready"
        self.worker_pid = int(pid)

    def next_signal(self) -> tuple[int, int]:
        signum, ns = self.out.readline().split()
        return int(signum), int(ns)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL) if self.worker_pid == self.proc.pid else None
            self.proc.kill()
            self.proc.wait()
        try:
            os.kill(self.worker_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def forwarding_latency(receiver: str, trials: int, wrapped: bool) -> dict[str, float]:
    """SIGUSR1 sent to the wrapper (or the receiver) -> receiver's handler entered, in ms."""
    rec = Receiver((GRACESHELL + ["--", receiver]) if wrapped else [receiver])
    try:
        time.sleep(0.2)  # let graceshell finish its start-up
        latencies = []
        for _ in range(trials):
            sent = time.monotonic_ns()
            os.kill(rec.proc.pid, signal.SIGUSR1)
            signum, got = rec.next_signal()
            assert signum == signal.SIGUSR1
            latencies.append((got - sent) / 1e6)
            time.sleep(0.002)
        return percentiles(latencies)
    finally:
        rec.close()


def ladder_accuracy(receiver: str, trials: int, step: float, budget: float) -> dict[str, dict[str, float]]:
    """Error of a ladder step and of the final KILL against their offsets, in ms."""
    step_errors, kill_errors = [], []
    for _ in range(trials):
        rec = Receiver(GRACESHELL + ["--budget", f"{budget}s", "--ladder", f"USR2@{step}s", "--", receiver])
        try:
            pidfd = os.pidfd_open(rec.worker_pid)
            time.sleep(0.1)
            sent = time.monotonic_ns()
            os.kill(rec.proc.pid, signal.SIGTERM)
            assert rec.next_signal()[0] == signal.SIGTERM  # the receiver ignores it
            signum, got = rec.next_signal()
            assert signum == signal.SIGUSR2
            step_errors.append((got - sent) / 1e6 - step * 1000)
            select.select([pidfd], [], [], budget + 5)
            died = time.monotonic_ns()
            kill_errors.append((died - sent) / 1e6 - budget * 1000)
            os.close(pidfd)
            rec.proc.wait(10)
        finally:
            rec.close()
    return {"step_error_ms": percentiles(step_errors), "kill_error_ms": percentiles(kill_errors)}


def idle_cost(seconds: float) -> dict[str, float]:
    """CPU seconds and voluntary context switches of graceshell over an idle worker."""
    import psutil

    proc = subprocess.Popen(GRACESHELL + ["--", "sleep", str(seconds + 30)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        me = psutil.Process(proc.pid)
        cpu0, ctx0 = sum(me.cpu_times()[:2]), me.num_ctx_switches().voluntary
        time.sleep(seconds)
        cpu1, ctx1 = sum(me.cpu_times()[:2]), me.num_ctx_switches().voluntary
        rss_mb = me.memory_info().rss / 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    return {"seconds": seconds, "cpu_s": round(cpu1 - cpu0, 4), "wakeups": ctx1 - ctx0, "rss_mb": round(rss_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    n = 5 if args.quick else 1
    results: dict[str, object] = {"python": sys.version.split()[0], "cores": os.cpu_count(),
                                  "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        receiver = build_receiver(Path(tmp))
        print("start-up (ms, wall time of the whole command)")
        for label, argv in (("true", ["true"]),
                            ("python3 -c pass", [sys.executable, "-c", "pass"]),
                            ("graceshell run -- true", GRACESHELL + ["--", "true"])):
            figures = wall_time(argv, 40 // n)
            results[f"startup {label}"] = figures
            print(f"  {label:<26} median {figures['median']:7.2f}  p90 {figures['p90']:7.2f}")
        print("forwarding latency (ms, kill(2) -> handler entered in the worker)")
        for label, wrapped in (("direct (kernel floor)", False), ("via graceshell", True)):
            figures = forwarding_latency(receiver, 500 // n, wrapped)
            results[f"forward {label}"] = figures
            print(f"  {label:<26} median {figures['median']:7.3f}  p90 {figures['p90']:7.3f}  p99 {figures['p99']:7.3f}")
        print("ladder accuracy (ms late against the configured offset; step at 0.25 s, KILL at 0.5 s)")
        accuracy = ladder_accuracy(receiver, 30 // n, 0.25, 0.5)
        results["ladder"] = accuracy
        for label, figures in accuracy.items():
            print(f"  {label:<26} median {figures['median']:7.2f}  p90 {figures['p90']:7.2f}  p99 {figures['p99']:7.2f}")
        idle = idle_cost(10.0 / n * (3 if not args.quick else 1))
        results["idle"] = idle
        print(f"idle: {idle['cpu_s']} CPU s and {idle['wakeups']} wake-ups in {idle['seconds']} s; RSS {idle['rss_mb']} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
