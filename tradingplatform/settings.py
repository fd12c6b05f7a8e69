"""Project settings, read from the environment with django-environ.

Every value that differs between machines comes from an environment variable (listed
in the README) with a default that lets a fresh checkout run: SQLite under `var/`,
in-process cache and channel layer, and, with DEBUG on, a secret key and an
encryption key generated once into `var/`. With DEBUG off nothing is generated: a
missing secret stops startup with a message naming the variable.
"""

import re
import urllib.parse
from decimal import Decimal, InvalidOperation
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
VAR_DIR.mkdir(exist_ok=True)

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)


def _required_or_local(name: str, generate) -> str:
    """A secret from the environment; with DEBUG on, one generated once into var/."""
    value = env.str(name, default="")
    if value:
        return value
    if not DEBUG:
        raise ImproperlyConfigured(f"Set the {name} environment variable (required when DEBUG is off).")
    path = VAR_DIR / name.lower()
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(generate())
    return path.read_text().strip()


SECRET_KEY = _required_or_local("SECRET_KEY", lambda: Fernet.generate_key().decode() * 2)
# It signs sessions and the broker login's state: with DEBUG off a guessable one (Django's own
# `check --deploy` rule: under 50 characters, under 5 different ones, or the startproject
# placeholder) stops startup instead of a warning nobody reads.
if not DEBUG and (len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure-")):
    raise ImproperlyConfigured(
        "SECRET_KEY is too weak: use at least 50 random characters"
        " (python -c 'import secrets; print(secrets.token_urlsafe(50))')."
    )

# Comma-separated Fernet keys, newest first: the first encrypts, all decrypt. Rotate
# by prepending a new key and running `manage.py rotate_encryption_keys`.
FIELD_ENCRYPTION_KEYS = [
    key.strip()
    for key in _required_or_local("FIELD_ENCRYPTION_KEYS", lambda: Fernet.generate_key().decode()).split(",")
    if key.strip()
]
if not FIELD_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS holds no key (set one Fernet key, or several comma-separated).")
for _key in FIELD_ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS holds a value that is not a Fernet key (32 url-safe base64 bytes)."
        ) from exc

if DEBUG:
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
else:
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("Set the ALLOWED_HOSTS environment variable (required when DEBUG is off).")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    # Only so the API's docs page (/api/v1/docs) takes Swagger UI from our static files: without it
    # django-ninja loads it from a CDN with an inline script, which the Content-Security-Policy refuses.
    "ninja",
    "django_celery_beat",
    "accounts",
    "brokers",
    "brokers.paper",
    "orders",
    "portfolio",
    "monitoring",
]

MIDDLEWARE = [
    # First, so every log line a request causes (and its response) carries the request id.
    "tradingplatform.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "tradingplatform.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Sessions, CSRF, the signed-in user and messages serve the web pages; the API (/api/, which
    # authenticates each call by its key and sets request.user itself) passes them by.
    "tradingplatform.middleware.WebSessionMiddleware",
    # Below the session (it reads request.user, set further down): signed-in pages, API answers.
    "tradingplatform.middleware.PrivateAnswersMiddleware",
    "django.middleware.common.CommonMiddleware",
    "tradingplatform.middleware.WebCsrfViewMiddleware",
    "tradingplatform.middleware.WebAuthenticationMiddleware",
    "tradingplatform.middleware.WebMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tradingplatform.middleware.HtmxLoginRedirectMiddleware",
    "accounts.middleware.UserTimezoneMiddleware",
    "tradingplatform.middleware.ApiErrorShapeMiddleware",
]

ROOT_URLCONF = "tradingplatform.urls"
ASGI_APPLICATION = "tradingplatform.asgi.application"
WSGI_APPLICATION = "tradingplatform.wsgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------
# SQLite by default. WAL lets the web process read while a Celery worker writes, the
# busy timeout makes a writer wait for the lock instead of failing at once, and
# IMMEDIATE transactions take the write lock up front so two writers never deadlock
# upgrading a read lock. A mysql:// URL uses mysqlclient in strict mode with utf8mb4, through
# Django's MySQL backend with fewer round trips per transaction (tradingplatform/dbbackends/mysql).
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db.setdefault("OPTIONS", {}).update(
        {
            "timeout": env.int("SQLITE_BUSY_TIMEOUT_S", default=20),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
elif _db["ENGINE"] == "django.db.backends.mysql":
    _db["ENGINE"] = "tradingplatform.dbbackends.mysql"
    _db.setdefault("OPTIONS", {}).update(
        {
            "charset": "utf8mb4",
            "init_command": (
                "SET sql_mode='STRICT_TRANS_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO'"
            ),
            "isolation_level": "read committed",
        }
    )
    _db.setdefault("TEST", {}).update({"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"})
_db["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
_db["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# --- Redis: cache, channel layer, Celery broker -----------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CACHE_KEY_PREFIX = env.str("CACHE_KEY_PREFIX", default="tp")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "tradingplatform.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": {"socket_timeout": 5, "socket_connect_timeout": 5},
        }
    }
    # Per process and event loop: at most this many Redis connections (callers beyond it wait
    # up to the pool timeout), and a socket timeout longer than the layer's 5 s blocking receive
    # (redis-py 8's defaults, 100 and 5 s, fail at about 100 sockets; see channel_layer.py).
    CHANNEL_LAYER_MAX_CONNECTIONS = env.int("CHANNEL_LAYER_MAX_CONNECTIONS", default=500)
    CHANNEL_LAYER_POOL_TIMEOUT_S = env.float("CHANNEL_LAYER_POOL_TIMEOUT_S", default=10.0)
    CHANNEL_LAYER_SOCKET_TIMEOUT_S = env.float("CHANNEL_LAYER_SOCKET_TIMEOUT_S", default=15.0)
    if CHANNEL_LAYER_MAX_CONNECTIONS < 2:
        raise ImproperlyConfigured("CHANNEL_LAYER_MAX_CONNECTIONS must be at least 2.")
    if CHANNEL_LAYER_SOCKET_TIMEOUT_S <= 5:
        raise ImproperlyConfigured("CHANNEL_LAYER_SOCKET_TIMEOUT_S must be more than 5 (the layer's blocking receive).")
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "tradingplatform.channel_layer.PooledRedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "max_connections": CHANNEL_LAYER_MAX_CONNECTIONS,
                        "timeout": CHANNEL_LAYER_POOL_TIMEOUT_S,
                        "socket_timeout": CHANNEL_LAYER_SOCKET_TIMEOUT_S,
                        "socket_connect_timeout": 5,
                    }
                ],
                "prefix": f"{CACHE_KEY_PREFIX}:asgi",
                "capacity": 1500,
                "expiry": 30,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "KEY_PREFIX": CACHE_KEY_PREFIX}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery (see tradingplatform/celery.py for why each reliability setting) --------
CELERY_BROKER_URL = REDIS_URL or "memory://"
# Tests run their workers on a queue of their own so they never take a real worker's tasks.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="celery")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TIMEZONE = "Asia/Kolkata"
# Whether /readyz pings a Celery worker; on by default wherever a broker exists.
READYZ_CHECK_CELERY = env.bool("READYZ_CHECK_CELERY", default=bool(REDIS_URL))
# Whether /readyz fails when beat's heartbeat is older than READYZ_HEARTBEAT_MAX_AGE_S (it runs
# every 30 s) or the scheduled monitoring cycle stopped starting or finishing; on wherever beat can run.
READYZ_CHECK_BEAT = env.bool("READYZ_CHECK_BEAT", default=bool(REDIS_URL))
READYZ_HEARTBEAT_MAX_AGE_S = env.float("READYZ_HEARTBEAT_MAX_AGE_S", default=120.0)

# --- Brokers ----------------------------------------------------------------------
# How long a live broker session is reused from the cache before the database is asked.
BROKER_SESSION_CACHE_TTL_S = env.int("BROKER_SESSION_CACHE_TTL_S", default=30)
# A session this close to expiry shows as "expiring soon" on the accounts page.
BROKER_SESSION_WARN_S = env.int("BROKER_SESSION_WARN_S", default=3600)
# Kite Connect: the real endpoints by default; tests and demos point them at the paper face.
KITE_API_URL = env.str("KITE_API_URL", default="https://api.kite.trade")
KITE_LOGIN_URL = env.str("KITE_LOGIN_URL", default="https://kite.zerodha.com/connect/login")
KITE_TIMEOUT_S = env.float("KITE_TIMEOUT_S", default=7.0)
# The instrument dump (megabytes, once a day) has this long, whole, where a call has KITE_TIMEOUT_S.
KITE_INSTRUMENTS_TIMEOUT_S = env.float("KITE_INSTRUMENTS_TIMEOUT_S", default=120.0)
# After a lost answer to an order placement, wait this long before looking the order up by tag.
ORDER_LOOKUP_DELAY_S = env.float("ORDER_LOOKUP_DELAY_S", default=0.5)
# Paper exchange: price feed and its Kite face.
PAPER_FEED_SEED = env.int("PAPER_FEED_SEED", default=42)
PAPER_TICK_INTERVAL_S = env.float("PAPER_TICK_INTERVAL_S", default=1.0)
PAPER_TICK_SIGMA = env.float("PAPER_TICK_SIGMA", default=0.0005)
PAPER_FACE_URL = env.str("PAPER_FACE_URL", default="http://127.0.0.1:8001")
# Live prices are pushed at most this often, however fast ticks come.
PRICE_PUSH_INTERVAL_S = env.float("PRICE_PUSH_INTERVAL_S", default=1.0)
# Monitoring cycle: accounts per Celery task, and threads per worker process for broker calls
# (each holds a database connection while cycles run: mind the database's max_connections).
MONITORING_BATCH = env.int("MONITORING_BATCH", default=100)
MONITORING_THREADS = env.int("MONITORING_THREADS", default=48)
if MONITORING_BATCH < 1 or MONITORING_THREADS < 1:
    raise ImproperlyConfigured("MONITORING_BATCH and MONITORING_THREADS must be at least 1.")
# The fill fast path: threads per process for after-commit work (recording a fill, pushing the
# dashboard; tradingplatform/background.py), and at most one dashboard push per trader per
# interval (a push asked for inside it becomes one trailing push at its end).
BACKGROUND_THREADS = env.int("BACKGROUND_THREADS", default=4)
DASHBOARD_PUSH_INTERVAL_S = env.float("DASHBOARD_PUSH_INTERVAL_S", default=0.1)
if BACKGROUND_THREADS < 1:
    raise ImproperlyConfigured("BACKGROUND_THREADS must be at least 1.")
# While a worker sends a scheduled burst, it records the fills after it: once it has sent nothing
# for the quiet time, and at most the longest time after the fill.
BACKGROUND_YIELD_QUIET_S = env.float("BACKGROUND_YIELD_QUIET_S", default=0.3)
BACKGROUND_YIELD_MAX_S = env.float("BACKGROUND_YIELD_MAX_S", default=5.0)
if not 0 <= BACKGROUND_YIELD_QUIET_S <= BACKGROUND_YIELD_MAX_S <= 60:
    raise ImproperlyConfigured("BACKGROUND_YIELD_QUIET_S and BACKGROUND_YIELD_MAX_S: 0 <= quiet <= max <= 60.")
if not 0 < DASHBOARD_PUSH_INTERVAL_S <= 60:
    raise ImproperlyConfigured("DASHBOARD_PUSH_INTERVAL_S must be more than 0 and at most 60.")

# --- Orders -----------------------------------------------------------------------
# Basket items and strategy copies placed at once (each account's rate budget still paces it).
BASKET_PARALLELISM = env.int("BASKET_PARALLELISM", default=8)
# A scheduled order more than this late (plus its grace window) is reported missed, not fired.
SCHEDULE_ON_TIME_S = env.int("SCHEDULE_ON_TIME_S", default=10)
# Opening positions are taken from this time of day on (IST, HH:MM): before it a broker's book can
# still be the day before's (Kite's start-of-day run comes in the early morning).
OPENINGS_FROM = env.str("OPENINGS_FROM", default="08:00")
if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", OPENINGS_FROM):
    raise ImproperlyConfigured(f"OPENINGS_FROM must be a time of day in IST, HH:MM (not {OPENINGS_FROM!r}).")
# The exchanges' holidays (YYYY-MM-DD, comma-separated; weekends are closed anyway): on them a
# strategy's exits that ended with their day are not put back (``brokers.markets``).
EXCHANGE_HOLIDAYS = frozenset(env.list("EXCHANGE_HOLIDAYS", default=[]))
for _holiday in EXCHANGE_HOLIDAYS:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", _holiday):
        raise ImproperlyConfigured(f"EXCHANGE_HOLIDAYS: {_holiday!r} is not a date (YYYY-MM-DD).")
# A strategy's stop-loss on an option (where Kite blocks SL-M) is an SL whose limit is this much
# of its trigger beyond it (``orders.services.stop_limit_price``): room for the market to fill it
# once triggered, a cap on how far from the trigger it sells or buys.
try:
    STOP_LIMIT_PROTECTION_PERCENT = Decimal(env.str("STOP_LIMIT_PROTECTION_PERCENT", default="3"))
except InvalidOperation:
    STOP_LIMIT_PROTECTION_PERCENT = Decimal("NaN")
if not STOP_LIMIT_PROTECTION_PERCENT.is_finite() or not 0 < STOP_LIMIT_PROTECTION_PERCENT <= 20:
    raise ImproperlyConfigured("STOP_LIMIT_PROTECTION_PERCENT must be more than 0 and at most 20 (a percent).")
SCHEDULE_DISPATCH_INTERVAL_S = env.float("SCHEDULE_DISPATCH_INTERVAL_S", default=1.0)
# How far ahead the dispatcher claims due times: a worker prepares their orders at once (checks
# them and writes them NEW) and sends them at the time. At least the dispatch interval, so every
# due time is claimed before it comes; with room for a burst's orders to be prepared.
SCHEDULE_LEAD_S = env.float("SCHEDULE_LEAD_S", default=3.0)
if SCHEDULE_LEAD_S < SCHEDULE_DISPATCH_INTERVAL_S:
    raise ImproperlyConfigured("SCHEDULE_LEAD_S must be at least SCHEDULE_DISPATCH_INTERVAL_S.")
# Due times of the same moment sent to a worker as one task, at most this many (500 orders due at
# 09:15:00 are 10 tasks, not 500; the paper exchange takes a task's orders in one transaction),
# recorded side by side by at most this many threads a worker process.
SCHEDULE_FIRE_BATCH = env.int("SCHEDULE_FIRE_BATCH", default=50)
SCHEDULE_FIRE_PARALLELISM = env.int("SCHEDULE_FIRE_PARALLELISM", default=8)
# A replayed idempotency key or signal id whose first request is still placing waits this long
# for its result before answering with what there is (the order as it stands, NEW while it is
# being sent): well under a client's timeout (the SDK's is 10 s), so the retry gets an answer.
REPLAY_WAIT_S = env.float("REPLAY_WAIT_S", default=5.0)
if SCHEDULE_FIRE_BATCH < 1 or SCHEDULE_FIRE_PARALLELISM < 1:
    raise ImproperlyConfigured("SCHEDULE_FIRE_BATCH and SCHEDULE_FIRE_PARALLELISM must be at least 1.")
# Webhook signals must carry a timestamp this close to now (replay protection with the id).
WEBHOOK_MAX_AGE_S = env.int("WEBHOOK_MAX_AGE_S", default=300)
# Per API key: calls per window, e.g. 20/s and 1200/min.
API_RATE_LIMITS = [(20, 1.0), (1200, 60.0)]
if env.str("API_RATE_LIMIT", default=""):
    API_RATE_LIMITS = [
        (int(calls), float(window)) for calls, window in (pair.split("/") for pair in env.list("API_RATE_LIMIT"))
    ]

# --- Auth -------------------------------------------------------------------------
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# Failed-login throttle: this many failures lock the username (or the IP) for the window.
LOGIN_FAILURES_PER_USERNAME = env.int("LOGIN_FAILURES_PER_USERNAME", default=5)
LOGIN_FAILURES_PER_IP = env.int("LOGIN_FAILURES_PER_IP", default=20)
LOGIN_LOCK_WINDOW_S = env.int("LOGIN_LOCK_WINDOW_S", default=900)
# A browser that signed in as a user keeps a signed cookie saying so: its later sign-ins as that
# user count on its own failure counter, not the username's or the address's, so a stranger's
# guesses cannot lock the trader out (``accounts.services.login_attempt``).
KNOWN_DEVICE_COOKIE = "tp_device"
KNOWN_DEVICE_MAX_AGE_S = env.int("KNOWN_DEVICE_MAX_AGE_S", default=180 * 24 * 3600)
# Trust X-Forwarded-For for the client IP only behind a proxy that sets it.
USE_X_FORWARDED_FOR = env.bool("USE_X_FORWARDED_FOR", default=False)
API_KEY_CACHE_TTL_S = env.int("API_KEY_CACHE_TTL_S", default=60)
# Wrong-API-key throttle: this many wrong keys from one IP lock it for the window (its wrong keys
# then get 429; right keys still work).
API_KEY_FAILURES_PER_IP = env.int("API_KEY_FAILURES_PER_IP", default=20)
API_KEY_LOCK_WINDOW_S = env.int("API_KEY_LOCK_WINDOW_S", default=900)

# --- Security ---------------------------------------------------------------------
# Error reports (debug page, mails, trackers) hide query parameters named like secrets too.
DEFAULT_EXCEPTION_REPORTER = "tradingplatform.errors.SafeExceptionReporter"
DEFAULT_EXCEPTION_REPORTER_FILTER = "tradingplatform.errors.SafeExceptionReporterFilter"
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Scripts, styles, fetches and the websocket from this origin only ('self' covers ws:/wss: to it);
# no inline code or styles anywhere (htmx is told not to add its indicator <style> nor to eval);
# images also as data: (the empty favicon). Never framed, no plugins, no <base>. Forms post here
# only, and their redirects go here or to Kite's login (connecting a Kite account): an injected
# form cannot send what a trader types elsewhere.
_kite_login = urllib.parse.urlsplit(KITE_LOGIN_URL)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    f"form-action 'self' {_kite_login.scheme}://{_kite_login.netloc}; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- I18N / time ------------------------------------------------------------------
LANGUAGE_CODE = "en-in"
TIME_ZONE = "Asia/Kolkata"
USE_I18N = True
USE_TZ = True

# --- Static -----------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Logging ----------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# "plain" for people (bin/run), "json" for a log pipeline: one object per line with the
# request id that follows an order from the HTTP request through Celery to the broker call.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be 'plain' or 'json'.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "tradingplatform.logs.ContextFilter"}},
    "formatters": {
        "plain": {
            "()": "tradingplatform.logs.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s%(rid)s %(message)s",
        },
        "json": {"()": "tradingplatform.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # Django's default logging gives "django" a console handler (with DEBUG on) and a mail one
        # (ADMINS, unset) of its own, which write without redacting: its records go to ours only.
        "django": {"handlers": []},
    },
}

# --- Metrics ----------------------------------------------------------------------
# /metrics answers staff sessions, and Prometheus with "Authorization: Bearer <METRICS_TOKEN>".
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters (or unset to allow staff only).")
