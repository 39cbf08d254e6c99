"""The fleet options as written: `--http HOST:PORT`, `--interruption-notices`,
`--metadata-url`. Parsed before the worker starts (string work only, no
socket); acted on after it has been spawned."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"  # only the pod or the box itself, unless the user says otherwise
NOTICE_PROVIDERS = ("aws", "gcp", "azure", "auto")


def parse_address(text: str) -> tuple[str, int]:
    """`9090`, `:9090`, `0.0.0.0:9090`, `[::]:9090` -> (host, port); ValueError with the fix."""
    spec = str(text).strip()
    host, sep, port_text = spec.rpartition(":")
    if not sep:
        host, port_text = "", spec
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 host in brackets, e.g. [::]:9090")
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT with a port from 1 to 65535 (e.g. 127.0.0.1:9090 or 0.0.0.0:9090)")
    if any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    return host or DEFAULT_HOST, int(port_text)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def offset_address(address: tuple[str, int], offset: int) -> tuple[str, int]:
    """The address of the `offset`-th process under `graceshell start` (one port each)."""
    host, port = address
    if port + offset > 65535:
        raise ValueError(f"{format_address(address)}: port {port + offset} for a process of `start` is past 65535; "
                         "choose a lower base port")
    return host, port + offset


def parse_metadata_url(text: str) -> str:
    """An http:// base URL for the metadata service (for tests and proxies)."""
    url = str(text).strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or any(c.isspace() for c in url):
        raise ValueError(f"{text!r} is not a base URL such as http://169.254.169.254")
    return url


def parse_provider(text: str) -> str:
    name = str(text).strip().lower()
    if name not in NOTICE_PROVIDERS:
        raise ValueError(f"{text!r} is not one of {', '.join(NOTICE_PROVIDERS)}")
    return name
