"""A small job worker for the demo: processes fake jobs, stops warmly on TERM or INT.

It behaves like a well-mannered framework worker: on SIGTERM (or a Ctrl-C's
SIGINT) it finishes the job in hand and exits 0. Each job is recorded in
graceshell's job ledger (graceshell logs `graceshell.busy` when work starts
and stops, and names the jobs a kill cut short). It also starts a helper
process that never exits on its own, the kind of leftover graceshell cleans
up after the worker is gone.

    python3 demo_worker.py                    # 1.5 s jobs: a stop lets the job in hand finish
    python3 demo_worker.py --job-seconds 60   # a job too long for any budget: graceshell's KILL ends it
    python3 demo_worker.py --ready-file F     # F appears once a stop would find a job in hand
"""

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import time

try:
    from graceshell import jobs
except ImportError:  # run without graceshell installed: no ledger
    jobs = None

# The helper ignores INT so that a Ctrl-C in a terminal, which reaches every
# process of the foreground group, leaves it to graceshell's clean-up.
HELPER = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(3600)"

stopping = False


def request_stop(signum: int, frame: object) -> None:
    global stopping
    stopping = True
    print(f"[worker {os.getpid()}] got SIG{signal.Signals(signum).name[3:]}: finishing the current job",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="A demo job worker that stops warmly on TERM or INT.")
    parser.add_argument("--job-seconds", type=float, default=1.5, help="how long each job takes (default 1.5)")
    parser.add_argument("--ready-file", type=pathlib.Path, help="created when the first job has started")
    args = parser.parse_args()
    seconds = args.job_seconds
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)  # a Ctrl-C, or `graceshell start`'s stop after one
    # A helper that outlives the worker unless someone cleans up.
    subprocess.Popen([sys.executable, "-c", HELPER])
    job = 0
    while not stopping:
        job += 1
        print(f"[worker {os.getpid()}] job {job}: started ({seconds:g} s)", flush=True)
        if args.ready_file is not None and job == 1:
            args.ready_file.touch()
        if jobs is not None:
            with jobs.track(f"demo-{job}", "demo.work"):
                time.sleep(seconds)  # the work; a stop request waits for it to finish
        else:
            time.sleep(seconds)
        print(f"[worker {os.getpid()}] job {job}: done", flush=True)
    print(f"[worker {os.getpid()}] stopped cleanly after {job} jobs", flush=True)


if __name__ == "__main__":
    main()
