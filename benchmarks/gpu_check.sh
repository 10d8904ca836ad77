#!/usr/bin/env bash
# One prepared GPU check (issue 11): the backend step (benchmarks/backend_step.py) in fp32 and
# bf16, fp32 vs bf16 vs fp16 autocast (benchmarks/amp.py), and, where they exist, the cached
# loader (loader_cached.py) and extraction (extraction.py) benchmarks, on CUDA; then one table.
# Each part has its own time limit, so the whole check stays under 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--device cuda] [--small] [--out DIR]
#
# --device cpu --small runs the same parts on tiny sizes (a smoke test of this script).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

device=cuda
small=
out=exp/gpu_check
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift ;;
    --small) small=--small ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 1 ;;
  esac
  shift
done
mkdir -p "$out"

if [ "$device" = cuda ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check.sh: no CUDA device visible to torch; run with --device cpu --small for a smoke test" >&2
    exit 1
  }
  name=$(python -c "import torch; print(torch.cuda.get_device_name())")
else
  name="cpu ($(nproc) cores)"
fi

summary=()
part() {  # part NAME SECONDS CMD...: run with a time limit, keep its output, note its status
  local label=$1 limit=$2
  shift 2
  echo "== $label (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$label.txt" 2>&1
  local rc=$?
  cat "$out/$label.txt"
  local status=ok
  [ $rc -eq 124 ] && status="timed out"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (exit $rc)"
  summary+=("| $label | $status | $((SECONDS - t0)) s |")
}

# a benchmark script written by others: pass --device/--small only where it takes them
optional() {  # optional LABEL SECONDS SCRIPT [ARGS...]
  local label=$1 limit=$2 script=$3
  shift 3
  if [ ! -f "$script" ]; then
    summary+=("| $label | absent ($script) | - |")
    return
  fi
  local help args=()
  help=$(python "$script" --help 2>&1)
  if grep -q -- "--device" <<< "$help"; then args+=(--device "$device"); fi
  if [ -n "$small" ] && grep -q -- "--small" <<< "$help"; then args+=(--small); fi
  part "$label" "$limit" python "$script" "${args[@]}" "$@"
}

mem=
[ "$device" = cuda ] || mem=--no_memory  # CPU peak memory needs a process per variant: too slow here
part backend_step_fp32 110 python benchmarks/backend_step.py --device "$device" --dtype fp32 --repeats 5 $small $mem
part backend_step_bf16 110 python benchmarks/backend_step.py --device "$device" --dtype bf16 --repeats 5 $small $mem
part amp 60 python benchmarks/amp.py --device "$device" --batch 8 32 --repeats 5 $small
optional loader_cached 70 benchmarks/loader_cached.py
optional extraction 100 benchmarks/extraction.py

{
  echo "# GPU check: $name, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "| part | status | wall |"
  echo "|---|---|---|"
  printf '%s\n' "${summary[@]}"
  for f in backend_step_fp32 backend_step_bf16 amp loader_cached extraction; do
    [ -f "$out/$f.txt" ] || continue
    echo
    echo "## $f"
    echo '```'
    cat "$out/$f.txt"
    echo '```'
  done
} > "$out/gpu_check.md"
echo
cat "$out/gpu_check.md"
