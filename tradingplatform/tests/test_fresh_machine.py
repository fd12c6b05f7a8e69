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
