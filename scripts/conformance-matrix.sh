#!/usr/bin/env bash
# Runs the conformance suite against every driver library in DIR (default
# target/debug), each on the backend it needs, and prints the matrix.
# Exits non-zero if any driver fails a check or no driver is found.
set -uo pipefail
dir=${1:-target/debug}
runner="$dir/strata-conformance"
[ -x "$runner" ] || { echo "no $runner; build the workspace first" >&2; exit 1; }
shopt -s nullglob
libs=("$dir"/libstrata_driver_*.so)
((${#libs[@]})) || { echo "no driver libraries in $dir" >&2; exit 1; }
status=0
rows=()
for lib in "${libs[@]}"; do
    name=$(basename "$lib" .so); name=${name#libstrata_driver_}
    echo "== conformance: $name"
    out=$("$runner" --driver "$lib" 2>&1); rc=$?
    echo "$out"
    summary=$(echo "$out" | tail -n 1)
    if [ $rc -ne 0 ]; then status=1; fi
    read -r passed _ failed _ skipped _ <<<"$(echo "$summary" | tr -d ',')"
    rows+=("$(printf '%-14s %7s %7s %8s' "$name" "${passed:-?}" "${failed:-?}" "${skipped:-?}")")
done
echo
printf '%-14s %7s %7s %8s\n' driver passed failed skipped
printf '%s\n' "${rows[@]}"
exit $status
