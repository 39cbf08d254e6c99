"""Where graceshell runs: each platform's stop model as data, and detection.

One table, one place. The figures are the platforms' documented defaults;
`--platform-timeout` (or `platform_timeout:` in YAML) overrides them where a
deployment changed its grace period.
"""

from __future__ import annotations

import os
import signal
from collections import namedtuple

# How the platform delivers its stop signal.
BROADCAST_ALL = "all"  # to every process of the dyno/cgroup, children included
BROADCAST_PID1 = "pid1"  # to the container's main process only
BROADCAST_GROUP = "group"  # to graceshell's process group (the worker runs in a session of its own)
# What the `broadcast` setting may say, for a deployment whose stop model is
# not its platform's default (systemd's KillMode=mixed signals the main process only).
BROADCASTS = (BROADCAST_ALL, BROADCAST_GROUP, BROADCAST_PID1)


_PLATFORM_FIELDS = ("name timeout stop_signal broadcast repeats_stop_signal detect_env detect_file "
                    "detect_needs_all timeout_env doc timeout_setting")


class Platform(namedtuple("Platform", _PLATFORM_FIELDS, defaults=(False, (), None, False, None, "", None))):
    """A platform's stop model (a named tuple: cheap to import, immutable)."""

    __slots__ = ()
    name: str
    timeout: float | None  # seconds from its stop signal to its SIGKILL; None = never
    stop_signal: int
    broadcast: str
    # The platform may send its stop signal more than once during one stop
    # (Heroku says so): repeats of it must not count as a second request.
    repeats_stop_signal: bool
    detect_env: tuple[str, ...]
    detect_file: str | None
    detect_needs_all: bool  # every detect_env var must be set, not just one
    timeout_env: str | None  # env var holding the configured timeout
    doc: str
    timeout_setting: str | None  # where a user raises the timeout; None: it is fixed


PLATFORMS: dict[str, Platform] = {
    p.name: p
    for p in (
        # Dev Center, "Dyno Shutdown Behavior": SIGTERM to all processes in the
        # dyno, possibly more than once; SIGKILL after 30 s.
        Platform("heroku", 30.0, signal.SIGTERM, BROADCAST_ALL, True, ("DYNO",),
                 doc="devcenter.heroku.com/articles/dynos#shutdown"),
        # Render docs, "Deploys: zero-downtime": SIGTERM, maxShutdownDelaySeconds 30 (max 300).
        Platform("render", 30.0, signal.SIGTERM, BROADCAST_ALL, False,
                 ("RENDER", "RENDER_INSTANCE_ID", "RENDER_SERVICE_ID"),
                 doc="render.com/docs/deploys#zero-downtime-deploys",
                 timeout_setting="maxShutdownDelaySeconds in render.yaml"),
        # Fly.io fly.toml reference: kill_signal defaults to SIGINT, kill_timeout 5 s.
        Platform("fly", 5.0, signal.SIGINT, BROADCAST_PID1, False, ("FLY_APP_NAME", "FLY_MACHINE_ID"),
                 doc="fly.io/docs/reference/configuration/#runtime-options",
                 timeout_setting="kill_timeout in fly.toml"),
        # Railway: SIGTERM, then SIGKILL after RAILWAY_DEPLOYMENT_DRAINING_SECONDS (default 0).
        Platform("railway", 0.0, signal.SIGTERM, BROADCAST_PID1, False,
                 ("RAILWAY_REPLICA_ID", "RAILWAY_DEPLOYMENT_ID"),
                 timeout_env="RAILWAY_DEPLOYMENT_DRAINING_SECONDS",
                 doc="docs.railway.com/reference/deployment-teardown",
                 timeout_setting="the service variable RAILWAY_DEPLOYMENT_DRAINING_SECONDS"),
        # Cloud Run container contract: SIGTERM, SIGKILL 10 s later.
        Platform("cloudrun", 10.0, signal.SIGTERM, BROADCAST_PID1, False, ("K_SERVICE", "CLOUD_RUN_JOB"),
                 doc="cloud.google.com/run/docs/container-contract#instance-shutdown"),
        # ECS task definition: STOPSIGNAL to the main process, stopTimeout 30 s.
        Platform("ecs", 30.0, signal.SIGTERM, BROADCAST_PID1, False, ("ECS_CONTAINER_METADATA_URI_V4",),
                 doc="docs.aws.amazon.com/AmazonECS/latest/developerguide/task_definition_parameters.html",
                 timeout_setting="stopTimeout in the task definition"),
        # Pod lifecycle: STOPSIGNAL to each container's PID 1, terminationGracePeriodSeconds 30.
        Platform("kubernetes", 30.0, signal.SIGTERM, BROADCAST_PID1, False, ("KUBERNETES_SERVICE_HOST",),
                 doc="kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-termination",
                 timeout_setting="terminationGracePeriodSeconds in the pod spec"),
        # systemd.kill: KillMode=control-group signals every process, TimeoutStopSec 90 s.
        # INVOCATION_ID alone is inherited by terminal sessions; JOURNAL_STREAM
        # marks a unit whose output goes to the journal.
        Platform("systemd", 90.0, signal.SIGTERM, BROADCAST_ALL, False, ("INVOCATION_ID", "JOURNAL_STREAM"),
                 detect_needs_all=True, doc="www.freedesktop.org/software/systemd/man/systemd.kill.html",
                 timeout_setting="TimeoutStopSec= in the unit"),
        # podman stop: StopSignal to PID 1, SIGKILL after 10 s (-t, --stop-timeout);
        # Podman writes /run/.containerenv in every container (no /.dockerenv).
        Platform("podman", 10.0, signal.SIGTERM, BROADCAST_PID1, False, detect_file="/run/.containerenv",
                 doc="docs.podman.io/en/latest/markdown/podman-stop.1.html",
                 timeout_setting="podman stop -t, or podman run --stop-timeout"),
        # docker stop: STOPSIGNAL to PID 1, SIGKILL after 10 s (-t).
        Platform("docker", 10.0, signal.SIGTERM, BROADCAST_PID1, False, detect_file="/.dockerenv",
                 doc="docs.docker.com/reference/cli/docker/container/stop/",
                 timeout_setting="stop_grace_period in compose, or docker stop -t / docker run --stop-timeout"),
        Platform("none", None, signal.SIGTERM, BROADCAST_PID1, timeout_setting="--platform-timeout"),
    )
}

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Mapping

# Budget used when no platform imposes a deadline: long enough for a warm
# shutdown of most jobs, short enough that a stuck worker is noticed.
BUDGET_WITHOUT_PLATFORM = 25.0
# Time left between graceshell's final KILL and the platform's, when the
# platform's timeout allows it.
PLATFORM_MARGIN = 5.0


def detect_platform(environ: Mapping[str, str]) -> tuple[Platform, str]:
    """The platform we run on and why we think so (for logs and `check`)."""
    for platform in PLATFORMS.values():
        present = [name for name in platform.detect_env if name in environ]
        if present and (not platform.detect_needs_all or len(present) == len(platform.detect_env)):
            return platform, f"env {'+'.join(present) if platform.detect_needs_all else present[0]}"
        if platform.detect_file and os.path.exists(platform.detect_file):
            return platform, f"file {platform.detect_file}"
    return PLATFORMS["none"], "no platform detected"


def platform_timeout(platform: Platform, environ: Mapping[str, str]) -> float | None:
    """The platform's timeout, read from its own setting where it has one."""
    if platform.timeout_env and environ.get(platform.timeout_env, "").strip():
        from graceshell.durations import parse_duration

        try:  # seconds, finite and at most a week: "inf" would make every deadline infinite
            return parse_duration(environ[platform.timeout_env])
        except ValueError:
            pass  # a malformed platform variable is the platform's default
    return platform.timeout


def default_budget(timeout: float | None) -> float:
    """platform timeout - 5 s, but never under 80% of it for short timeouts."""
    if timeout is None:
        return BUDGET_WITHOUT_PLATFORM
    from graceshell.durations import to_ms

    return to_ms(max(timeout - PLATFORM_MARGIN, 0.8 * timeout))
