"""A small job worker for the demo: processes fake jobs, stops warmly on TERM.

It behaves like a well-mannered framework worker: on SIGTERM it finishes the
job in hand and exits 0. Each job is recorded in graceshell's job ledger
(graceshell logs `graceshell.busy` when work starts and stops). It also
starts a helper process that never exits on its own, the kind of leftover
graceshell cleans up after the worker is gone.
"""

import os
import signal
import subprocess
import sys
import time

try:
    from graceshell import jobs
except ImportError:  # run without graceshell installed: no ledger
    jobs = None

stopping = False


def request_stop(signum: int, frame: object) -> None:
    global stopping
    stopping = True
    print(f"[worker {os.getpid()}] got SIG{signal.Signals(signum).name[3:]}: finishing the current job",
          flush=True)


def main() -> None:
    signal.signal(signal.SIGTERM, request_stop)
    # A helper that outlives the worker unless someone cleans up.
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    job = 0
    while not stopping:
        job += 1
        print(f"[worker {os.getpid()}] job {job}: started", flush=True)
        if jobs is not None:
            with jobs.track(f"demo-{job}", "demo.work"):
                time.sleep(1.5)  # the work; a stop request waits for it to finish
        else:
            time.sleep(1.5)
        print(f"[worker {os.getpid()}] job {job}: done", flush=True)
    print(f"[worker {os.getpid()}] stopped cleanly after {job} jobs", flush=True)


if __name__ == "__main__":
    main()
