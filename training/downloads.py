"""Data files fetched from the web (a Common Crawl WARC path, a Hub dataset file), for the upload
pages. Off unless ``ORCHARD_DOWNLOADS_ENABLED``; the fetched file then goes through the same
validation and registration as an upload (``training.uploads.download_file``).

Guarantees, checked again at every redirect hop (at most ``ORCHARD_DOWNLOAD_MAX_REDIRECTS``):

- https only, no user:password@ in the URL, port 443 unless ``ORCHARD_DOWNLOAD_ALLOWED_PORTS``
  names another; the host must be on ``ORCHARD_DOWNLOAD_ALLOWED_HOSTS`` (exact, or ``*.suffix``
  for any name under ``suffix``).
- The host is resolved here and EVERY address must be public: private, loopback, link-local
  (169.254.169.254, the cloud metadata service), CGNAT 100.64/10, multicast, reserved and
  unspecified addresses are refused, also when wrapped in IPv6 (::ffff:a.b.c.d, 6to4, Teredo,
  NAT64). The connection goes to that checked address, never to a second lookup (no DNS
  rebinding), with TLS certificate and hostname verification for the URL's host name (SNI).
- No proxy from the environment is used; bodies are not decompressed.
- At most ``ORCHARD_DOWNLOAD_MAX_MB`` (refused up front when Content-Length says more, else as
  soon as the stream passes it) and ``ORCHARD_DOWNLOAD_TIMEOUT_SECONDS`` overall, enforced by a
  watchdog that closes the socket (a server trickling bytes cannot stretch it). A refused or
  broken download leaves no file behind.

Not covered: the system resolver's own time (``getaddrinfo`` cannot be interrupted) comes on
top of the deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from django.conf import settings

REDIRECTS = {301, 302, 303, 307, 308}
CHUNK = 1 << 20
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = ipaddress.ip_address("169.254.169.254")


class DownloadRefused(ValueError):
    pass


def enabled() -> bool:
    return bool(settings.ORCHARD_DOWNLOADS_ENABLED)


def cap_bytes() -> int:
    return settings.ORCHARD_DOWNLOAD_MAX_MB * 1024 * 1024


def filename_from_url(url: str) -> str:
    """The file name a URL's last path segment gives (safe characters only)."""
    last = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", last).lstrip(".")[:200]
    return safe or "download"


def download(url: str, dest_dir: Path) -> Path:
    """Fetch ``url`` into ``dest_dir`` (named after the URL) or raise ``DownloadRefused``."""
    if not enabled():
        raise DownloadRefused(
            "Downloading from a URL is turned off on this server (ORCHARD_DOWNLOADS_ENABLED)."
        )
    timeout = settings.ORCHARD_DOWNLOAD_TIMEOUT_SECONDS
    deadline = time.monotonic() + timeout
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename_from_url(url)
    current = url
    for hop in range(settings.ORCHARD_DOWNLOAD_MAX_REDIRECTS + 1):
        try:
            host, port, addresses = check_url(current)
        except DownloadRefused as exc:
            raise DownloadRefused(
                f"redirected to {current[:200]}: {exc}" if hop else str(exc)
            ) from None
        conn, response, watchdog = _open(current, host, port, addresses, deadline, timeout)
        try:
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise DownloadRefused(f"{host} answered a redirect without a Location")
                current = urljoin(current, location.strip())
                continue
            if response.status != 200:
                raise DownloadRefused(f"{host} answered {response.status} {response.reason}")
            _save(response, target, host, deadline, timeout)
            return target
        finally:
            watchdog.cancel()
            response.close()
            conn.close()
    raise DownloadRefused(
        f"more than {settings.ORCHARD_DOWNLOAD_MAX_REDIRECTS} redirects, stopped at {current[:200]}"
    )


def check_url(url: str) -> tuple[str, int, list[str]]:
    """(host, port, checked addresses) for a URL that may be fetched, else ``DownloadRefused``."""
    if len(url) > 2000:
        raise DownloadRefused("the URL is longer than 2000 characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in url):
        raise DownloadRefused("the URL holds spaces, control characters or backslashes")
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        given = f", not {parts.scheme}:" if parts.scheme else ""
        raise DownloadRefused(f"only https:// URLs can be downloaded{given}")
    if "@" in parts.netloc:
        raise DownloadRefused("a URL with a user name or password (user@host) is not accepted")
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port or 443
    except ValueError:
        raise DownloadRefused("the URL's port is not a number") from None
    literal = _ip_literal(host)
    if not host or (literal is None and not _HOSTNAME.match(host)):
        raise DownloadRefused(f"{host or 'the URL'} is not a valid host name")
    if not host_allowed(host):
        allowed = ", ".join(settings.ORCHARD_DOWNLOAD_ALLOWED_HOSTS) or "none"
        raise DownloadRefused(f"{host} is not on the list of allowed hosts ({allowed})")
    if port != 443 and port not in settings.ORCHARD_DOWNLOAD_ALLOWED_PORTS:
        raise DownloadRefused(f"port {port} is not allowed (only 443)")
    return host, port, resolve_public(host, port)


def host_allowed(host: str) -> bool:
    for pattern in settings.ORCHARD_DOWNLOAD_ALLOWED_HOSTS:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif pattern and host == pattern:
            return True
    return False


def resolve_public(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, all checked; one bad address refuses the host."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadRefused(f"{host} could not be resolved ({exc})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        reason = address_problem(ipaddress.ip_address(address.split("%", 1)[0]))
        if reason:
            raise DownloadRefused(f"{host} resolves to {address}, {reason}; refused")
    if not addresses:
        raise DownloadRefused(f"{host} has no address")
    return addresses


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be contacted, or None for a public one."""
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_problem(embedded)
            if inner:
                return f"{inner} (inside an IPv6 address)"
    if ip.is_loopback:
        if settings.ORCHARD_DOWNLOAD_ALLOW_LOOPBACK_FOR_TESTS:
            if not settings.DEBUG:
                return "a loopback address (the test-only loopback switch needs DEBUG)"
            return None
        return "a loopback address"
    if ip == _METADATA:
        return "the cloud metadata address"
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_link_local, "a link-local address"),
        (ip.version == 4 and ip in _CGNAT, "a carrier-grade NAT address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    return next((reason for bad, reason in checks if bad), None)


def _ip_literal(host: str) -> Any:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand; TLS verifies the certificate for ``host``."""

    def __init__(self, host: str, port: int, address: str, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self.pinned_address = address
        self.kept_sock: socket.socket | None = None  # http.client drops .sock on "close" replies

    def connect(self) -> None:
        sock = socket.create_connection((self.pinned_address, self.port), self.timeout)
        self.sock = self.kept_sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ORCHARD_DOWNLOAD_CA_BUNDLE or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _open(
    url: str, host: str, port: int, addresses: list[str], deadline: float, timeout: int
) -> tuple[_PinnedHTTPSConnection, http.client.HTTPResponse, threading.Timer]:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    context = _tls_context()
    last_error: Exception | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        conn = _PinnedHTTPSConnection(host, port, address, timeout=remaining, context=context)
        watchdog = threading.Timer(remaining, _abort, args=(conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.request(
                "GET", path, headers={"User-Agent": "Orchard", "Accept-Encoding": "identity"}
            )
            return conn, conn.getresponse(), watchdog
        except ssl.SSLCertVerificationError as exc:
            watchdog.cancel()
            conn.close()
            raise DownloadRefused(
                f"the TLS certificate of {host} could not be verified ({exc.verify_message})"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            watchdog.cancel()
            conn.close()
            last_error = exc
    if time.monotonic() >= deadline:
        raise DownloadRefused(f"the download took longer than {timeout} seconds")
    raise DownloadRefused(f"could not fetch from {host}: {last_error}")


def _abort(conn: _PinnedHTTPSConnection) -> None:
    """Deadline reached: cut the socket under whatever read is waiting on it."""
    if conn.kept_sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn.kept_sock, socket.SHUT_RDWR)


def _save(
    response: http.client.HTTPResponse, target: Path, host: str, deadline: float, timeout: int
) -> None:
    cap = cap_bytes()
    cap_mb = settings.ORCHARD_DOWNLOAD_MAX_MB
    announced = response.getheader("Content-Length")
    expected = int(announced) if announced and announced.strip().isdigit() else None
    if expected is not None and expected > cap:
        raise DownloadRefused(f"the file is larger than the {cap_mb} MB download limit")
    part = target.with_name(target.name + ".part")
    received = 0
    try:
        with open(part, "wb") as fh:
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    if time.monotonic() >= deadline:
                        raise DownloadRefused(
                            f"the download took longer than {timeout} seconds"
                        ) from None
                    raise DownloadRefused(f"the download from {host} broke off ({exc})") from None
                if not block:
                    break
                received += len(block)
                if received > cap:
                    raise DownloadRefused(f"the file is larger than the {cap_mb} MB download limit")
                fh.write(block)
        if time.monotonic() >= deadline:
            raise DownloadRefused(f"the download took longer than {timeout} seconds")
        if expected is not None and received != expected:
            raise DownloadRefused(
                f"the connection to {host} closed after {received} of {expected} bytes"
            )
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
