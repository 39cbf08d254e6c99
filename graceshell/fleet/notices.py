"""Cloud interruption notices: the warning a spot or preemptible VM gets
before the platform's SIGTERM, read from the instance metadata service.

- AWS: IMDSv2. A token (PUT /latest/api/token), then
  /latest/meta-data/spot/instance-action: 404 until a notice, then
  {"action": "terminate", "time": "2026-01-01T12:00:00Z"}. Polled every 5 s,
  as AWS recommends and no oftener.
- GCP: /computeMetadata/v1/instance/preempted?wait_for_change=true
  (Metadata-Flavor: Google), a long poll: the server answers when the value
  becomes TRUE. The VM stops 30 s after.
- Azure: /metadata/scheduledevents (Metadata: true), polled every 5 s. A
  Preempt or Terminate event for this VM is the notice; NotBefore is the
  deadline. Once the worker is down the event is acknowledged (StartRequests),
  so that Azure may go ahead without waiting out NotBefore.

The metadata service is network I/O that may hang or lie, so it is read by
one daemon thread that blocks every signal (they all stay the main
thread's), keeps its own timeouts, and hands each notice or problem to the
supervisor's loop through a pipe in its selector. Nothing it meets (a
refused connection, a 404, garbage, a server that never answers) can raise
into graceshell or delay it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

METADATA_URL = "http://169.254.169.254"  # the same link-local address on all three clouds
POLL_INTERVAL = 5.0  # AWS's recommendation for instance-action; Azure's events come at least 30 s ahead
REQUEST_TIMEOUT = 2.0  # a metadata service answers in milliseconds; a silent one is retried next poll
GCP_WAIT = 300  # seconds the GCP long poll waits before it is asked again (timeout_sec)
GCP_NOTICE = 30.0  # GCP stops a preempted VM 30 s after it sets `preempted`
MAX_BODY = 64 * 1024
AZURE_API = "api-version=2020-07-01"
AZURE_STOPS = ("Preempt", "Terminate")
ACK_WAIT = 1.0  # the most graceshell waits for Azure's acknowledgement at its exit
AWS_TOKEN_TTL = 21600


class Notice:
    """An interruption: who gave it, when the VM goes (epoch seconds; None: not said), and what to acknowledge."""

    __slots__ = ("provider", "deadline", "detail", "ack")

    def __init__(self, provider: str, deadline: float | None, detail: dict[str, Any],
                 ack: Callable[[], None] | None = None) -> None:
        self.provider = provider
        self.deadline = deadline
        self.detail = detail
        self.ack = ack


class Problem(Exception):
    """The metadata service could not be read, or said something unreadable."""


def detect_cloud() -> str | None:
    """aws, gcp or azure from the VM's firmware strings (/sys/class/dmi/id): no network needed."""
    found = []
    for name in ("sys_vendor", "bios_vendor", "product_name", "chassis_asset_tag"):
        try:
            with open(f"/sys/class/dmi/id/{name}", encoding="utf-8", errors="replace") as file:
                found.append(file.read(200))
        except OSError:
            continue
    text = " ".join(found).lower()
    # Azure's VMs carry its chassis asset tag; the vendors name the other two.
    clouds = (("aws", ("amazon",)), ("gcp", ("google",)), ("azure", ("microsoft", "7783-7084-3265-9085-8269-3286-77")))
    for cloud, marks in clouds:
        if any(mark in text for mark in marks):
            return cloud
    return None


# -- reading the metadata service ----------------------------------------------------------

def fetch(method: str, url: str, headers: dict[str, str], timeout: float, body: bytes | None = None
          ) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, at most MAX_BODY bytes); Problem on any failure to talk."""
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # link-local: never through a proxy
    try:
        with opener.open(request, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), answer.read(MAX_BODY)
    except urllib.error.HTTPError as error:
        error.close()
        return error.code, dict(error.headers or {}), b""
    except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, timeout, garbage status line
        raise Problem(f"{type(exc).__name__}: {exc}"[:200]) from None


def parse_time(text: Any, formats: tuple[str, ...]) -> float | None:
    """Epoch seconds of a UTC time written in one of `formats`; None when unreadable."""
    import calendar

    if not isinstance(text, str) or not text.strip():
        return None
    for form in formats:
        try:
            return float(calendar.timegm(time.strptime(text.strip(), form)))
        except ValueError:
            continue
    return None


class Aws:
    name = "aws"

    def __init__(self, base: str) -> None:
        self.base = base
        self.token: str | None = None

    def _token(self) -> str:
        status, _, body = fetch("PUT", f"{self.base}/latest/api/token",
                                {"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL)}, REQUEST_TIMEOUT)
        if status != 200 or not body.strip() or len(body) > 1024:
            raise Problem(f"IMDSv2 token: HTTP {status}")
        return body.decode("ascii", "replace").strip()

    def check(self) -> Notice | None:
        if self.token is None:
            self.token = self._token()
        status, _, body = fetch("GET", f"{self.base}/latest/meta-data/spot/instance-action",
                                {"X-aws-ec2-metadata-token": self.token}, REQUEST_TIMEOUT)
        if status == 401:  # the token expired: a new one next time
            self.token = None
            raise Problem("IMDSv2 token refused (401)")
        if status == 404:
            return None
        if status != 200:
            raise Problem(f"spot/instance-action: HTTP {status}")
        data = _json_object(body, "spot/instance-action")
        deadline = parse_time(data.get("time"), ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%z"))
        return Notice(self.name, deadline, {"action": str(data.get("action"))[:40]})

    def wait(self, stopping: threading.Event) -> None:
        stopping.wait(POLL_INTERVAL)


class Gcp:
    name = "gcp"

    def __init__(self, base: str) -> None:
        self.base = base
        self.etag: str | None = None

    def check(self) -> Notice | None:
        url = f"{self.base}/computeMetadata/v1/instance/preempted"
        if self.etag is not None:  # the long poll: answered when the value changes (or after GCP_WAIT)
            url += f"?wait_for_change=true&timeout_sec={GCP_WAIT}&last_etag={self.etag}"
        status, headers, body = fetch("GET", url, {"Metadata-Flavor": "Google"},
                                      GCP_WAIT + REQUEST_TIMEOUT if self.etag else REQUEST_TIMEOUT)
        if status != 200:
            self.etag = None
            raise Problem(f"instance/preempted: HTTP {status}")
        value = body.strip().upper()
        if value not in (b"TRUE", b"FALSE"):
            self.etag = None
            raise Problem(f"instance/preempted: {body[:40]!r} is neither TRUE nor FALSE")
        etag = {key.lower(): item for key, item in headers.items()}.get("etag", "")
        self.etag = etag if etag and etag.isascii() and etag.isalnum() and len(etag) < 100 else "0"
        if value == b"TRUE":
            return Notice(self.name, time.time() + GCP_NOTICE, {"preempted": True})
        return None

    def wait(self, stopping: threading.Event) -> None:
        pass  # the next check is the long poll itself: no polling


class Azure:
    name = "azure"

    def __init__(self, base: str) -> None:
        self.base = base
        self.vm_name: str | None = None
        self.asked_name = False

    def _name(self) -> str | None:
        """This VM's name, to pick its own events out of its scale set's; None when unknown."""
        self.asked_name = True
        try:
            status, _, body = fetch("GET", f"{self.base}/metadata/instance/compute/name?api-version=2021-02-01"
                                    "&format=text", {"Metadata": "true"}, REQUEST_TIMEOUT)
        except Problem:
            return None
        text = body.decode("utf-8", "replace").strip()
        return text if status == 200 and text and len(text) < 200 else None

    def check(self) -> Notice | None:
        if not self.asked_name:
            self.vm_name = self._name()
        status, _, body = fetch("GET", f"{self.base}/metadata/scheduledevents?{AZURE_API}", {"Metadata": "true"},
                                REQUEST_TIMEOUT)
        if status != 200:
            raise Problem(f"scheduledevents: HTTP {status}")
        events = _json_object(body, "scheduledevents").get("Events")
        if not isinstance(events, list):
            raise Problem("scheduledevents: no Events list")
        for event in events:
            if not isinstance(event, dict) or event.get("EventType") not in AZURE_STOPS:
                continue
            resources = event.get("Resources")
            if self.vm_name is not None and isinstance(resources, list) and self.vm_name not in resources:
                continue  # another VM of the scale set
            event_id = str(event.get("EventId", ""))[:100]
            deadline = parse_time(event.get("NotBefore"), ("%a, %d %b %Y %H:%M:%S GMT",))
            return Notice(self.name, deadline, {"event_type": event["EventType"], "event_id": event_id},
                          ack=lambda: self._ack(event_id))
        return None

    def _ack(self, event_id: str) -> None:
        body = json.dumps({"StartRequests": [{"EventId": event_id}]}).encode()
        fetch("POST", f"{self.base}/metadata/scheduledevents?{AZURE_API}",
              {"Metadata": "true", "Content-Type": "application/json"}, REQUEST_TIMEOUT, body)

    def wait(self, stopping: threading.Event) -> None:
        stopping.wait(POLL_INTERVAL)


PROVIDERS: dict[str, type[Aws] | type[Gcp] | type[Azure]] = {"aws": Aws, "gcp": Gcp, "azure": Azure}


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    """The project's bounded reader: nesting, number size and control characters are checked (a
    body of 64 KiB of `[` raised RecursionError through json.loads and ended the watch)."""
    from graceshell.jsonfile import Unreadable, parse_object

    try:
        return parse_object(body)
    except Unreadable as exc:
        raise Problem(f"{what}: {exc}") from None


# -- the watcher thread --------------------------------------------------------------------

class Watcher:
    """The thread and its pipe into the supervisor's loop.

    The thread only reads the metadata service and queues what it found;
    the loop (`on_readable`) logs it and acts on it, so all logging and every
    decision stay on the main thread.
    """

    def __init__(self, choice: str, base: str | None) -> None:
        self.choice = choice
        self.base = (base or METADATA_URL).rstrip("/")
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.lock = threading.Lock()  # guards the queue, and the pipe's fds against close()
        self.closed = False
        self.queue: list[tuple[str, Any]] = []  # ("notice", Notice) | ("problem", text) | ("start", provider)
        self.stopping = threading.Event()
        self.worker_down = threading.Event()
        self.wake = threading.Event()  # set at the worker's exit and at close
        self.acking = threading.Event()  # a notice to acknowledge once the worker is down
        self.acked = threading.Event()
        self.thread = threading.Thread(target=self._run, name="graceshell-interruption-notices", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def take(self) -> list[tuple[str, Any]]:
        """What the thread found since the last call (the loop calls it when the pipe is readable)."""
        with self.lock:
            if self.closed:
                return []
            try:
                while os.read(self.read_fd, 512):
                    pass
            except BlockingIOError:
                pass
            found, self.queue = self.queue, []
        return found

    def on_worker_down(self) -> None:
        self.worker_down.set()
        self.wake.set()

    def close(self) -> list[tuple[str, Any]]:
        """Stop the thread, wait (at most ACK_WAIT) for an acknowledgement it is
        sending, and return what it found that the loop has not taken."""
        self.stopping.set()
        self.wake.set()
        if self.worker_down.is_set() and self.acking.is_set() and not self.acked.is_set():
            self.acked.wait(ACK_WAIT)
        left = self.take()
        with self.lock:  # the thread may run on: it must never write to a closed (reused) fd number
            self.closed = True
            for fd in (self.read_fd, self.write_fd):
                os.close(fd)
        return left

    def _put(self, kind: str, item: Any) -> None:
        with self.lock:
            if self.closed:
                return
            self.queue.append((kind, item))
            try:
                os.write(self.write_fd, b"!")
            except BlockingIOError:  # full: the loop has news waiting already
                pass

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # every signal is the main thread's
        try:
            self._watch()
        except Exception as exc:  # noqa: BLE001 - a bug here must end the watch, never graceshell
            self._put("problem", f"the watch stopped: {exc!r}"[:300])

    def _watch(self) -> None:
        name = detect_cloud() if self.choice == "auto" else self.choice
        if name is None:
            self._put("problem", "auto: no AWS, GCP or Azure VM found in /sys/class/dmi/id; name the cloud")
            return
        source = PROVIDERS[name](self.base)
        self._put("start", name)
        last_problem = None
        while not self.stopping.is_set():
            try:
                notice = source.check()
            except Problem as problem:
                if str(problem) != last_problem:  # each new problem once, not every poll
                    self._put("problem", str(problem))
                last_problem = str(problem)
                self.stopping.wait(POLL_INTERVAL)
                continue
            last_problem = None
            if notice is not None:
                self._put("notice", notice)
                self._acknowledge(notice)
                return
            source.wait(self.stopping)

    def _acknowledge(self, notice: Notice) -> None:
        if notice.ack is None:
            return
        self.acking.set()
        self.wake.wait()  # the worker's exit, or graceshell leaving: no polling
        if not self.worker_down.is_set():
            return
        try:
            notice.ack()
        except Problem as problem:
            self._put("problem", f"acknowledging the event: {problem}")
        else:
            self._put("acknowledged", notice.detail.get("event_id"))
        finally:
            self.acked.set()


def shortened_ladder(ladder: tuple[Any, ...], budget: float) -> tuple[Any, ...]:
    """`ladder` fitted into a shorter `budget`: the final KILL at the new budget,
    each later step keeping its distance to the end (its cold reserve) up to
    half the new budget, so the warm phase shrinks first and a cold shutdown
    still gets its time. Steps at 0 s stay at 0 s."""
    end = ladder[-1].at
    fitted = []
    for index, step in enumerate(ladder):
        if index == len(ladder) - 1:
            fitted.append(step._replace(at=budget))
        elif step.at <= 0:
            fitted.append(step)
        else:
            fitted.append(step._replace(at=max(0.0, budget - min(end - step.at, budget / 2))))
    return tuple(fitted)


def fitted_plan(plan: Any, seconds_left: float | None) -> tuple[Any, bool]:
    """`plan` with its budget cut to fit a platform deadline `seconds_left`
    away (keeping the usual margin before the platform's own kill), and
    whether it was cut; the plan as it is when the deadline is later or unknown."""
    import copy

    from graceshell.config.platforms import default_budget

    if seconds_left is None:
        return plan, False
    budget = default_budget(max(0.0, seconds_left))  # to the millisecond already
    if budget >= plan.kill_at:
        return plan, False
    fitted = copy.copy(plan)
    fitted.ladder = shortened_ladder(plan.ladder, budget)
    fitted.budget = budget
    return fitted, True
