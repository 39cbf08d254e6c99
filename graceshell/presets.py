"""Worker presets: how each job framework wants to be stopped, as data.

A preset is a ladder whose offsets are relative to the budget, plus the
signals to remap and environment it sets. Each row says why, with the place
in the framework's own source where the behaviour is defined.

A cold step written `budget-reserve` moves with the budget: it comes
`cold_reserve(budget, floor)` before the final KILL (see ladder.py), where
the row's `cold_floor` is how long the framework's cold shutdown needs,
measured, with a margin. A long budget keeps 5 s for it; a short one keeps
only what the framework needs, so the warm phase, which is what lets jobs
finish, does not shrink to nothing on a 5 s or 10 s platform.
"""

from __future__ import annotations

from collections import namedtuple

from graceshell.ladder import StepSpec
from graceshell.settings import Origin, Setting


class Preset(namedtuple("Preset", "name ladder env why cold_floor cold_why", defaults=(None, ""))):
    __slots__ = ()
    name: str
    ladder: tuple[tuple[str, str], ...]  # (signal, offset) pairs; offsets may be budget-relative
    env: dict[str, str]
    why: str
    # Seconds the framework's cold shutdown needs before the final KILL
    # (measured, plus a margin), for steps at `budget-reserve`; None: the
    # built-in DEFAULT_COLD_FLOOR. Unused by a ladder without such a step.
    cold_floor: float | None
    cold_why: str  # where cold_floor comes from, shown by `check`


# Read from each framework's source (versions noted); the budget is
# graceshell's, which already leaves a margin before the platform's SIGKILL.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("generic", (), {},
           "the stop signal as received at 0 s; KILL of the whole tree at the budget"),
    # celery 5.6 celery/apps/worker.py: TERM = warm shutdown (repeats only
    # reprint), QUIT = cold: cancel_active_requests, acks_late tasks are
    # redelivered by the broker, others are marked for retry.
    # Its cold shutdown took 1.2 s from QUIT to exit at rest and up to 2.6 s
    # on a loaded 2-core machine in the end-to-end tests (two prefork tasks
    # cancelled, restored to Redis, connection closed); billiard alone waits
    # 0.5 s for the pool's input queues to go quiet (_help_stuff_finish).
    Preset("celery", (("TERM", "0s"), ("QUIT", "budget-reserve")), {},
           "TERM lets running tasks finish; QUIT at the cold reserve before the end cancels the rest so the "
           "broker gets them back (acks_late) before the kill",
           cold_floor=3.0, cold_why="Celery's cold shutdown, 1.2-2.6s measured, with margin"),
    # rq 2.10 rq/worker/base.py: first TERM = warm (finish the job); a second
    # TERM more than 1 s later = cold (horse killed, SystemExit). The horse
    # has its own process group, so the final kill must cover the tree.
    # RQ_WORKER_CLASS is read by `rq worker` (rq/cli/helpers.py) unless -w is given.
    # Its cold shutdown (horse killed, job requeued) took 0.15-0.6 s in the
    # end-to-end tests, and up to 1 s more on a loaded machine: on the way
    # out RQ joins its pubsub thread with a 1 s timeout (Worker.unsubscribe).
    Preset("rq", (("TERM", "0s"), ("TERM", "budget-reserve")),
           {"RQ_WORKER_CLASS": "graceshell.integrations.rq.Worker"},
           "TERM finishes the current job; a second TERM at the cold reserve before the end is the cold "
           "shutdown, which graceshell's RQ worker class (set by the preset) turns into a requeue of the job",
           cold_floor=2.0, cold_why="RQ's cold shutdown, 0.15-1.6s measured, with margin"),
    # sidekiq 8.1 lib/sidekiq/cli.rb: TSTP = quiet, TERM = stop within -t
    # (default 25 s), then bulk_requeue of unfinished jobs plus 3 s for ensure.
    Preset("sidekiq", (("TSTP", "0s"), ("TERM", "0s")), {},
           "TSTP stops fetching, TERM shuts down within Sidekiq's -t, which must end 8 s before the budget "
           "so Sidekiq can push unfinished jobs back itself"),
    # resque 3.0 lib/resque/worker.rb: QUIT = finish the job; TERM =
    # shutdown!, which with TERM_CHILD sends the child TERM (TermException)
    # and SIGKILL after RESQUE_TERM_TIMEOUT (4 s).
    Preset("resque", (("QUIT", "0s"), ("TERM", "budget-6s")), {"TERM_CHILD": "1"},
           "QUIT finishes the current job; TERM 6 s before the end gives the job a TermException and "
           "Resque 4 s to kill its child"),
    # delayed_job 4.2 lib/delayed/worker.rb: INT and TERM = exit after the
    # job; with raise_signal_exceptions = :term, TERM aborts and reschedules.
    Preset("delayed_job", (("INT", "0s"), ("TERM", "budget-5s")), {},
           "INT finishes the current job; TERM 5 s before the end aborts and reschedules it when "
           "raise_signal_exceptions is :term (otherwise it is harmless)"),
    # gunicorn 26 gunicorn/arbiter.py: TERM = graceful (graceful_timeout),
    # INT/QUIT = quick; INT during a graceful stop switches to quick.
    Preset("gunicorn", (("TERM", "0s"), ("INT", "budget-3s")), {},
           "TERM drains requests; INT 3 s before the end switches to Gunicorn's quick shutdown"),
    # uvicorn 0.35 uvicorn/server.py handle_exit: TERM or INT = graceful;
    # only a SIGINT after that forces exit (a second TERM does not).
    Preset("uvicorn", (("TERM", "0s"), ("INT", "budget-3s")), {},
           "TERM drains connections; INT 3 s before the end is the only signal that forces Uvicorn out"),
)}


def preset_layer(name: str) -> dict[str, Setting]:
    """The settings a preset contributes, as the weakest configured layer."""
    preset = PRESETS[name]
    origin = Origin(f"preset {name}")
    layer = {"preset": Setting(name, origin)}
    if preset.ladder:
        specs = [StepSpec(at, signal) for signal, at in preset.ladder]
        layer["ladder"] = Setting(specs, Origin(f"preset {name}", [f"preset {name} step {i + 1}"
                                                                    for i in range(len(specs))]))
    if preset.env:
        layer["env"] = Setting(dict(preset.env), origin)
    if preset.cold_floor is not None:
        layer["cold_floor"] = Setting(preset.cold_floor, Origin(f"preset {name}: {preset.cold_why}"
                                                                if preset.cold_why else f"preset {name}"))
    return layer
