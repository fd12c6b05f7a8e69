# Sourced by bin/run and bin/test: make .venv and install pinned requirements when they change.
# Usage: source bin/_venv.sh requirements.txt|requirements-dev.txt
set -euo pipefail
_req="${1:-requirements.txt}"
_python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $($_python --version)"
  "$_python" -m venv .venv
fi
_files="$_req requirements.txt"
_nodeps=""
[ "$_req" = "requirements-dev.txt" ] && _nodeps="requirements-dev-nodeps.txt"
source bin/_dotenv.sh
case "$(_setting DATABASE_URL)" in mysql://*|mysql2://*) _files="$_files requirements-mysql.txt" ;; esac
_want="$(cat $_files $_nodeps | sha256sum | cut -c1-16)-$(echo "$_files" | sha256sum | cut -c1-8)"
if [ "$(cat .venv/.installed 2>/dev/null || true)" != "$_want" ]; then
  echo "Installing $_files into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  _args=""
  for f in $_files; do _args="$_args -r $f"; done
  .venv/bin/python -m pip install --quiet --disable-pip-version-check $_args
  if [ -n "$_nodeps" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r "$_nodeps"
  fi
  echo "$_want" > .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"
