"""Downloads from a URL: off by default, https only, allowlisted hosts, public addresses only,
capped in size and time. Real TLS servers on 127.0.0.1 with a throwaway CA; no network."""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.conftest import SHARED_DATA
from training.downloads import DownloadRefused, address_problem, download, host_allowed

WARC = SHARED_DATA / "web" / "warc" / "whirlwind.warc.gz"
WARC_BYTES = WARC.read_bytes()
MB = 1024 * 1024


# --- a throwaway CA and TLS servers -----------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """(ca.pem path) plus a maker of (cert, key) for a host name, signed by that CA."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    folder = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=Orchard test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip

    def leaf(name: str) -> tuple[Path, Path]:
        (folder / f"{name}.ext").write_text(
            f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        run("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
            "-extfile", f"{name}.ext")  # fmt: skip
        return folder / f"{name}.pem", folder / f"{name}.key"

    leaf.ca = folder / "ca.pem"  # type: ignore[attr-defined]
    return leaf


class Handler(BaseHTTPRequestHandler):
    """Routes by the first path segment; the last segment is the file name."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        server = self.server
        server.hits.append(self.path)  # type: ignore[attr-defined]
        route = self.path.split("/")[1]
        base = f"https://localhost:{server.server_address[1]}"
        if route == "data":
            self._send(200, WARC_BYTES)
        elif route in REDIRECT_TO:
            self.send_response(302)
            self.send_header("Location", REDIRECT_TO[route].format(base=base, path=self.path))
            self.end_headers()
        elif route == "big":  # no Content-Length: the cap must stop the stream itself
            self.send_response(200)
            self.end_headers()
            for _ in range(3):
                self.wfile.write(b"x" * MB)
        elif route == "liar":
            self.send_response(200)
            self.send_header("Content-Length", str(10 * 1024 * MB))
            self.end_headers()
        elif route == "short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 500)
        elif route == "stall":  # headers, then nothing
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            server.release.wait(10)  # type: ignore[attr-defined]
        elif route == "trickle":  # one byte at a time, never a long silence
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(100):
                if server.release.wait(0.05):  # type: ignore[attr-defined]
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


REDIRECT_TO = {
    "hop": "/data/whirlwind.warc.gz",  # relative, same host
    "loop": "{path}",
    "to-http": "http://localhost/data/whirlwind.warc.gz",
    "to-other": "https://evil.example/whirlwind.warc.gz",
    "to-private": "https://10.1.2.3/whirlwind.warc.gz",
    "to-metadata": "https://169.254.169.254/latest/meta-data/whirlwind.warc.gz",
}


@pytest.fixture
def tls_server(certs) -> Iterator[Callable[[str], ThreadingHTTPServer]]:
    started: list[ThreadingHTTPServer] = []

    def start(cert_name: str = "localhost") -> ThreadingHTTPServer:
        cert, key = certs(cert_name)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.hits = []  # type: ignore[attr-defined]
        server.release = threading.Event()  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.release.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


@pytest.fixture
def allowed(settings, certs) -> Callable[[ThreadingHTTPServer], str]:
    """Downloads on, localhost allowed (through the test-only loopback switch), the test CA."""

    def allow(server: ThreadingHTTPServer) -> str:
        port = server.server_address[1]
        settings.DEBUG = True
        settings.ORCHARD_DOWNLOADS_ENABLED = True
        settings.ORCHARD_DOWNLOAD_ALLOWED_HOSTS = ["localhost", "10.1.2.3", "169.254.169.254"]
        settings.ORCHARD_DOWNLOAD_ALLOWED_PORTS = [port]
        settings.ORCHARD_DOWNLOAD_CA_BUNDLE = str(certs.ca)
        settings.ORCHARD_DOWNLOAD_ALLOW_LOOPBACK_FOR_TESTS = True
        return f"https://localhost:{port}"

    return allow


def refused(url: str, dest: Path) -> str:
    with pytest.raises(DownloadRefused) as info:
        download(url, dest)
    assert not dest.exists() or not list(dest.iterdir()), "a refused download left a file"
    return str(info.value)


# --- refusals before any connection -----------------------------------------------------------


def test_downloads_are_off_by_default(tmp_path):
    message = refused("https://data.commoncrawl.org/crawl-data/x.warc.gz", tmp_path)
    assert "turned off" in message and "ORCHARD_DOWNLOADS_ENABLED" in message


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://data.commoncrawl.org/x.warc.gz", "only https"),
        ("file:///etc/passwd", "only https"),
        ("ftp://data.commoncrawl.org/x.warc.gz", "only https"),
        ("data:text/plain,hello", "only https"),
        ("/etc/passwd", "only https"),
        ("https://user:pw@data.commoncrawl.org/x.warc.gz", "user name or password"),
        ("https://data.commoncrawl.org@evil.example/x.warc.gz", "user name or password"),
        ("https://evil.example/x.warc.gz", "evil.example is not on the list of allowed hosts"),
        ("https://commoncrawl.org.evil.example/x", "not on the list"),
        ("https://data.commoncrawl.org:8443/x.warc.gz", "port 8443 is not allowed"),
        ("https://data.commoncrawl.org /x.warc.gz", "spaces"),
        ("https://data.commoncrawl.org\\@evil.example/x", "backslashes"),
        ("https://loc_al/x", "not a valid host name"),
    ],
)
def test_urls_that_are_not_https_to_an_allowed_host_are_refused(settings, tmp_path, url, message):
    settings.ORCHARD_DOWNLOADS_ENABLED = True
    assert message in refused(url, tmp_path)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("localhost", "resolves to 127.0.0.1, a loopback address"),
        ("2130706433", "resolves to 127.0.0.1, a loopback address"),  # 127.0.0.1 as a number
        ("10.0.0.1", "a private address"),
        ("192.168.1.10", "a private address"),
        ("169.254.169.254", "the cloud metadata address"),
        ("169.254.10.10", "a link-local address"),
        ("100.64.0.1", "a carrier-grade NAT address"),
        ("0.0.0.0", "an unspecified address"),
        ("[::1]", "a loopback address"),
        ("[::ffff:127.0.0.1]", "a loopback address (inside an IPv6 address)"),
        ("[::ffff:a9fe:a9fe]", "the cloud metadata address (inside an IPv6 address)"),
        ("[fe80::1]", "a link-local address"),
        ("[fd00::1]", "a private address"),
    ],
)
def test_hosts_resolving_to_internal_addresses_are_refused(settings, tmp_path, host, message):
    settings.ORCHARD_DOWNLOADS_ENABLED = True
    settings.ORCHARD_DOWNLOAD_ALLOWED_HOSTS = [host.strip("[]")]
    result = refused(f"https://{host}/x.warc.gz", tmp_path)
    assert message in result and "refused" in result


@pytest.mark.parametrize(
    "address",
    ["2002:7f00:1::", "64:ff9b::a9fe:a9fe", "2001:0:4136:e378:8000:63bf:f5ff:fffe", "224.0.0.1",
     "240.0.0.1", "ff02::1"],
)  # fmt: skip
def test_internal_addresses_wrapped_in_ipv6_or_special_ranges_are_refused(address):
    assert address_problem(ipaddress.ip_address(address)) is not None


def test_public_addresses_pass():
    assert address_problem(ipaddress.ip_address("8.8.8.8")) is None
    assert address_problem(ipaddress.ip_address("2606:4700:4700::1111")) is None


def test_allowlist_patterns_match_exact_names_and_subdomains_only(settings):
    settings.ORCHARD_DOWNLOAD_ALLOWED_HOSTS = ["huggingface.co", "*.hf.co"]
    assert host_allowed("huggingface.co") and host_allowed("cas-bridge.xethub.hf.co")
    assert not host_allowed("cdn.huggingface.co") and not host_allowed("evilhf.co")
    assert not host_allowed("hf.co") and not host_allowed("huggingface.co.evil.example")


def test_the_loopback_switch_for_tests_is_refused_without_debug(settings, tmp_path):
    settings.ORCHARD_DOWNLOADS_ENABLED = True
    settings.ORCHARD_DOWNLOAD_ALLOWED_HOSTS = ["localhost"]
    settings.ORCHARD_DOWNLOAD_ALLOW_LOOPBACK_FOR_TESTS = True
    settings.DEBUG = False
    assert "needs DEBUG" in refused("https://localhost/x.warc.gz", tmp_path)


# --- real HTTPS downloads from a local server --------------------------------------------------


def test_a_file_arrives_intact_over_verified_tls(tls_server, allowed, tmp_path):
    base = allowed(tls_server())
    path = download(f"{base}/data/whirlwind.warc.gz", tmp_path / "in")
    assert path == tmp_path / "in" / "whirlwind.warc.gz"
    assert path.read_bytes() == WARC_BYTES
    assert [p.name for p in path.parent.iterdir()] == ["whirlwind.warc.gz"]


def test_a_redirect_on_the_allowed_host_is_followed(tls_server, allowed, tmp_path):
    server = tls_server()
    path = download(f"{allowed(server)}/hop/whirlwind.warc.gz", tmp_path)
    assert path.read_bytes() == WARC_BYTES and path.name == "whirlwind.warc.gz"
    assert server.hits == ["/hop/whirlwind.warc.gz", "/data/whirlwind.warc.gz"]


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("to-http", "only https"),
        ("to-other", "evil.example is not on the list of allowed hosts"),
        ("to-private", "resolves to 10.1.2.3, a private address"),
        ("to-metadata", "the cloud metadata address"),
        ("loop", "more than 5 redirects"),
        ("missing", "answered 404"),
    ],
)
def test_redirects_are_checked_at_every_hop(tls_server, allowed, tmp_path, route, message):
    server = tls_server()
    result = refused(f"{allowed(server)}/{route}/whirlwind.warc.gz", tmp_path)
    assert message in result
    if route.startswith("to-"):
        assert result.startswith("redirected to ")


def test_a_body_over_the_cap_is_refused_mid_stream(tls_server, allowed, settings, tmp_path):
    base = allowed(tls_server())
    settings.ORCHARD_DOWNLOAD_MAX_MB = 1
    assert "larger than the 1 MB download limit" in refused(f"{base}/big/x.txt", tmp_path)


def test_an_announced_size_over_the_cap_is_refused_before_reading(tls_server, allowed, tmp_path):
    base = allowed(tls_server())
    started = time.monotonic()
    assert "larger than the" in refused(f"{base}/liar/x.txt", tmp_path)
    assert time.monotonic() - started < 5


def test_a_body_cut_short_is_refused(tls_server, allowed, tmp_path):
    base = allowed(tls_server())
    assert "closed after 500 of 1000 bytes" in refused(f"{base}/short/x.txt", tmp_path)


@pytest.mark.parametrize("route", ["stall", "trickle"])
def test_a_server_past_the_deadline_is_refused(tls_server, allowed, settings, tmp_path, route):
    base = allowed(tls_server())
    settings.ORCHARD_DOWNLOAD_TIMEOUT_SECONDS = 1
    started = time.monotonic()
    assert "took longer than 1 seconds" in refused(f"{base}/{route}/x.txt", tmp_path)
    assert time.monotonic() - started < 3


def test_a_certificate_for_another_name_is_refused(tls_server, allowed, tmp_path):
    base = allowed(tls_server(cert_name="other.example"))
    message = refused(f"{base}/data/whirlwind.warc.gz", tmp_path)
    assert "TLS certificate of localhost could not be verified" in message


def test_a_certificate_from_an_untrusted_ca_is_refused(tls_server, allowed, settings, tmp_path):
    base = allowed(tls_server())
    settings.ORCHARD_DOWNLOAD_CA_BUNDLE = ""  # the system CAs do not know the test CA
    assert "could not be verified" in refused(f"{base}/data/whirlwind.warc.gz", tmp_path)


# --- the upload pages --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_url_field_shows_only_where_downloads_are_enabled(client_for, settings):
    tom = client_for("tom")
    assert "Or a URL to download" not in tom.get("/webdata/upload/").content.decode()
    settings.ORCHARD_DOWNLOADS_ENABLED = True
    assert "Or a URL to download" in tom.get("/webdata/upload/").content.decode()
    assert "Or a URL to download" in tom.get("/corpora/upload/").content.decode()
    assert "Or a URL to download" not in tom.get("/blocklists/upload/").content.decode()


@pytest.mark.django_db
def test_a_url_on_the_web_data_page_registers_an_artifact(client_for, tls_server, allowed):
    from training.models import Artifact
    from training.services import artifacts_root

    url = f"{allowed(tls_server())}/hop/whirlwind.warc.gz"
    response = client_for("tom").post("/webdata/upload/", {"url": url, "name": "crawl"})
    artifact = Artifact.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/artifacts/{artifact.pk}/"
    assert artifact.kind == "webdata" and artifact.name == "crawl"
    assert artifact.meta["origin"] == f"download:{url}" and artifact.meta["documents"] == 1
    assert artifact.meta["original_name"] == "whirlwind.warc.gz"
    assert (artifact.abspath() / "webdata.warc.gz").read_bytes() == WARC_BYTES
    assert not list((artifacts_root() / ".incoming").iterdir()), "staging left behind"


@pytest.mark.django_db
def test_a_refused_url_is_a_form_error_and_nothing_is_kept(client_for, tls_server, allowed):
    from training.models import Artifact

    base = allowed(tls_server())
    tom = client_for("tom")
    for url, message in [
        (f"{base}/to-other/whirlwind.warc.gz", "evil.example is not on the list"),
        (f"{base}/data/report.pdf", "the URL must name WARC/WET"),
        ("http://localhost/x.warc.gz", "only https"),
    ]:
        response = tom.post("/webdata/upload/", {"url": url})
        assert response.status_code == 400 and message in response.content.decode()
    upload = SimpleUploadedFile("c.txt", b"one document\n")
    both = tom.post("/corpora/upload/", {"url": f"{base}/data/x.txt", "file": upload})
    assert both.status_code == 400 and "Choose one" in both.content.decode()
    assert not Artifact.objects.exists()


@pytest.mark.django_db
def test_a_labeler_cannot_download(client_for, tls_server, allowed):
    from training.models import Artifact

    server = tls_server()
    url = f"{allowed(server)}/data/whirlwind.warc.gz"
    assert client_for("lena").post("/webdata/upload/", {"url": url}).status_code == 403
    assert client_for("rita").post("/webdata/upload/", {"url": url}).status_code == 403
    assert not Artifact.objects.exists() and server.hits == []
