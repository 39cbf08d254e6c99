"""The --http endpoint, end to end: a real graceshell, a real worker, real
signals and real sockets. The metrics are read with prometheus_client's own
parser."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from conftest import wait_for
from fleet_helpers import free_port, get, metrics, serving


def test_four_paths_before_and_during_a_stop(graceshell, worker):
    port = free_port()
    run = graceshell("--platform", "none", "--budget", "2s", "--log-format", "json", "--http", f"127.0.0.1:{port}",
                     *worker("--ignore", "TERM", "--job", "j1:reports.build"))
    run.ready()
    assert serving(run, port)
    assert get(port, "/livez") == (200, "ok: supervising (running)\n")
    assert get(port, "/readyz") == (200, "ready: running\n")
    busy = json.loads(get(port, "/busy")[1])
    assert busy["jobs"] == 1 and busy["phase"] == "running" and busy["budget_left_s"] == 2.0
    assert abs(busy["oldest_job_started_at"] - time.time()) < 30
    before = metrics(port)
    assert before["graceshell_jobs_in_flight"][()] == 1
    assert before["graceshell_budget_seconds"][()] == 2.0
    assert before["graceshell_phase"][(("phase", "running"),)] == 1
    assert "graceshell_stops_total" not in before  # no stop yet: the counter has no sample

    run.kill(signal.SIGTERM)
    wait_for(lambda: "graceshell.forward" in run.stderr(), 5, "the stop")
    assert get(port, "/livez") == (200, "ok: supervising (draining)\n")  # a draining worker is alive
    assert get(port, "/readyz") == (503, "not ready: draining\n")
    busy = json.loads(get(port, "/busy")[1])
    assert busy["phase"] == "draining" and busy["jobs"] == 1 and busy["stop_signal"] == "TERM"
    assert 0 < busy["budget_left_s"] < 2.0
    during = metrics(port)
    assert during["graceshell_stops_total"][(("cause", "signal"), ("signal", "TERM"))] == 1
    assert during["graceshell_ladder_steps_total"][()] == 1
    assert during["graceshell_phase"][(("phase", "draining"),)] == 1
    assert during["graceshell_last_stop_duration_seconds"][()] > 0
    assert run.wait(10) == 128 + signal.SIGKILL
    assert run.report()["outcome"] == "killed"


def test_restarts_and_bad_requests(graceshell, worker):
    port = free_port()
    env = {**os.environ, "GRACESHELL_RESTARTS": "3"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    run = graceshell("--platform", "none", "--log-format", "json", "--http", str(port), *worker(), env=env)
    run.ready()
    assert serving(run, port)
    assert metrics(port)["graceshell_restarts_total"][()] == 3
    assert get(port, "/nope")[0] == 404
    for raw in (b"\x00\xff garbage\r\n\r\n", b"POST /busy HTTP/1.1\r\n\r\n", b"GET\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(raw)
            assert sock.recv(100).split(b" ")[1] in (b"400", b"405")
    run.kill(signal.SIGTERM)
    assert run.wait(10) == 128 + signal.SIGTERM


def _flood(port: int, stop: threading.Event) -> None:
    """A 1 GB request, written as fast as graceshell reads it (which is not for long)."""
    chunk = b"x" * 65536
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /busy HTTP/1.0\r\nX-Padding: ")
            for _ in range(16384):
                if stop.is_set():
                    return
                sock.sendall(chunk)
    except OSError:  # graceshell closed it: the point
        return


def test_hostile_clients_cannot_delay_a_stop_or_grow_memory(graceshell, worker):
    port = free_port()
    run = graceshell("--platform", "none", "--budget", "1s", "--log-format", "json", "--http", f"127.0.0.1:{port}",
                     *worker("--ignore", "TERM"))
    worker_pid = run.ready()["pid"]
    assert serving(run, port)
    # Slowloris: connections that send a byte and then nothing, more than graceshell keeps.
    idle = []
    for _ in range(40):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"G")
        idle.append(sock)
    stop = threading.Event()
    floods = [threading.Thread(target=_flood, args=(port, stop)) for _ in range(3)]
    for thread in floods:
        thread.start()
    sent = run.kill(signal.SIGTERM)  # the stop, with the endpoint under attack
    try:
        assert run.wait(10) == 128 + signal.SIGKILL
    finally:
        stop.set()
        for sock in idle:
            sock.close()
        for thread in floods:
            thread.join(10)
    escalation = run.event("graceshell.escalate")
    assert escalation["step"] == "final" and escalation["reason"] == "budget"
    assert escalation["elapsed_s"] < 1.5  # the KILL at its offset (1s), not after the clients
    (term_at,) = [at for name, at in run.signals(worker_pid) if name == "TERM"]
    assert term_at - sent < 0.5  # the worker had its TERM at once (same monotonic clock)
    assert run.report()["outcome"] == "killed"


def test_hostile_clients_are_cut_off_and_memory_stays_flat(graceshell, worker):
    port = free_port()
    run = graceshell("--platform", "none", "--log-format", "json", "--http", f"127.0.0.1:{port}", *worker())
    run.ready()
    assert serving(run, port)
    proc = psutil.Process(run.pid)
    rss_before = proc.memory_info().rss
    stop = threading.Event()
    flood = threading.Thread(target=_flood, args=(port, stop))
    flood.start()
    flood.join(20)
    assert not flood.is_alive(), "graceshell kept reading a 1 GB request"
    loris = socket.create_connection(("127.0.0.1", port), timeout=5)
    loris.sendall(b"GET /livez HTTP/1.0\r\n")
    loris.settimeout(10)
    assert loris.recv(100) == b""  # closed at the connection deadline, without an answer
    loris.close()
    assert get(port, "/livez")[0] == 200  # and the endpoint still serves
    assert proc.memory_info().rss - rss_before < 4 * 1024 * 1024
    run.kill(signal.SIGTERM)
    assert run.wait(10) == 128 + signal.SIGTERM


def test_nothing_is_opened_when_the_options_are_off(graceshell, worker):
    run = graceshell("--platform", "none", "--log-format", "json", *worker())
    run.ready()
    proc = psutil.Process(run.pid)
    time.sleep(0.7)  # past the sweep of stale run directories
    assert proc.num_threads() == 1
    assert not [c for c in proc.net_connections(kind="all")]
    links = [os.readlink(f"/proc/{run.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{run.pid}/fd")]
    assert not [link for link in links if link.startswith("socket:")]
    run.kill(signal.SIGTERM)
    assert run.wait(10) == 128 + signal.SIGTERM
    assert "graceshell.http" not in run.stderr()


def test_nothing_of_the_fleet_is_imported_when_the_options_are_off():
    import subprocess
    import sys

    from conftest import clean_env

    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "graceshell", "run", "--platform", "none",
                           "--log-format", "json", "--", "true"], env=clean_env(), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "graceshell.engine.supervisor" in imported  # the listing is read right
    assert not {name for name in imported
                if name.startswith(("graceshell.fleet", "prometheus_client", "socket", "urllib", "http"))}


def test_a_port_in_use_is_logged_and_the_worker_runs_on(graceshell, worker):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = graceshell("--platform", "none", "--log-format", "json", "--http", f"127.0.0.1:{port}", *worker())
        run.ready()
        wait_for(lambda: "graceshell.http_failed" in run.stderr(), 10, "graceshell.http_failed")
        run.kill(signal.SIGTERM)
        assert run.wait(10) == 128 + signal.SIGTERM


@pytest.mark.parametrize("flag, message", [
    ("--http=nope", "is not HOST:PORT"),
    ("--http=127.0.0.1:99999", "is not HOST:PORT"),
    ("--http=::1:80", "in brackets"),
    ("--interruption-notices=ibm", "is not one of aws, gcp, azure, auto"),
    ("--metadata-url=ftp://x", "is not a base URL"),
])
def test_bad_fleet_flags_are_usage_errors(flag, message):
    from conftest import run_cli

    proc = run_cli("run", flag, "--", "true")
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_start_gives_each_process_its_own_endpoint_with_its_restarts(tmp_path):
    import subprocess
    import sys

    from conftest import clean_env, kill_tree

    base, own = free_port(), free_port()
    (tmp_path / "Procfile").write_text("web: sleep 30\nworker: sleep 1.5\n")
    (tmp_path / "graceshell.yml").write_text(f"http: 127.0.0.1:{base}\nprocesses:\n  worker:\n    restart: always\n"
                                             f"  web:\n    http: 127.0.0.1:{own}\n")
    proc = subprocess.Popen([sys.executable, "-m", "graceshell", "start", "--platform", "none", "-c", "worker=2"],
                            cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def restarted(port: int) -> bool:
            try:
                return metrics(port)["graceshell_restarts_total"][()] == 1
            except (OSError, KeyError, AssertionError):
                return False

        # worker is the second type: +100 from the shared port, +1 per instance.
        wait_for(lambda: restarted(base + 100) and restarted(base + 101), 15,
                 "both workers restarted, each on its own port")
        assert get(own, "/livez")[0] == 200  # web's own port, as written
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(15)
    finally:
        kill_tree(proc)


def test_the_kubernetes_example_probes_graceshells_own_endpoint(tmp_path):
    from pathlib import Path

    import yaml

    from conftest import check_json, clean_env

    manifest = Path(__file__).resolve().parent.parent / "examples" / "kubernetes" / "worker.yaml"
    (deployment,) = [d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var["value"] for var in container["env"] if "value" in var}
    (tmp_path / "Procfile").write_text("worker: " + " ".join(container["args"]) + "\n")
    entry = check_json(tmp_path, "worker", env=clean_env(**env))["processes"][0]
    host, _, port = entry["http"]["value"].rpartition(":")
    assert host == "0.0.0.0"  # the kubelet probes the pod's IP, not its loopback
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/livez" and ports[probe["port"]] == int(port)
    assert "readinessProbe" not in container  # a worker has no Service


def test_no_fd_to_accept_with_rests_the_listener_instead_of_spinning(tmp_path):
    """accept() failing with EMFILE leaves the connection in the backlog, the
    listener readable: the endpoint takes it out of the selector for a while
    (a deadline the loop sleeps to), and takes it back when an fd is free."""
    script = tmp_path / "emfile.py"
    script.write_text(textwrap.dedent("""
        import os, resource, selectors, socket, time
        from graceshell.fleet.http import Endpoint
        endpoint = Endpoint(("127.0.0.1", 0), lambda path: (200, b"", "text/plain"))
        selector = selectors.DefaultSelector()
        endpoint.register(selector)
        client = socket.create_connection(endpoint.address)
        spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1)]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))  # every fd number taken
        ready = [key.data for key, _ in selector.select(0)]
        for callback in ready:
            callback(selectors.EVENT_READ)
        paused = endpoint.paused_until is not None
        still_ready = len(selector.select(0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        endpoint.expire(endpoint.deadline())
        for key, _ in selector.select(0):
            key.data(selectors.EVENT_READ)
        print(paused, still_ready, endpoint.paused_until is None, len(endpoint.connections))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["True", "0", "True", "1"], out.stdout + out.stderr
