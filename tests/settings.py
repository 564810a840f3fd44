"""Settings for the test suite: the real settings, a throwaway var/ folder, fast hashing."""

import os
import tempfile

os.environ.setdefault("ORCHARD_VAR_DIR", tempfile.mkdtemp(prefix="orchard-test-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray Hub download fails fast
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from webapp.settings import *  # noqa: E402,F403
from webapp.settings import DATABASES, VAR_DIR  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ORCHARD_EXTRA_RUN_KINDS = ["tests.support.countdown.COUNTDOWN_KIND"]
# Tests that count runs would see the follow-up evaluations; the tests of that feature turn it on.
ORCHARD_AUTO_EVALUATE = False
WHITENOISE_AUTOREFRESH = True
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Worker subprocesses in integration tests open the test database by name, so SQLite's test
# database lives in a file rather than in memory.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}

# Rate limits stay out of the way of the suite (tests/test_limits.py sets its own), and counts
# never leak between runs through a shared cache.
ORCHARD_LOGIN_RATE = "100000/m"
ORCHARD_GENERATION_RATE = "100000/m"
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
