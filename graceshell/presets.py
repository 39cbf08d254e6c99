"""Worker presets: how each job framework wants to be stopped, as data.

A preset is a ladder whose offsets are relative to the budget, plus the
signals to remap and environment it sets. Each row says why, with the place
in the framework's own source where the behaviour is defined.
"""

from __future__ import annotations

from collections import namedtuple

from graceshell.ladder import StepSpec
from graceshell.settings import Origin, Setting


class Preset(namedtuple("Preset", "name ladder env why")):
    __slots__ = ()
    name: str
    ladder: tuple[tuple[str, str], ...]  # (signal, offset) pairs; offsets may be budget-relative
    env: dict[str, str]
    why: str


# Read from each framework's source (versions noted); the budget is
# graceshell's, which already leaves a margin before the platform's SIGKILL.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("generic", (), {},
           "the stop signal as received at 0 s; KILL of the whole tree at the budget"),
    # celery 5.6 celery/apps/worker.py: TERM = warm shutdown (repeats only
    # reprint), QUIT = cold: cancel_active_requests, acks_late tasks are
    # redelivered by the broker, others are marked for retry.
    Preset("celery", (("TERM", "0s"), ("QUIT", "budget-5s")), {},
           "TERM lets running tasks finish; QUIT 5 s before the end cancels the rest so the broker "
           "gets them back (acks_late) before the kill"),
    # rq 2.10 rq/worker/base.py: first TERM = warm (finish the job); a second
    # TERM more than 1 s later = cold (horse killed, SystemExit). The horse
    # has its own process group, so the final kill must cover the tree.
    # RQ_WORKER_CLASS is read by `rq worker` (rq/cli/helpers.py) unless -w is given.
    Preset("rq", (("TERM", "0s"), ("TERM", "budget-5s")),
           {"RQ_WORKER_CLASS": "graceshell.integrations.rq.Worker"},
           "TERM finishes the current job; a second TERM 5 s before the end is the cold shutdown, which "
           "graceshell's RQ worker class (set by the preset) turns into a requeue of the job"),
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
    return layer
