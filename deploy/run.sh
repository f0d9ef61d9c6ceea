#!/usr/bin/env bash
# Set up Parley on this machine and run it. With no arguments: a chat in this terminal.
#   bash deploy/run.sh             # parley chat
#   bash deploy/run.sh serve       # any parley sub-command and its options
# First run: creates .venv, installs Parley, and (unless PARLEY_LLM_BASE_URL points at a
# running vLLM server) installs vLLM in its own venv and starts it; a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import bot.tools.cli" 2>/dev/null || [ pyproject.toml -nt .venv/.parley-installed ] \
    || [ deploy/constraints.txt -nt .venv/.parley-installed ]; then
  echo "parley: installing Parley into .venv..." >&2
  # Every platform and the local embedder, at the versions the tests passed with.
  if ! .venv/bin/pip install -q --disable-pip-version-check -c deploy/constraints.txt \
      -e '.[slack,discord,web,local-embed,minilm,mcp]' > .venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    exit 1
  fi
  touch .venv/.parley-installed
fi
[ $# -eq 0 ] && set -- chat
exec .venv/bin/parley "$@"
