#!/usr/bin/env python3
"""The survival matrix: every framework in every execution model its users
deploy, stopped the way platforms stop it, bare and under graceshell, on a
real broker. Prints the tables the docs show.

    python tools/survival_matrix.py                  # run the matrix, print the tables
    python tools/survival_matrix.py -k celery        # one framework (pytest's -k)
    python tools/survival_matrix.py --write docs/survival.md
                                                     # and replace the tables in that page

The matrix is the end-to-end survival tests themselves (tests/test_survival*.py
and tests/test_ruby_survival.py): each cell is a test that asserts graceshell
does no worse than bare, and writes its row. This script runs them, reads the
rows back, and adds the "usable grace" table: per platform default, the
longest job that still completes, from `graceshell check` for each preset.

Needs what `make test` needs (redis-server, Ruby with Sidekiq and
delayed_job); the tests start their own broker on a loopback port.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*survival*.py"))
EXPORT_ENV = "GRACESHELL_SURVIVAL_EXPORT"  # tests/conftest.py writes the rows there
BEGIN, END = "<!-- survival-matrix:begin -->", "<!-- survival-matrix:end -->"

# What a job's fate is worth to its owner, best first. A job that completed,
# and a job that never started and is still safe in its queue: the rule is
# that after the stop the worker starts no new job, so a waiting job a bare
# worker happened to start and finish was a risk taken, not a better fate.
# Then a job given back to its queue at once (its work so far lost), one that
# comes back only after a timeout, and one that is gone.
FATE_RANK = {"completed": 3, "queued": 3, "requeued": 2, "rescheduled": 2}
DELAYED = ("unacked", "stuck", "retry", "scheduled", "locked")
ROW_KEYS = ("framework", "model", "broadcast", "setup", "platform_sigkill")
STOP_MODELS = {"all": "every process", "group": "PID 1 / group"}

# Platform defaults for the usable-grace table: (platform, shown as).
PLATFORM_DEFAULTS = [("heroku", "Heroku 30 s"), ("kubernetes", "Kubernetes 30 s"),
                     ("docker", "Docker 10 s"), ("cloudrun", "Cloud Run 10 s"), ("fly", "Fly 5 s")]
PRESETS = ["celery", "rq", "dramatiq", "huey", "arq", "sidekiq", "delayed_job"]


def fate_rank(fate: str) -> int:
    """The worst part of `fate`: "completed", "queued (never started)", or a
    count of each for a group of jobs ("5 queued, 9 unacked (...)")."""
    return min(_part_rank(part.strip()) for part in fate.split(", "))


def _part_rank(part: str) -> int:
    words = part.split(" ")
    if len(words) > 1 and words[0].isdigit():  # "9 unacked ...": a count of jobs
        words = words[1:]
    part = " ".join(words)
    first = words[0].strip(",:")
    if first in FATE_RANK:
        return FATE_RANK[first]
    return 1 if part.startswith(DELAYED) else 0


def run_matrix(pytest_args: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Run the survival tests; returns their rows and pytest's exit status."""
    with tempfile.TemporaryDirectory() as scratch:
        export = Path(scratch) / "rows.json"
        env = {**os.environ, EXPORT_ENV: str(export)}
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                  *TESTS, *pytest_args], cwd=ROOT, env=env, stdout=sys.stderr)
        rows = json.loads(export.read_text()) if export.exists() else []
    return rows, status


def cell_key(row: dict[str, Any]) -> tuple[str, ...]:
    """What makes two rows the same cell but for bare or graceshell."""
    return (row["framework"], row["model"], row["broadcast"], str(row.get("platform timeout", "")))


def fates_of(row: dict[str, Any]) -> dict[str, str]:
    extras = {"platform timeout", "cold shutdown s", "graceshell's KILL"}
    return {k: str(v) for k, v in row.items() if k not in ROW_KEYS and k not in extras}


def shown(fates: dict[str, str], row: dict[str, Any]) -> str:
    text = ", ".join(f"{job}: {fate}" for job, fate in fates.items())
    return text + (" (platform SIGKILL)" if row["platform_sigkill"] else "")


def verdict(bare: dict[str, str] | None, wrapped: dict[str, str]) -> str:
    if bare is None:
        return "no bare run"
    worse = [job for job, fate in wrapped.items() if job in bare and fate_rank(fate) < fate_rank(bare[job])]
    if worse:
        return "**WORSE**: " + ", ".join(worse)
    better = [job for job, fate in wrapped.items() if job in bare and fate_rank(fate) > fate_rank(bare[job])]
    return "better" if better else "same"


def matrix_table(rows: list[dict[str, Any]]) -> str:
    bare = {cell_key(r): r for r in rows if r["setup"] == "bare"}
    lines = ["| framework | model | stop reaches | platform timeout | bare | under graceshell | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    wrapped_rows = sorted((r for r in rows if r["setup"] != "bare"), key=lambda r: cell_key(r))
    for row in wrapped_rows:
        twin = bare.get(cell_key(row))
        twin_fates = fates_of(twin) if twin is not None else None
        lines.append(f"| {row['framework']} | {row['model']} | {STOP_MODELS.get(row['broadcast'], row['broadcast'])} "
                     f"| {row.get('platform timeout', '10s')} "
                     f"| {shown(twin_fates, twin) if twin is not None and twin_fates is not None else '—'} "
                     f"| {shown(fates_of(row), row)} | {verdict(twin_fates, fates_of(row))} |")
    return "\n".join(lines)


def usable_grace_table() -> str:
    """Per platform default and preset: from the stop to the cold step, the
    longest a job already running may still take and complete."""
    lines = ["| preset | " + " | ".join(shown for _, shown in PLATFORM_DEFAULTS) + " |",
             "| --- |" + " --- |" * len(PLATFORM_DEFAULTS)]
    for preset in PRESETS:
        cells = []
        for platform, _ in PLATFORM_DEFAULTS:
            out = subprocess.run([sys.executable, "-m", "graceshell", "check", "--json", "--platform", platform,
                                  "--preset", preset], cwd=ROOT, capture_output=True, text=True, check=True)
            (process,) = json.loads(out.stdout)["processes"]
            cells.append(f"{process['warm_phase_s']['value']:g} s")
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(rows: list[dict[str, Any]]) -> str:
    return "\n".join([BEGIN, "", matrix_table(rows), "", "Usable grace: the longest job that still completes "
                      "when it is running at the stop, by platform default (`graceshell check`'s warm phase).",
                      "", usable_grace_table(), "", END])


def write_into(page: Path, block: str) -> None:
    text = page.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{page}: no {BEGIN} ... {END} block to replace; add one where the tables go")
    page.write_text(text[:start] + block + text[end + len(END):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, metavar="PAGE", help="replace the tables' block in PAGE")
    parser.add_argument("--rows", type=Path, metavar="JSON", help="read rows a test run wrote, run nothing")
    parser.add_argument("-k", metavar="EXPR", help="only the cells whose test matches (pytest's -k)")
    args = parser.parse_args()
    if args.rows is not None:
        try:
            rows, status = json.loads(args.rows.read_text()), 0
        except (OSError, ValueError) as exc:
            print(f"survival_matrix: --rows {args.rows}: {exc}", file=sys.stderr)
            return 2
    else:
        rows, status = run_matrix(["-k", args.k] if args.k else [])
    if not rows:
        print("survival_matrix: the tests wrote no rows (see their output above)", file=sys.stderr)
        return status or 1
    block = render(rows)
    print(block)
    if args.write is not None:
        write_into(args.write, block)
    worse = sum("WORSE" in line for line in block.splitlines())
    if worse:
        print(f"survival_matrix: {worse} cell(s) worse under graceshell than bare: a release blocker",
              file=sys.stderr)
    return status or (1 if worse else 0)


if __name__ == "__main__":
    sys.exit(main())
