# Sourced by bin/_venv.sh (so by bin/run, bin/test and bin/e2e). The settings read the
# repository's .env too (real environment variables win), so a URL set there decides what
# these scripts install (mysqlclient for a mysql:// DATABASE_URL) and start (no embedded Redis
# when REDIS_URL is set) as one set in the environment does.
# Usage: _setting NAME prints NAME from the environment when it is set (even empty), else from
# .env (its last `NAME=value` or `export NAME=value` line, as django-environ reads it, quotes
# removed), else nothing.
_setting() {
  if [ -n "${!1+set}" ]; then
    printf '%s' "${!1}"
  elif [ -f .env ]; then
    sed -nE "s/^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=[[:space:]]*(.*)\$/\\2/p" .env \
      | tail -n 1 | sed -E "s/^\"(.*)\"[[:space:]]*\$/\\1/; s/^'(.*)'[[:space:]]*\$/\\1/"
  fi
  return 0
}
