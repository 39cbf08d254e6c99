"""The HTTP endpoint, served from the supervisor's own selector loop.

No thread and no timer: the listening socket and each connection are file
descriptors in the loop's selector, so an endpoint nobody calls costs no
wake-up at all. Each turn of the loop acts on signals first and on HTTP
last, and one turn's HTTP work is bounded, so a client cannot delay a stop:

- a request is at most MAX_REQUEST bytes (a 1 GB upload is cut off at 8 KiB
  and answered 413, never buffered);
- a connection lives at most CONNECTION_DEADLINE seconds from its accept (a
  slowloris is closed then), and a response that the client does not read
  is dropped then too;
- at most MAX_CONNECTIONS are open; one more is accepted and closed at once
  (leaving it in the backlog would keep the socket readable, a busy loop);
- at most ACCEPTS_PER_TURN are accepted per turn of the loop, so a flood of
  connections shares the loop with the signals rather than holding it.

HTTP/1.0 semantics: one request per connection, then close.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Callable

    # path -> (status code, content type, body)
    Responder = Callable[[str], tuple[int, str, bytes]]

MAX_REQUEST = 8 * 1024
CONNECTION_DEADLINE = 2.0
MAX_CONNECTIONS = 16
ACCEPTS_PER_TURN = 16
BACKLOG = 16
FD_SHORTAGE_PAUSE = 1.0  # seconds the listener rests when graceshell has no fd to accept with
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Request Entity Too Large", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable"}


def response(status: int, content_type: str, body: bytes, head_only: bool = False) -> bytes:
    head = (f"HTTP/1.0 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + (b"" if head_only else body)


def _plain(status: int, text: str) -> bytes:
    return response(status, "text/plain; charset=utf-8", (text + "\n").encode())


def request_path(head: bytes) -> tuple[str | None, bytes | None]:
    """The path of a GET or HEAD request line, or (None, the error response)."""
    line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None, _plain(400, "bad request")
    method, target = parts[0], parts[1]
    if method not in (b"GET", b"HEAD"):
        return None, _plain(405, "only GET and HEAD")
    path = target.split(b"?", 1)[0]
    try:
        return path.decode("ascii"), None
    except UnicodeDecodeError:
        return None, _plain(400, "bad request")


class _Connection:
    __slots__ = ("sock", "deadline", "received", "outgoing")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.received = b""
        self.outgoing: bytes | None = None  # the response, once there is one


class Endpoint:
    """A listening socket and its connections, in the caller's selector.

    Every fd is registered with a callable as its selector data: the loop
    calls `key.data(events)` for them and knows nothing of HTTP.
    """

    def __init__(self, address: tuple[str, int], respond: Responder) -> None:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)  # close-on-exec: Python's default
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.listener = sock
        self.address = sock.getsockname()[:2]
        self.respond = respond
        self.selector: selectors.BaseSelector | None = None
        self.connections: dict[int, _Connection] = {}
        # While graceshell has no fd to spare, the listener is out of the
        # selector until then: a connection waiting in the backlog keeps it
        # readable, and the loop would spin on it.
        self.paused_until: float | None = None

    def register(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        selector.register(self.listener, selectors.EVENT_READ, self._accept)

    def deadline(self) -> float | None:
        """When the oldest connection must be closed, or accepting resumes; None when neither (no wake-up)."""
        due = [c.deadline for c in self.connections.values()]
        if self.paused_until is not None:
            due.append(self.paused_until)
        return min(due, default=None)

    def expire(self, now: float) -> None:
        for fd, conn in list(self.connections.items()):
            if now >= conn.deadline:
                self._close(fd)
        if self.paused_until is not None and now >= self.paused_until:
            self._resume()

    def _pause(self) -> None:
        if self.paused_until is None and self.selector is not None:
            self.selector.unregister(self.listener)
        self.paused_until = time.monotonic() + FD_SHORTAGE_PAUSE

    def _resume(self) -> None:
        if self.paused_until is not None and self.selector is not None:
            self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.paused_until = None

    def close(self) -> None:
        for fd in list(self.connections):
            self._close(fd)
        self.paused_until = None
        self._unregister_and_close(self.listener)

    # -- events ---------------------------------------------------------------------

    def _accept(self, events: int) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._pause()
                return  # ECONNABORTED: that connection has left the backlog already
            if len(self.connections) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + CONNECTION_DEADLINE)
            self.connections[sock.fileno()] = conn
            assert self.selector is not None
            self.selector.register(sock, selectors.EVENT_READ, lambda ev, fd=sock.fileno(): self._on_ready(fd))

    def _on_ready(self, fd: int) -> None:
        conn = self.connections.get(fd)
        if conn is None:
            return
        if conn.outgoing is not None:
            self._send(fd, conn)
            return
        try:
            data = conn.sock.recv(MAX_REQUEST + 1 - len(conn.received))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd)
            return
        if not data:
            self._close(fd)
            return
        conn.received += data
        if b"\r\n\r\n" in conn.received or b"\n\n" in conn.received:
            conn.outgoing = self._answer(conn.received)
        elif len(conn.received) > MAX_REQUEST:
            conn.outgoing = _plain(413, f"a request is at most {MAX_REQUEST} bytes")
        else:
            return
        conn.received = b""
        self._send(fd, conn)

    def _answer(self, head: bytes) -> bytes:
        path, error = request_path(head)
        if error is not None:
            return error
        assert path is not None
        try:
            status, content_type, body = self.respond(path)
        except Exception as exc:  # noqa: BLE001 - a bug in a report must not end supervision
            return _plain(500, f"internal error: {exc!r}"[:200])
        return response(status, content_type, body, head_only=head.startswith(b"HEAD "))

    def _send(self, fd: int, conn: _Connection) -> None:
        assert conn.outgoing is not None
        try:
            sent = conn.sock.send(conn.outgoing)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(fd)
            return
        conn.outgoing = conn.outgoing[sent:]
        if not conn.outgoing:
            self._close(fd)
            return
        assert self.selector is not None  # the rest when the client reads; the deadline bounds the wait
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, lambda ev, fd=fd: self._on_ready(fd))

    def _close(self, fd: int) -> None:
        conn = self.connections.pop(fd, None)
        if conn is None:
            return
        self._unregister_and_close(conn.sock)
        self._resume()  # an fd is free again

    def _unregister_and_close(self, sock: socket.socket) -> None:
        if self.selector is not None:
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):  # never registered, or the selector is closed
                pass
        sock.close()
