"""Helpers of the fleet tests: a free port, a GET, the endpoint's metrics
read with prometheus_client's own parser."""

import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def serving(run, port: int) -> bool:
    wait_for(lambda: "graceshell.http" in run.stderr() or run.proc.poll() is not None, 10, "graceshell.http")
    return get(port, "/livez")[0] == 200


def metrics(port: int) -> dict[str, dict]:
    """name -> {labels as a sorted tuple: value}, parsed by prometheus_client."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    found: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found
