#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them all (the engine tier too).
#   bash tests/run.sh            # all tests
#   bash tests/run.sh -k slack   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# redis-server for the fixtures, Debian's chromium for the web chat's browser test, and
# haproxy to check the configuration deploy/k8s gives it.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]} (apt)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# `dev`: the test extra and the checkers, at the versions of deploy/constraints.txt.
if ! .venv/bin/pip install -q --disable-pip-version-check -c deploy/constraints.txt -e '.[dev]' > .venv/pip-install.log 2>&1; then
  cat .venv/pip-install.log >&2
  exit 1
fi
# Lint, format and types first: they take seconds, the tests minutes.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The vLLM CPU engine's own venv and the random-weight demo model (cached in ~/.cache/parley).
.venv/bin/parley engine --install-only

# -m "" selects every test, including the engine tier that a bare `pytest -q` leaves out.
exec .venv/bin/python -m pytest -q -m "" "$@"
