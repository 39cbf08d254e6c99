"""Cloud interruption notices, end to end: a real graceshell reads a fake
metadata service per provider; a notice starts the stop with the budget
from its deadline, and no broken service can crash or delay graceshell."""

import json
import signal
import sys
import time

from conftest import WORKER, Run, wait_for
from fake_metadata import Fake, RawServer, refused_url
from graceshell.fleet.notices import POLL_INTERVAL
from fleet_helpers import free_port, get, metrics, serving


def notices(*args: str) -> list[str]:
    return ["--platform", "none", "--log-format", "json", *args]


def test_aws_notice_starts_the_stop_within_a_poll_with_the_budget_from_its_time(graceshell, worker):
    fake = Fake("aws", deadline_in=7.5)  # the VM goes 7.5 s after the notice
    port = free_port()
    try:
        run = graceshell(*notices("--budget", "20s", "--interruption-notices", "aws", "--metadata-url", fake.url,
                                  "--http", f"127.0.0.1:{port}"), *worker("--ignore", "TERM"))
        run.ready()
        assert serving(run, port)
        wait_for(lambda: [r for r in fake.requests if r[1] == "GET"], 10, "the first poll")
        fake.notice_at = time.time()  # just after a poll: the next one, a poll interval later, sees it
        wait_for(lambda: "graceshell.interruption\"" in run.stderr(), POLL_INTERVAL + 5, "the notice")
        event = run.event("graceshell.interruption")
        heard = time.time()
        assert heard - fake.notice_at < POLL_INTERVAL + 1.5  # within one poll interval (and the log's way out)
        assert event["provider"] == "aws" and event["deadline"] == int(fake.deadline())
        assert event["budget_cut"] is True and 1.0 < event["budget_s"] < 3.0  # the deadline's, not the plan's 20 s
        wait_for(lambda: "TERM" in run.names(run.ready()["pid"]), 5, "the worker's TERM")
        busy = json.loads(get(port, "/busy")[1])
        assert busy["stop_cause"] == "interruption:aws" and busy["interruption"]["provider"] == "aws"
        assert metrics(port)["graceshell_interruption_notices_total"][(("provider", "aws"),)] == 1
        run.kill(signal.SIGTERM)  # the platform's own stop, after its notice: a repeat
        assert run.wait(10) == 128 + signal.SIGKILL
        ignored = [e for e in run.events() if e["event"] == "graceshell.signal" and e["action"] == "ignored"]
        assert ignored and "interruption notice" in ignored[0]["reason"]
        escalation = run.event("graceshell.escalate")
        assert escalation["reason"] == "budget" and escalation["elapsed_s"] < event["budget_s"] + 0.5
        assert not [e for e in run.events() if e["event"] == "graceshell.escalate" and e["step"] != "final"]
        gets = [r for r in fake.requests if r[1] == "GET"]
        intervals = [b[0] - a[0] for a, b in zip(gets, gets[1:])]
        assert all(gap > POLL_INTERVAL - 0.5 for gap in intervals)  # never oftener than AWS asks
    finally:
        fake.close()


def test_gcp_long_poll_starts_the_stop_with_its_30_seconds(graceshell, worker):
    fake = Fake("gcp", notice_at=time.time() + 1.5)
    try:
        run = graceshell(*notices("--budget", "40s", "--interruption-notices", "gcp", "--metadata-url", fake.url),
                         *worker())
        run.ready()
        assert run.wait(POLL_INTERVAL + 10) == 128 + signal.SIGTERM  # the worker dies of its TERM
        event = run.event("graceshell.interruption")
        assert event["provider"] == "gcp" and abs(event["budget_s"] - 25.0) < 0.5 and event["budget_cut"] is True
        assert abs(event["deadline"] - (fake.notice_at + 30)) < 2
        assert run.report()["budget_s"] == event["budget_s"]
        assert len(fake.requests) <= 3  # one read, then the long poll: no polling
    finally:
        fake.close()


def test_azure_preempt_starts_the_stop_and_is_acknowledged_once_the_worker_is_down(graceshell, worker):
    fake = Fake("azure", deadline_in=8.0)
    try:
        run = graceshell(*notices("--budget", "20s", "--interruption-notices", "azure", "--metadata-url",
                                  fake.url), *worker())
        run.ready()
        wait_for(lambda: [r for r in fake.requests if "scheduledevents" in r[2]], 10, "the first poll")
        fake.notice_at = time.time()
        assert run.wait(POLL_INTERVAL + 10) == 128 + signal.SIGTERM
        event = run.event("graceshell.interruption")
        assert event["provider"] == "azure" and event["event_id"] == "E-1"  # not the other VM's event
        assert event["event_type"] == "Preempt" and event["budget_cut"] is True and event["budget_s"] < 5.0
        assert event["deadline_in_s"] > 8.0 - POLL_INTERVAL - 1.5  # seen within a poll interval of appearing
        posts = [r for r in fake.requests if r[1] == "POST"]
        assert len(posts) == 1 and json.loads(posts[0][4]) == {"StartRequests": [{"EventId": "E-1"}]}
        names = [e["event"] for e in run.events()]
        assert run.event("graceshell.interruption_acknowledged")["event_id"] == "E-1"
        # Acknowledged once the worker was down, and said before the exit report.
        assert names.index("graceshell.reap") < names.index("graceshell.interruption_acknowledged") \
            < names.index("graceshell.exit")
    finally:
        fake.close()


BROKEN = {
    "no notice": lambda: Fake("aws"),
    "404": lambda: Fake("none"),
    "slow": lambda: RawServer(None),
    "garbage": lambda: RawServer(b"\x00\xffnot http at all\r\n\r\n" * 100),
    "refused": refused_url,
}


def test_broken_metadata_services_neither_crash_nor_delay_graceshell(tmp_path):
    """Every provider against every broken service, all at once (15 graceshells)."""
    servers = {name: make() for name, make in BROKEN.items()}
    runs = {}
    try:
        for provider in ("aws", "gcp", "azure"):
            for name, server in servers.items():
                url = server if isinstance(server, str) else server.url
                state = tmp_path / f"{provider}-{name.replace(' ', '-')}"
                state.mkdir()
                runs[provider, name] = Run(state, notices("--interruption-notices", provider, "--metadata-url", url,
                                                          "--", sys.executable, WORKER, str(state)), None)
        for run in runs.values():
            run.ready(30)
        time.sleep(1.0)  # a poll or two meets each broken service
        for run in runs.values():
            run.kill(signal.SIGTERM)
        for key, run in runs.items():
            assert run.wait(10) == 128 + signal.SIGTERM, (key, run.stderr())
            report = run.report()
            assert report["outcome"] == "clean" and report["shutdown_s"] < 1.0, (key, report)
            assert "Traceback" not in run.stderr() and "graceshell.interruption\"" not in run.stderr()
        for key, run in runs.items():
            if key[1] in ("garbage", "refused", "404"):
                assert "graceshell.interruption_problem" in run.stderr(), key
    finally:
        for run in runs.values():
            run.cleanup()
        for server in servers.values():
            if not isinstance(server, str):
                server.close()
