#!/usr/bin/env bash
# Run every benchmark and write docs/benchmarks.md (figures, ratios, the machine).
#
#   bash benchmarks/run_all.sh [--small] [--out docs/benchmarks.md]
#
# Convention for benchmarks/*.py: a script runs with no arguments at the issue's size, prints
# its figures as Markdown on stdout (a "### Title" heading, then tables / lines with a ratio
# against a baseline measured in the same run; plain text is shown verbatim under the script's
# name) and progress on stderr; a script that accepts
# --small (a quick run) gets it under run_all.sh --small. Every benchmarks/*.py is run, in name
# order; a failing one is recorded as failed and the others still run (exit status 1 then).
# Shell helpers (*.sh, e.g. a GPU check) are not run from here.
set -uo pipefail
cd "$(dirname "$0")/.."
small=false
out=docs/benchmarks.md
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=true; shift ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "$0: invalid option $1" >&2; exit 1 ;;
  esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python}
mkdir -p "$(dirname "$out")"
logs=$(mktemp -d -t upmp_benchmarks.XXXXXX)  # each script's stdout and stderr, kept
tmp=$logs/benchmarks.md
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
versions=$($python -c 'import sys, numpy, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}")')
{
  echo "# Benchmarks"
  echo
  echo "Written by \`bash benchmarks/run_all.sh$($small && echo ' --small')\`; each section is one script's output."
  echo "Speed figures are medians measured in one run beside their baseline, in the same process."
  echo
  echo "- Machine: ${cpu:-unknown CPU}, $(getconf _NPROCESSORS_ONLN) cores, $mem RAM; load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- Software: $versions; $(uname -sr)"
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo
} > "$tmp"
status=0
for script in benchmarks/*.py; do
  name=$(basename "$script" .py)
  flags=()
  if $small && grep -q -- '"--small"' "$script"; then flags=(--small); fi
  echo "== $script ${flags[*]}" >&2
  start=$(date +%s)
  if OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $python "$script" "${flags[@]}" > "$logs/$name.md" 2> "$logs/$name.log"; then
    if grep -q '^### ' "$logs/$name.md"; then
      cat "$logs/$name.md" >> "$tmp"
    else  # plain text output: under its own heading, verbatim
      { echo "### $name (\`$script${flags[*]:+ ${flags[*]}}\`)"; echo; echo '```'; cat "$logs/$name.md"; echo '```'; echo; } >> "$tmp"
    fi
  else
    rc=$?
    status=1
    { echo "### $name: FAILED (exit $rc)"; echo; echo '```'; tail -5 "$logs/$name.log"; echo '```'; echo; } >> "$tmp"
    echo "$script failed (exit $rc); see $logs/$name.log" >&2
  fi
  echo "_${name}: $(( $(date +%s) - start )) s of wall time._" >> "$tmp"
  echo >> "$tmp"
done
cp "$tmp" "$out"
echo "wrote $out (logs in $logs)" >&2
exit $status
