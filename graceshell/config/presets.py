"""Worker presets: how each job framework wants to be stopped, as data.

A preset is a ladder whose offsets are relative to the budget, plus the
signals to remap and environment it sets. In that environment
`{integrations}` stands for the installed graceshell/integrations directory
(the Ruby presets load a file from it through RUBYOPT). Each row says why, with the place
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

from graceshell.config.ladder import StepSpec
from graceshell.config.settings import Origin, Setting


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
    # rq 3.0 rq/worker/base.py: first TERM or INT = warm (finish the job); a
    # second one more than 1 s later = cold (horse killed, SystemExit). The
    # horse has its own process group, so the final kill must cover the tree.
    # `rq worker-pool` (rq/worker_pool.py) sends SIGINT to each worker at every
    # TERM it gets. RQ_WORKER_CLASS is read by `rq worker` and `rq
    # worker-pool` (rq/cli/helpers.py) unless -w is given; check says what
    # to do then. Its cold shutdown (horse killed, job requeued) took
    # 0.13-1.3 s in the end-to-end tests on a loaded machine, a pool's up to
    # 1.9 s (WorkerPool looks at its workers once a second).
    Preset("rq", (("TERM", "0s"), ("TERM", "budget-reserve")),
           {"RQ_WORKER_CLASS": "graceshell.integrations.rq.Worker"},
           "TERM finishes the current job; a second TERM at the cold reserve before the end is the cold "
           "shutdown, which graceshell's RQ worker class (set by the preset) turns into a requeue of the job",
           cold_floor=2.0, cold_why="RQ's cold shutdown, 0.15-1.6s measured, with margin"),
    # sidekiq 6.4 lib/sidekiq/cli.rb, launcher.rb, manager.rb: TERM = quiet,
    # wait up to -t (default 25 s) for running jobs, then bulk_requeue the rest
    # and wait up to 3 s for their `ensure` blocks. graceshell's Ruby file
    # (RUBYOPT) fits that timeout to the budget and requeues at the cold step.
    # Its 3 s is those 3 s (ENSURE_GRACE in ruby/sidekiq.rb; check reads it here).
    Preset("sidekiq", (("TERM", "0s"), ("TERM", "budget-3s")),
           {"RUBYOPT": "-r{integrations}/ruby/sidekiq.rb"},
           "TERM stops fetching and lets running jobs finish; graceshell's Ruby file, loaded by the preset, "
           "sets Sidekiq's shutdown timeout to end 3 s before the budget and, at the second TERM (the cold "
           "step), has Sidekiq push unfinished jobs back to Redis at once"),
    # dramatiq 2.2 dramatiq/cli.py: main() sighandler forwards every TERM (and
    # INT, as TERM) to each worker process; worker_process() termhandler: the
    # first TERM stops the worker threads and joins them for
    # --worker-shutdown-timeout (10 min), a second one is sys.exit(RET_KILLED).
    # Every message the process holds (running, prefetched, delayed) stays
    # unacked: RedisBroker gives it back once the process's heartbeat is 60 s
    # old and a live worker runs maintenance on its queue (1 in 1,000 of its
    # commands), unless graceshell's middleware requeues it at the cold step.
    # Its cold shutdown (every message held requeued, worker processes gone)
    # took 0.1-1.1 s in the end-to-end tests: the main process looks for its
    # workers' exit once a second (main(), proc.join(timeout=1)).
    # No environment: Dramatiq reads its modules (and so graceshell's
    # middleware module) from the command line only.
    Preset("dramatiq", (("TERM", "0s"), ("TERM", "budget-reserve")), {},
           "TERM lets the running actors finish; a second TERM at the cold reserve before the end makes each "
           "worker process exit at once, and graceshell's middleware puts every message it holds back first",
           cold_floor=2.0, cold_why="Dramatiq's cold shutdown, 0.1-1.1s in the end-to-end tests, with margin"),
    # huey 3.5 huey/consumer.py Consumer.__init__ and _handle_signal: the
    # graceful signal is INT (huey_consumer -g), TERM is immediate (the
    # consumer exits, thread workers die with it, SIGNAL_INTERRUPTED is sent
    # for the tasks in flight); stop(graceful=True) joins the workers for
    # -t (default: forever). Process workers (-k process) ignore INT and turn
    # TERM into KeyboardInterrupt in the task (ProcessEnvironment.init_child).
    # No environment: huey_consumer takes its options from the command line.
    Preset("huey", (("INT", "0s"), ("TERM", "budget-reserve")), {},
           "INT is Huey's graceful shutdown; TERM at the cold reserve before the end is its immediate one, "
           "after which graceshell's integration requeues the interrupted tasks",
           cold_floor=2.0, cold_why="Huey's cold shutdown, under 1s in the end-to-end tests, with margin"),
    # arq 0.28 arq/worker.py Worker.__init__, handle_sig and
    # handle_sig_wait_for_completion: TERM or INT cancels running jobs at
    # once, which are retried (retry_jobs, up to max_tries); with
    # job_completion_wait the first signal stops picking jobs and waits that
    # long before cancelling, and a repeated signal only starts another wait.
    # No environment: arq reads its settings class only (arq/cli.py).
    Preset("arq", (("TERM", "0s"), ("TERM", "budget-reserve")), {},
           "TERM stops picking jobs (with job_completion_wait, or under graceshell's worker class); a second "
           "TERM at the cold reserve before the end cancels the running jobs, which arq retries",
           cold_floor=2.0, cold_why="arq's cold shutdown, under 1s in the end-to-end tests, with margin"),
    # resque 3.0.0 lib/resque/worker.rb (verified against source, not run):
    # QUIT = shutdown (l.430), which sets @shutdown (l.466-471) so the work
    # loop ends after the current job (l.265); TERM = shutdown! (l.426,
    # without GRACEFUL_TERM, l.160), which with TERM_CHILD (l.159) runs
    # new_kill_child (l.475-479): TERM to the child (l.579), whose handler
    # raises TermException (l.445-451, installed at fork l.950), and KILL
    # after RESQUE_TERM_TIMEOUT, default 4 s (l.158, l.581-585).
    Preset("resque", (("QUIT", "0s"), ("TERM", "budget-6s")), {"TERM_CHILD": "1"},
           "QUIT finishes the current job; TERM 6 s before the end gives the job a TermException and "
           "Resque 4 s to kill its child"),
    # delayed_job 4.1 lib/delayed/worker.rb: INT and TERM = exit after the
    # job; a killed worker leaves its job locked until max_run_time.
    # graceshell's Ruby file (RUBYOPT) keeps the warm phase warm whatever
    # raise_signal_exceptions says, aborts the job at the cold TERM and puts
    # it back unlocked, due now, with no attempt used.
    Preset("delayed_job", (("INT", "0s"), ("TERM", "budget-3s")),
           {"RUBYOPT": "-r{integrations}/ruby/delayed_job.rb"},
           "INT finishes the current job; TERM 3 s before the end aborts it, and graceshell's Ruby file, loaded "
           "by the preset, puts it back unlocked and due now with no attempt used (it also keeps the "
           "platform's own TERM from aborting a job earlier, whatever raise_signal_exceptions says)"),
    # gunicorn 26 gunicorn/arbiter.py: TERM = graceful (graceful_timeout),
    # INT/QUIT = quick; INT during a graceful stop switches to quick.
    Preset("gunicorn", (("TERM", "0s"), ("INT", "budget-3s")), {},
           "TERM drains requests; INT 3 s before the end switches to Gunicorn's quick shutdown"),
    # uvicorn 0.35 uvicorn/server.py handle_exit: TERM or INT = graceful;
    # only a SIGINT after that forces exit (a second TERM does not).
    Preset("uvicorn", (("TERM", "0s"), ("INT", "budget-3s")), {},
           "TERM drains connections; INT 3 s before the end is the only signal that forces Uvicorn out"),
)}


def _package_paths(value: str) -> str:
    """`{integrations}` in a preset's environment: where graceshell's
    integrations are installed (the Ruby files are package data)."""
    if "{integrations}" not in value:
        return value
    import os

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return value.replace("{integrations}", os.path.join(package, "integrations"))


def ruby_integration(name: str) -> str | None:
    """The path of the Ruby file preset `name` loads through RUBYOPT, as
    installed; None for a preset without one."""
    preset = PRESETS.get(name)
    option = preset.env.get("RUBYOPT") if preset is not None and preset.env else None
    return _package_paths(option)[len("-r"):] if option and option.startswith("-r") else None


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
        layer["env"] = Setting({key: _package_paths(value) for key, value in preset.env.items()}, origin)
    if preset.cold_floor is not None:
        layer["cold_floor"] = Setting(preset.cold_floor, Origin(f"preset {name}: {preset.cold_why}"
                                                                if preset.cold_why else f"preset {name}"))
    return layer
