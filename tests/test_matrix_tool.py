"""tools/survival_matrix.py: how it judges a cell from the rows the survival tests write."""

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "survival_matrix.py"


def row(setup: str, broadcast: str = "all", sigkill: bool = False, **fates: str) -> dict:
    return {"framework": "celery", "model": "solo", "broadcast": broadcast, "setup": setup, **fates,
            "platform_sigkill": sigkill}


def judge(tmp_path: Path, rows: list[dict]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    return subprocess.run([sys.executable, str(TOOL), "--rows", str(tmp_path / "rows.json")],
                          capture_output=True, text=True, timeout=60)


def test_a_cell_worse_under_graceshell_fails_the_matrix(tmp_path):
    out = judge(tmp_path, [row("bare", j0="completed", j1="queued"),
                           row("graceshell + preset", j0="completed", j1="lost")])
    assert out.returncode == 1
    assert "**WORSE**: j1" in out.stdout
    assert "worse under graceshell than bare" in out.stderr


def test_cells_judged_per_stop_model_and_fate(tmp_path):
    out = judge(tmp_path, [
        row("bare", "all", short="lost", long="lost"),
        row("graceshell + preset", "all", short="completed", long="requeued"),
        row("bare", "group", sigkill=True, short="completed", long="unacked (back after 1 h)"),
        row("graceshell + preset", "group", short="completed", long="requeued"),
        row("graceshell + preset", "all", short="completed", long="queued (never started)") | {"model": "threads"},
        row("bare", "all", short="completed", long="requeued (cut short)") | {"model": "threads"},
    ])
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith(("| celery | solo", "| celery | threads"))]
    assert [line.rsplit("|", 2)[1].strip() for line in lines] == ["better", "better", "better"]
    assert "(platform SIGKILL)" in lines[1]
    assert "| celery | 20 s | 20 s | 5 s | 5 s | 2 s |" in out.stdout  # usable grace, from check


def test_write_replaces_only_the_marked_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Survival\n\nbefore\n<!-- survival-matrix:begin -->\nold\n<!-- survival-matrix:end -->\nafter\n")
    (tmp_path / "rows.json").write_text(json.dumps([row("graceshell + preset", j0="completed")]))
    subprocess.run([sys.executable, str(TOOL), "--rows", str(tmp_path / "rows.json"), "--write", str(page)],
                   check=True, capture_output=True, timeout=60)
    text = page.read_text()
    assert text.startswith("# Survival\n\nbefore\n<!-- survival-matrix:begin -->\n") and text.endswith("end -->\nafter\n")
    assert "old" not in text and "| celery | solo |" in text


def test_a_waiting_job_left_queued_is_not_worse_than_one_a_bare_worker_started(tmp_path):
    """After the stop the worker starts no new job: bare delayed_job's next
    worker took the waiting job and finished it by luck; left queued is the rule."""
    out = judge(tmp_path, [row("bare", short="completed", waiting="completed"),
                           row("graceshell + preset", short="completed", waiting="queued"),
                           row("bare", "group", backlog="14 queued"),
                           row("graceshell + preset", "group", backlog="5 queued, 9 unacked (back after 1 h)")])
    assert out.returncode == 1
    lines = [line for line in out.stdout.splitlines() if line.startswith("| celery | solo")]
    assert lines[0].endswith("| same |") and lines[1].endswith("| **WORSE**: backlog |"), lines
