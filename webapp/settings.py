"""Orchard settings: everything comes from the environment, with embedded defaults.

No variable set: SQLite (WAL) under var/, Celery's filesystem broker under var/broker/,
artifacts under var/artifacts/, DEBUG on, a secret key generated once into var/secret_key.
Production: DEBUG=0, SECRET_KEY (or SECRET_KEY_FILE), ALLOWED_HOSTS, DATABASE_URL=postgres://...,
CELERY_BROKER_URL=redis://..., ORCHARD_ARTIFACTS on storage every worker mounts.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


# --- environment helpers ---------------------------------------------------------------------


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    return Path(os.environ.get(name) or default).resolve()


# A key that is short, repetitive or Django's placeholder is refused outside DEBUG, so a
# production deployment can never run on a secret that is written down somewhere.
def _is_weak_secret(key: str) -> bool:
    return len(key) < 50 or len(set(key)) < 5 or key.startswith("django-insecure")


def env_secret(name: str, *, debug: bool, fallback_file: Path) -> str:
    value = os.environ.get(name, "")
    file_name = os.environ.get(f"{name}_FILE")
    if not value and file_name:
        value = Path(file_name).read_text().strip()
    if value:
        if not debug and _is_weak_secret(value):
            raise ImproperlyConfigured(f"{name} is too weak: use 50+ random characters")
        return value
    if not debug:
        raise ImproperlyConfigured(f"{name} (or {name}_FILE) must be set when DEBUG is off")
    return _generated_secret(fallback_file)


def _generated_secret(path: Path) -> str:
    """A per-installation key kept on disk, so sessions survive restarts in development."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(64)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


# --- core -------------------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", True)
VAR_DIR = env_path("ORCHARD_VAR_DIR", BASE_DIR / "var")
ARTIFACTS_ROOT = env_path("ORCHARD_ARTIFACTS", VAR_DIR / "artifacts")
# Local model folders (for example one downloaded from the Hub) are registered from here only.
IMPORT_ROOT = env_path("ORCHARD_IMPORT_DIR", VAR_DIR / "import")
SECRET_KEY = env_secret("SECRET_KEY", debug=DEBUG, fallback_file=VAR_DIR / "secret_key")
ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "django_ratelimit",
    "template_partials",
    "webapp",
    "training",
    "labeling",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django_ratelimit.middleware.RatelimitMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"
AUTH_USER_MODEL = "webapp.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webapp.roles.role_context",
                "labeling.chat_feedback.projects_context",
            ],
        },
    }
]

# --- database ---------------------------------------------------------------------------------

_SQLITE_OPTIONS = {
    # WAL lets readers proceed while the worker writes; IMMEDIATE takes the write lock at BEGIN,
    # so concurrent writers queue on the timeout instead of failing with "database is locked".
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
}


def _database() -> dict:
    url = env_str("DATABASE_URL")
    if url:
        db = dj_database_url.parse(url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60))
    else:
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": VAR_DIR / "db.sqlite3"}
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db.setdefault("OPTIONS", {}).update(_SQLITE_OPTIONS)
    return db


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- auth and security ------------------------------------------------------------------------

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("SECURE_PROXY_SSL_HEADER", False):  # behind a proxy that sets X-Forwarded-Proto
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Scripts only from our own origin: model and labeler text can never run as script.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# --- static files -----------------------------------------------------------------------------

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_path("STATIC_ROOT", VAR_DIR / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# In development static files are served straight from the app folders (no collectstatic).
WHITENOISE_AUTOREFRESH = DEBUG
WHITENOISE_USE_FINDERS = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- uploads ----------------------------------------------------------------------------------

ORCHARD_MAX_UPLOAD_MB = env_int("ORCHARD_MAX_UPLOAD_MB", 1024)
FILE_UPLOAD_HANDLERS = ["webapp.uploads.CappedTemporaryFileUploadHandler"]
FILE_UPLOAD_TEMP_DIR = None  # system temp; moved into ARTIFACTS_ROOT after validation

# --- downloads (training/downloads.py) --------------------------------------------------------

# Fetching a data file from a URL on the upload pages: off unless turned on; https only, from
# these hosts (exact, or "*.suffix"), public addresses only, capped in size and time.
ORCHARD_DOWNLOADS_ENABLED = env_bool("ORCHARD_DOWNLOADS_ENABLED", False)
ORCHARD_DOWNLOAD_ALLOWED_HOSTS = env_list(
    "ORCHARD_DOWNLOAD_ALLOWED_HOSTS",
    ["data.commoncrawl.org", "huggingface.co", "cdn-lfs.huggingface.co", "cas-bridge.xethub.hf.co"],
)
# 443 is always allowed; list more (comma-separated) only for a mirror that needs them.
ORCHARD_DOWNLOAD_ALLOWED_PORTS = [int(p) for p in env_list("ORCHARD_DOWNLOAD_ALLOWED_PORTS", [])]
ORCHARD_DOWNLOAD_MAX_MB = env_int("ORCHARD_DOWNLOAD_MAX_MB", ORCHARD_MAX_UPLOAD_MB)
ORCHARD_DOWNLOAD_TIMEOUT_SECONDS = env_int("ORCHARD_DOWNLOAD_TIMEOUT_SECONDS", 600)
ORCHARD_DOWNLOAD_MAX_REDIRECTS = 5
ORCHARD_DOWNLOAD_CA_BUNDLE = env_str("ORCHARD_DOWNLOAD_CA_BUNDLE", "")  # else the system CAs
# Tests only (not read from the environment): lets a download reach a TLS server on 127.0.0.1;
# refused unless DEBUG is on.
ORCHARD_DOWNLOAD_ALLOW_LOOPBACK_FOR_TESTS = False

# --- API --------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an API client without credentials gets 401 + WWW-Authenticate.
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Orchard API",
    "DESCRIPTION": "Runs, artifacts and data for building an assistant end to end.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery -----------------------------------------------------------------------------------

BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    else {}
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True  # the Run row is the source of truth, not a result backend
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"training.tasks.execute_run": {"queue": "training"}}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

# --- cache and rate limits --------------------------------------------------------------------

# Rate limits count in the cache, which every web process must share: Redis when the broker is
# Redis (several machines), else files under var/ (several processes on one machine).
CACHE_URL = env_str("CACHE_URL", CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else "")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
        if CACHE_URL
        else {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    )
}
RATELIMIT_VIEW = "webapp.views.rate_limited"
# The file cache is shared by the processes of one machine: enough for the embedded defaults.
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]
ORCHARD_LOGIN_RATE = env_str("ORCHARD_LOGIN_RATE", "10/m")
ORCHARD_GENERATION_RATE = env_str("ORCHARD_GENERATION_RATE", "60/m")

# --- runs -------------------------------------------------------------------------------------

# A worker holds a run through a lease it renews every third of this; a run whose lease lapsed
# (its worker died) is re-queued by the sweeper and resumed from its last complete checkpoint.
ORCHARD_RUN_LEASE_SECONDS = env_int("ORCHARD_RUN_LEASE_SECONDS", 60)
ORCHARD_SWEEP_INTERVAL_SECONDS = env_int("ORCHARD_SWEEP_INTERVAL_SECONDS", 30)
ORCHARD_RUN_MAX_ATTEMPTS = env_int("ORCHARD_RUN_MAX_ATTEMPTS", 3)
# A queued run whose broker message may have been lost (broker flushed or restarted) is sent
# again after this long; a duplicate message is harmless (the second claim finds it taken).
ORCHARD_REQUEUE_QUEUED_AFTER_SECONDS = env_int("ORCHARD_REQUEUE_QUEUED_AFTER_SECONDS", 600)
# Every successful training run launches an evaluation of its checkpoint (training/evaluations.py).
ORCHARD_AUTO_EVALUATE = env_bool("ORCHARD_AUTO_EVALUATE", True)
# Extra run kinds, as dotted paths to RunKind objects (tests register a deterministic one).
ORCHARD_EXTRA_RUN_KINDS = env_list("ORCHARD_EXTRA_RUN_KINDS", [])

# --- generation (playground, chat) -------------------------------------------------------------

ORCHARD_ENGINE_CACHE_SIZE = env_int("ORCHARD_ENGINE_CACHE_SIZE", 2)  # models kept loaded
ORCHARD_MAX_CONCURRENT_GENERATIONS = env_int("ORCHARD_MAX_CONCURRENT_GENERATIONS", 2)
ORCHARD_GENERATION_RETRY_AFTER_SECONDS = env_int("ORCHARD_GENERATION_RETRY_AFTER_SECONDS", 5)
ORCHARD_MAX_NEW_TOKENS = env_int("ORCHARD_MAX_NEW_TOKENS", 512)  # server-side cap
ORCHARD_MAX_GENERATIONS_PER_USER = env_int("ORCHARD_MAX_GENERATIONS_PER_USER", 2)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
