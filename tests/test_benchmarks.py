"""The benchmark suite's smoke run: it must run and print its figures.

No thresholds are asserted here (timings on a shared machine are not
behaviour); the figures are printed at the end of the test run.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE_OUTPUT: list[str] = []  # printed by conftest's terminal summary


def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    SMOKE_OUTPUT.append(proc.stdout)
    figures = json.loads(out.read_text())
    for section in ("start-up, wall ms", "idle cost and peak RSS", "tree kill (1000 processes, 100 escaped with setsid)",
                    "zombie storm", "start output throughput"):
        assert section in figures
    assert figures["tree kill (1000 processes, 100 escaped with setsid)"]["graceshell"]["survivors"] == 0
    assert figures["zombie storm"]["graceshell"]["zombies_left"] == 0
    assert figures["imports on the start path (python -X importtime)"]["structlog imported after the spawn"] is True
    throughput = figures["start output throughput"]["graceshell start"]
    assert throughput["lines_whole_in_order"] == throughput["of"]
    # The price of a job: a few no-op tasks drained bare and under graceshell, so the code cannot rot.
    jobs = figures["the price of a job: no-op tasks drained, bare and under graceshell"]
    assert jobs["jobs.track, us per job"] > 0
    if "skipped" not in jobs:  # no redis-server on this machine
        for model in ("celery solo", "rq SimpleWorker"):
            assert jobs[model]["ratio"] > 0, jobs[model]
