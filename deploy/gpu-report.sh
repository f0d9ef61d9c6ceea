#!/usr/bin/env bash
# Every benchmark figure of the README against a real model, in one unattended run on a machine
# with an NVIDIA GPU, written as a Markdown report (with the capacity plot) to share or paste.
#
#   bash deploy/gpu-report.sh                     # starts vLLM with the model `parley engine` picks
#   PARLEY_ENGINE_MODEL=Qwen/Qwen2.5-7B-Instruct bash deploy/gpu-report.sh
#   bash deploy/gpu-report.sh --engine-url http://gpu-box:8000/v1   # a vLLM already serving
#   bash deploy/gpu-report.sh --out DIR           # where the report goes (default gpu-report-DATE)
#   bash deploy/gpu-report.sh --quick             # tiny sizes: checks the script, not the machine
#   bash deploy/gpu-report.sh --no-install        # use .venv as it is (the tests do)
#
# Once the engine is up: `parley bench` (Parley against the same prompts sent straight to vLLM,
# alternating) at 32, 128 and 256 conversations, `parley loadtest` through the real server and
# web chat at the same sizes (throughput ratio, time to the first visible update), `parley bench
# history` (prefix-cache hits of long conversations) and the capacity sweep of one Parley process
# with its plot. Each step runs under a time limit (60 s; the sweep 150 s), at most 9.5 minutes
# in all; a step that fails or runs out of time is listed under "Not measured" with its reason,
# and the others still run. The engine's start comes first (a few
# minutes; a first download of a 7B model, about 15 GB, takes longer).
set -uo pipefail
cd "$(dirname "$0")/.."

engine_url="${PARLEY_LLM_BASE_URL:-}"
out="gpu-report-$(date -u +%Y%m%d-%H%M)"
quick=false
install=true
while [ $# -gt 0 ]; do
  case "$1" in
    --engine-url) engine_url="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --quick) quick=true; shift ;;
    --no-install) install=false; shift ;;
    *) echo "gpu-report: unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done

if $quick; then
  sizes=(2 4); bench_rounds=1; turns=2; history_turns=4; rates=20; step=1; limit=120
else
  # Each step is cut at its limit: at most 9.5 minutes of steps once the engine is up.
  sizes=(32 128 256); bench_rounds=2; turns=4; history_turns=20; rates=10,25,50,100,150,200; step=2; limit=60
fi

mkdir -p "$out"
report="$out/report.md"
missing=()

# Parley with every platform and the plot's extra, at the tested versions (deploy/run.sh's venv).
if $install && ! bash deploy/run.sh --help > "$out/install.log" 2>&1 \
    || ! .venv/bin/pip install -q --disable-pip-version-check -c deploy/constraints.txt -e '.[web,plot]' \
      >> "$out/install.log" 2>&1; then
  echo "gpu-report: installing Parley failed; see $out/install.log" >&2
  exit 1
fi
parley=.venv/bin/parley

engine_pid=""
stop_engine() {
  if [ -n "$engine_pid" ]; then
    kill "$engine_pid" 2>/dev/null
    wait "$engine_pid" 2>/dev/null
  fi
}
trap stop_engine EXIT

if [ -z "$engine_url" ]; then
  command -v nvidia-smi >/dev/null || echo "gpu-report: no nvidia-smi: the CPU engine will serve (slow)" >&2
  port=8000
  PARLEY_ENGINE_PORT=$port "$parley" engine > "$out/engine.log" 2>&1 &
  engine_pid=$!
  engine_url="http://127.0.0.1:$port/v1"
  echo "gpu-report: starting the engine (log: $out/engine.log)" >&2
  for _ in $(seq 1 1200); do  # up to 20 minutes, a first download included
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$engine_pid" 2>/dev/null || break
    sleep 1
  done
  if ! curl -sf "http://127.0.0.1:$port/health" >/dev/null; then
    echo "gpu-report: the engine did not start; the end of $out/engine.log:" >&2
    tail -20 "$out/engine.log" >&2
    exit 1
  fi
fi
model=$(curl -sf "${engine_url%/}/models" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])' \
  2>/dev/null || echo "unknown")
export PARLEY_LLM_BASE_URL="$engine_url"

{
  echo "# Parley benchmark report"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Parley: $(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')"
  echo "- engine: $engine_url, model \`$model\`"
  echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | paste -sd ';' || true)"
  echo "- CPU: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  $quick && echo "- **quick mode**: sizes too small to mean anything; this checks the script"
  echo
  echo "Each section is the command's own output."
} > "$report"

# step TITLE SECONDS COMMAND...: run it under a time limit, its output into the report.
step() {
  local title="$1" seconds="$2" rc
  shift 2
  echo "gpu-report: $title" >&2
  {
    echo
    echo "## $title"
    echo
    echo '```'
    echo "\$ ${*/#.venv\/bin\//}"
  } >> "$report"
  timeout --kill-after=10 "$seconds" "$@" >> "$report" 2> "$out/step.err"
  rc=$?
  echo '```' >> "$report"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    missing+=("$title: no result within ${seconds} s")
  elif [ $rc -ne 0 ]; then
    missing+=("$title: failed (exit $rc): $(tail -1 "$out/step.err")")
  fi
}

for k in "${sizes[@]}"; do
  step "Throughput and Parley's added time, $k conversations (parley bench)" "$limit" \
    "$parley" bench -k "$k" -t "$turns" --rounds "$bench_rounds"
done
for k in "${sizes[@]}"; do
  step "Through the real server, $k web visitors (parley loadtest)" "$limit" \
    "$parley" loadtest --engine-url "$engine_url" -k "$k" -t "$turns"
done
step "Long conversations (parley bench history)" "$limit" \
  "$parley" bench history -k 8 -t "$history_turns" --rounds 1 --budget 1500
step "Capacity of one Parley process (parley loadtest --sweep, stand-in engine)" "$((limit * 5 / 2))" \
  "$parley" loadtest --standin -k 8 -t "$turns" --sweep --rates "$rates" --step-seconds "$step" \
  --plot "$out/sweep.png"
[ -f "$out/sweep.png" ] && printf '\n![Parley own time against offered turns/s](sweep.png)\n' >> "$report"

{
  echo
  echo "## Not measured"
  echo
  # What no step here can give, said every time.
  echo "- The time from the engine's first token to the first visible update, with the real engine:"
  echo "  only the stand-in stamps its first token (\"Parley out\" in the capacity section); the"
  echo "  sections through the real server give the time from sending to the first visible delta."
  if [ ${#missing[@]} -gt 0 ]; then
    printf -- '- %s\n' "${missing[@]}"
  fi
} >> "$report"
echo "gpu-report: wrote $report" >&2
[ ${#missing[@]} -eq 0 ]
