"""arq under graceshell: a worker that lets running jobs finish until
graceshell escalates, then cancels them for arq to retry, and records every
job in the job ledger.

No code to change: run graceshell's drop-in for the `arq` command, which
takes the same worker settings (and --burst, --check, -v,
--custom-log-dict; not --watch, a development reloader):

    graceshell run --preset arq -- python -m graceshell.integrations.arq app.WorkerSettings

arq's command line builds its own Worker from the settings class and has no
option for another class, so this is the way in without code. Where the
worker is started in code, use this module's `Worker` in place of
`arq.worker.Worker` (one import).

Read from arq 0.28 (arq/worker.py Worker.__init__, handle_sig,
handle_sig_wait_for_completion, start_jobs, run_job, finish_job):

- arq's TERM (or INT) cancels every running job at once, and arq retries it
  (retry_jobs, up to max_tries): no job is lost, but none finishes either.
  With `job_completion_wait` set, the first signal stops picking jobs and
  waits that long before cancelling; a second signal only starts another
  wait, so nothing can make arq stop sooner.
- Here, under graceshell, the first stop signal stops picking jobs and
  waits for the running ones with no time limit (graceshell's budget is
  the limit); repeats, such as the platform's broadcast beside graceshell's
  own signal, are ignored. Once graceshell has escalated (its shutdown
  notice says so) a signal is arq's cancel-and-retry. The cancelled jobs'
  ledger entries stay, marked `requeued`, so graceshell's report names
  them.
- arq counts a try when a run starts (run_job increments arq:retry:<id>;
  past max_tries, default 5, the job fails): a job cut short by the cold
  step gives its try back, so deploys never use up its tries.
- arq reads up to max_jobs job ids from the queue and starts them one by
  one, a round trip to Redis each; it checks for the stop only before the
  read. Under graceshell none of them starts after the stop.

arq runs jobs as asyncio tasks in one process: there are no child
processes to shield. Outside graceshell this Worker behaves exactly like
arq's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import signal
import time

from arq.constants import retry_key_prefix
from arq.worker import Worker as _ArqWorker

from graceshell import jobs, shutdown
from graceshell.logs import logger_from_environment
from graceshell.signals import signal_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from signal import Signals
    from typing import Any

# graceshell's own events from inside the worker (built once, in logs.py).
_log = functools.partial(logger_from_environment, "arq")


def _is_stop_under_graceshell(signum: int) -> bool:
    """A TERM or INT from the platform or graceshell, which this worker handles."""
    return shutdown.under_graceshell() and signum in (signal.SIGTERM, signal.SIGINT)


class Worker(_ArqWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._graceshell_warm = False
        self.functions = {name: dataclasses.replace(function, coroutine=self._tracked(function))
                          for name, function in self.functions.items()}

    def _tracked(self, function: Any) -> Any:
        """The job's coroutine, in the ledger while it runs; kept there when
        graceshell's cold step cancels it."""
        coroutine = function.coroutine

        @functools.wraps(coroutine)
        async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            job_id = ctx.get("job_id")
            tracker = jobs.track_deferred(job_id, function.name, queue=self.queue_name, job_try=ctx.get("job_try"))
            tracker.__enter__()
            cancelled_by_cold_step = False
            try:
                return await coroutine(ctx, *args, **kwargs)
            except asyncio.CancelledError:
                cancelled_by_cold_step = shutdown.escalated()
                if cancelled_by_cold_step:  # the entry stays: the report names the job
                    if self.retry_jobs:
                        await self._give_back_try(str(job_id))
                    jobs.update(str(job_id), interrupted=True, requeued=bool(self.retry_jobs))
                raise
            finally:
                if not cancelled_by_cold_step:
                    tracker.__exit__(None, None, None)

        return run

    async def _give_back_try(self, job_id: str) -> None:
        """arq counts a run as a try when it starts it (run_job increments
        arq:retry:<id>, and max_tries fails the job past it): a run cut short
        by graceshell's cold step gives its try back."""
        try:
            await self.pool.decr(retry_key_prefix + job_id)
        except Exception as exc:  # noqa: BLE001 - the job is still retried; it has used a try
            _log().warning("graceshell.arq.try_not_given_back", job=job_id, error=str(exc))

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs, one job at a time, stopping at the stop: arq checks
        allow_pick_jobs only before it reads the queue, and would go on
        starting the jobs it had read (each after a round trip to Redis)."""
        if not shutdown.under_graceshell():
            return await super().start_jobs(job_ids)
        for job_id in job_ids:
            if not self.allow_pick_jobs or self.job_counter >= self.max_jobs:
                return None
            await super().start_jobs([job_id])
        return None

    def handle_sig(self, signum: Signals) -> None:
        if not _is_stop_under_graceshell(signum):
            return super().handle_sig(signum)  # also arq's own stops: close() and --watch send USR1
        return self._stop_under_graceshell(signum)

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        if not _is_stop_under_graceshell(signum):
            return super().handle_sig_wait_for_completion(signum)
        return self._stop_under_graceshell(signum)

    def _stop_under_graceshell(self, signum: Signals) -> None:
        name = signal_name(signum)
        if shutdown.escalated():
            running = [job_id for job_id, task in self.tasks.items() if not task.done()]
            _log().warning("graceshell.arq.cold_shutdown", signal=name, jobs=running,
                           requeued=bool(self.retry_jobs))
            super().handle_sig(signum)  # cancel the running jobs; arq retries them
        elif not self._graceshell_warm:
            self._graceshell_warm = True
            self._job_completion_wait = None  # no limit of arq's: graceshell's cold step ends the wait
            # (arq calls this from its event loop, not from a signal handler: it may log)
            _log().info("graceshell.arq.warm_shutdown", signal=name, stopped_at=time.time(),
                        jobs=[job_id for job_id, task in self.tasks.items() if not task.done()])
            super().handle_sig_wait_for_completion(signum)
        else:  # the platform's broadcast beside graceshell's own signal
            _log().info("graceshell.arq.signal_ignored", signal=name,
                        reason="graceshell has not escalated: running jobs go on")


def main() -> None:
    """The `arq` command, running this module's Worker."""
    import logging.config
    import os
    import sys

    import click
    from arq.logs import default_log_config
    from arq.utils import import_string
    from arq.worker import check_health, get_kwargs

    @click.command("python -m graceshell.integrations.arq")
    @click.argument("worker-settings", type=str, required=True)
    @click.option("--burst/--no-burst", default=None, help="Batch mode: exit once no jobs are found in any queue.")
    @click.option("--check", is_flag=True, help="Health Check: run a health check and exit.")
    @click.option("-v", "--verbose", is_flag=True, help="Enable verbose output.")
    @click.option("--custom-log-dict", type=str, help="Import path for a dictionary in logdict form.")
    def command(worker_settings: str, burst: bool | None, check: bool, verbose: bool,
                custom_log_dict: str | None) -> None:
        """arq's worker, with graceshell's integration."""
        sys.path.append(os.getcwd())
        settings = import_string(worker_settings)
        logging.config.dictConfig(import_string(custom_log_dict) if custom_log_dict else default_log_config(verbose))
        if check:
            sys.exit(check_health(settings))
        Worker(**{**get_kwargs(settings), **({} if burst is None else {"burst": burst})}).run()

    command()


if __name__ == "__main__":
    main()
