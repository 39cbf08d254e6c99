"""Fake instance metadata services (AWS, GCP, Azure) for the interruption
notice tests: each serves no notice until `notice_at` (epoch seconds), then
the provider's notice with a deadline `deadline_in` seconds after it."""

import json
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Fake(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, provider: str, notice_at: float = float("inf"), deadline_in: float = 30.0) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.provider = provider
        self.notice_at = notice_at
        self.deadline_in = deadline_in
        self.requests: list[tuple[float, str, str, dict, bytes]] = []  # (time, method, path, headers, body)
        self.lock = threading.Lock()
        self.changed = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def noticed(self) -> bool:
        return time.time() >= self.notice_at

    def deadline(self) -> float:
        return self.notice_at + self.deadline_in

    def close(self) -> None:
        self.changed.set()
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: Fake

    def log_message(self, *args) -> None:
        pass

    def _record(self, body: bytes = b"") -> None:
        with self.server.lock:
            self.server.requests.append((time.time(), self.command, self.path, dict(self.headers), body))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self._record()
        if self.server.provider == "aws" and self.path == "/latest/api/token" \
                and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(200, b"token-1")
        else:
            self._send(400)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._record(body)
        self._send(200 if self.headers.get("Metadata") == "true" else 400)

    def do_GET(self) -> None:
        self._record()
        fake = self.server
        if fake.provider == "aws":
            self._aws()
        elif fake.provider == "gcp":
            self._gcp()
        elif fake.provider == "azure":
            self._azure()
        else:
            self._send(404)

    def _aws(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
            self._send(401)
        elif self.path != "/latest/meta-data/spot/instance-action" or not self.server.noticed():
            self._send(404)
        else:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.server.deadline()))
            self._send(200, json.dumps({"action": "terminate", "time": when}).encode())

    def _gcp(self) -> None:
        if self.headers.get("Metadata-Flavor") != "Google" or \
                not self.path.startswith("/computeMetadata/v1/instance/preempted"):
            self._send(404)
            return
        if "wait_for_change=true" in self.path:  # the long poll: held until the value changes
            while not self.server.noticed():
                time.sleep(0.05)
        self._send(200, b"TRUE" if self.server.noticed() else b"FALSE",
                   {"ETag": "e2" if self.server.noticed() else "e1", "Content-Type": "application/text"})

    def _azure(self) -> None:
        if self.headers.get("Metadata") != "true":
            self._send(400)
        elif self.path.startswith("/metadata/instance/compute/name"):
            self._send(200, b"vm-1")
        elif self.path.startswith("/metadata/scheduledevents"):
            events = []
            if self.server.noticed():
                not_before = formatdate(self.server.deadline(), usegmt=True)
                events = [{"EventId": "other-vm", "EventType": "Terminate", "Resources": ["vm-2"],
                           "EventStatus": "Scheduled", "NotBefore": formatdate(time.time(), usegmt=True)},
                          {"EventId": "E-1", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                           "Resources": ["vm-1"], "EventStatus": "Scheduled", "NotBefore": not_before}]
            self._send(200, json.dumps({"DocumentIncarnation": 1, "Events": events}).encode())
        else:
            self._send(404)


class RawServer:
    """A TCP server that answers every connection with `reply` (garbage), or holds it open and says nothing."""

    def __init__(self, reply: bytes | None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.reply = reply
        self.held: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.reply is None:
                self.held.append(conn)  # a slow server: never a byte
            else:
                try:
                    conn.recv(4096)
                    conn.sendall(self.reply)
                finally:
                    conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def refused_url() -> str:
    from fleet_helpers import free_port

    return f"http://127.0.0.1:{free_port()}"  # nothing listens there
