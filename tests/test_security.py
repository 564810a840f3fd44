"""Security properties that hold for every page: headers, escaping, path confinement."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from training import services, uploads
from training.models import Artifact, PathOutsideArtifactsRoot, Run, RunStatus

pytestmark = pytest.mark.django_db

PAYLOAD = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'><svg onload=alert(3)>"


def csp_directives(header: str) -> dict[str, list[str]]:
    """``"script-src 'self'; img-src 'self' data:"`` as ``{"script-src": ["'self'"], ...}``."""
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def test_pages_send_a_strict_content_security_policy_and_headers(client_for):
    response = client_for("tom").get("/runs/")
    csp = response["Content-Security-Policy"]
    assert (
        "script-src 'self'" in csp
        and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    )
    assert "frame-ancestors 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


@pytest.mark.parametrize(
    ("who", "path"),
    [(None, "/login/"), ("lena", "/labeling/"), ("lena", "/chat/"), ("tom", "/no-such-page/")],
)
def test_no_page_allows_inline_script(client_for, who, path):
    """Inline script, inline event handlers, javascript: URLs and eval are all refused by the
    browser, on every kind of page (an error page too): only files from our own origin run."""
    directives = csp_directives(client_for(who).get(path)["Content-Security-Policy"])
    assert directives["script-src"] == ["'self'"]
    assert directives["default-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["base-uri"] == ["'self'"]
    assert "script-src-attr" not in directives and "script-src-elem" not in directives


def test_htmx_runs_no_script_from_responses(client_for):
    """htmx can eval ``hx-on``/``js:`` values and run <script> in swapped HTML; both are off."""
    import json
    import re

    page = client_for("lena").get("/labeling/").content.decode()
    config = json.loads(re.search(r'<meta name="htmx-config" content=\'([^\']+)\'>', page)[1])
    assert config["allowEval"] is False and config["allowScriptTags"] is False
    assert config["selfRequestsOnly"] is True


def test_the_xss_payloads_are_many_distinct_and_each_names_itself():
    """The browser tests' payloads: at least 60, one line each, no NUL, each with its number."""
    from tests.support.xss import PAYLOADS, mentions

    assert len(PAYLOADS) >= 60 and len(set(PAYLOADS)) == len(PAYLOADS)
    for n, payload in enumerate(PAYLOADS, 1):
        assert "\n" not in payload and "\0" not in payload, n
        # one line even where str.splitlines also splits (U+2028 and the like, at the ends only)
        assert len([line for line in payload.splitlines() if line.strip()]) == 1, n
        assert mentions(payload, n), payload


def test_user_and_run_text_is_escaped_everywhere_it_is_shown(client_for, people):
    tom = client_for("tom")
    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("x.txt", f"{PAYLOAD}\n".encode()),
        name=PAYLOAD,
        user=people["tom"],
    )
    run = services.run_create(kind="countdown", config={}, inputs={}, user=people["tom"])
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.FAILED,
        error=PAYLOAD,
        traceback=PAYLOAD,
        log_tail=PAYLOAD,
        message=PAYLOAD,
    )
    for url in (f"/runs/{run.pk}/", "/runs/", f"/artifacts/{corpus.pk}/", "/artifacts/", "/"):
        body = tom.get(url).content.decode()
        assert "<script>alert" not in body and "<img src=x" not in body, url
        assert "<svg onload" not in body, url


@pytest.mark.parametrize(
    "path", ["../../etc/passwd", "/etc/passwd", "corpus/../../x", "corpus/%2e%2e/x"]
)
def test_artifact_paths_never_resolve_outside_the_root(path):
    artifact = Artifact(kind="corpus", name="x", path=path, sha256="0" * 64)
    if "%2e" in path:  # not decoded: stays a literal (harmless) folder name under the root
        assert artifact.abspath().name == "x"
        return
    with pytest.raises(PathOutsideArtifactsRoot):
        artifact.abspath()


def test_a_symlink_out_of_the_root_is_refused(tmp_path, settings):
    root = tmp_path / "artifacts"
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "escape").symlink_to("/etc")
    settings.ARTIFACTS_ROOT = root
    with pytest.raises(PathOutsideArtifactsRoot):
        Artifact(kind="corpus", name="x", path="corpus/escape/passwd", sha256="0").abspath()


def test_the_session_cookie_is_httponly_and_samesite(client, people):
    response = client.post("/login/", {"username": "tom", "password": "pw-tom"})
    assert response.status_code == 302
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] is True and cookie["samesite"] == "Lax"


def test_no_code_loads_pickles_or_remote_code():
    """Model files are untrusted: no bare torch.load, no pickle.load, never remote model code."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [
        *root.glob("training/**/*.py"),
        *root.glob("webapp/**/*.py"),
        *root.glob("labeling/**/*.py"),
    ]:
        text = path.read_text()
        for line in text.splitlines():
            if re.search(r"torch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path}: {line.strip()}")
            if re.search(r"pickle\.loads?\(|trust_remote_code\s*=\s*True", line):
                offenders.append(f"{path}: {line.strip()}")
    assert offenders == []
