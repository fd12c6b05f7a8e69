"""The README's `./bin/test` on a fresh machine: with no environment it installs only
requirements-dev.txt, so mysqlclient (requirements-mysql.txt, built against libmariadb-dev) is
not there. The suite must still run on SQLite: no test module may need MySQLdb to be imported."""

import os
import subprocess
import sys

from django.conf import settings

# MySQLdb made unimportable, as on a machine that never installed requirements-mysql.txt.
COLLECT = (
    "import sys; sys.modules['MySQLdb'] = None\n"
    "import pytest\n"
    "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider']))\n"
)


def test_the_suite_collects_on_sqlite_without_mysqlclient():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PYTEST_XDIST_WORKER")}
    result = subprocess.run(
        [sys.executable, "-c", COLLECT],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " error" not in result.stdout.splitlines()[-1], result.stdout[-3000:]


def dotenv_setting(tmp_path, name: str, dotenv: str | None, env: dict | None = None) -> str:
    """What bin/_dotenv.sh's `_setting NAME` prints in a checkout whose .env is ``dotenv``, under
    `set -euo pipefail` as bin/run and bin/test source it."""
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    script = f'set -euo pipefail; source "{settings.BASE_DIR}/bin/_dotenv.sh"; _setting {name}; echo "|"'
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        ["bash", "-c", script], env={**base, **(env or {})}, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.removesuffix("|\n").rstrip("\n")  # as $(...) takes it


def test_bin_scripts_read_the_urls_of_dotenv_as_the_settings_do(tmp_path):
    """A DATABASE_URL in .env (which the settings read) made `./bin/run` and `./bin/test` skip
    mysqlclient and stop at "Did you install mysqlclient?"; a REDIS_URL there still started an
    embedded Redis that the exported REDIS_URL then put in its place."""
    dotenv = (
        "# local\n"
        "DATABASE_URL=sqlite:///a-later-line-wins\n"
        "SECRET_KEY=x\n"
        "export DATABASE_URL='mysql://root@127.0.0.1:3306/local'\n"
        'REDIS_URL="redis://127.0.0.1:6379/3"\n'
    )
    assert dotenv_setting(tmp_path, "DATABASE_URL", dotenv) == "mysql://root@127.0.0.1:3306/local"
    assert dotenv_setting(tmp_path, "REDIS_URL", dotenv) == "redis://127.0.0.1:6379/3"
    # The settings' own reading of the same file (django-environ's) agrees.
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    code = "import os, environ; environ.Env.read_env('.env'); e = os.environ; print(e['DATABASE_URL'], e['REDIS_URL'])"
    read = subprocess.run([sys.executable, "-c", code], env=base, cwd=tmp_path, capture_output=True, text=True)
    assert read.stdout.split() == ["mysql://root@127.0.0.1:3306/local", "redis://127.0.0.1:6379/3"], read.stderr
    # Real environment variables win, even empty ones (`REDIS_URL= ./bin/run`: the embedded Redis).
    assert dotenv_setting(tmp_path, "REDIS_URL", None, {"REDIS_URL": ""}) == ""
    assert dotenv_setting(tmp_path, "DATABASE_URL", None, {"DATABASE_URL": "sqlite:///x"}) == "sqlite:///x"


def test_bin_scripts_without_dotenv_or_the_url_in_it(tmp_path):
    assert dotenv_setting(tmp_path, "REDIS_URL", None) == ""
    assert dotenv_setting(tmp_path, "REDIS_URL", "DATABASE_URL=mysql://u@h/d\nMY_REDIS_URL=redis://h\n") == ""
