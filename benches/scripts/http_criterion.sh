#!/usr/bin/env bash
# In-process cost of the HTTP layer (issue 3), with criterion: runs the `http_layer` bench
# (all variants in one group, back to back) and prints each variant's median ns per request,
# its difference from its baseline and the ratio.
#
#   benches/scripts/http_criterion.sh                       # --warm-up-time 1 --measurement-time 3
#   benches/scripts/http_criterion.sh --measurement-time 5  # other criterion options
#
# The baseline is `plain`, except for `governor-ip`: `plain-ci` (see src/http_app.rs).
# Reads target/criterion/http_layer/<variant>/new/estimates.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ARGS=("$@")
[[ ${#ARGS[@]} -eq 0 ]] && ARGS=(--warm-up-time 1 --measurement-time 3)
(cd "$ROOT" && cargo bench -q -p monetize-benches --bench http_layer -- "${ARGS[@]}")

DIR="$ROOT/target/criterion/http_layer"
median() { # median ns of variant $1
    local f="$DIR/$1/new/estimates.json"
    [[ -f "$f" ]] || return 0
    sed -E 's/.*"median":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/' "$f"
}

declare -A MED
for v in plain noop-layer monetize monetize-router monetize-tokens monetize-cached governor governor-router plain-ci governor-ip; do
    MED[$v]=$(median "$v")
done
echo
echo "in-process, oneshot + body read to the end; median ns per request ($(date -u +%F), ${ARGS[*]})"
printf '%-16s %10s %10s %8s  %s\n' variant ns/req added ratio baseline
for v in plain noop-layer monetize monetize-router monetize-tokens monetize-cached governor governor-router plain-ci governor-ip; do
    [[ -z "${MED[$v]}" ]] && continue
    b=plain
    [[ "$v" == governor-ip ]] && b=plain-ci
    if [[ "$v" != "$b" && -n "${MED[$b]:-}" ]]; then
        awk -v m="${MED[$v]}" -v p="${MED[$b]}" -v v="$v" -v b="$b" \
            'BEGIN { printf "%-16s %10.0f %+10.0f %8.3f  %s\n", v, m, m - p, m / p, b }'
    else
        awk -v m="${MED[$v]}" -v v="$v" 'BEGIN { printf "%-16s %10.0f %10s %8s  %s\n", v, m, "-", "-", "-" }'
    fi
done
