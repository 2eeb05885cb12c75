#!/usr/bin/env bash
# Instructions per request of the HTTP-layer benchmark (issue 3), under callgrind.
#
# Builds `http_driver` (release), runs it under `valgrind --tool=callgrind` for every
# variant with two request counts N1 and N2, and prints the marginal instructions per
# request, (I(N2) - I(N1)) / (N2 - N1). Only the driver's `measured` function is counted
# (after an unmeasured warm-up of one request per key), and the marginal cancels what is
# left of one-time costs. The baseline is `plain`, except for `governor-ip`: `plain-ci`,
# the plain app with the same `ConnectInfo` extension in its requests. Then, per variant,
# the functions whose self cost per request grew most (the same marginal, per function,
# minus the baseline's; layered variants against `noop-layer`, so that axum's route-layer
# machinery cancels).
#
# Under valgrind, sha2 takes its software SHA-256 (valgrind's CPU has no SHA extensions):
# about 3,500 instructions per key lookup in `monetize`, where the hardware path costs a few
# hundred. `monetize-cached` (the verified-key cache) is the figure closer to a real CPU.
#
#   benches/scripts/http_callgrind.sh                  # N1=2000 N2=12000, all variants
#   N1=1000 N2=6000 VARIANTS="plain monetize" TOP=30 benches/scripts/http_callgrind.sh
#
# Output files go to target/http-callgrind/: cg.<variant>.<N> (callgrind_annotate them),
# <variant>.per-request.tsv (self instructions per request, per function) and
# <variant>.over-<baseline>.tsv (the same minus the baseline's).
# Needs valgrind (callgrind_annotate comes with it) and awk.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
N1="${N1:-2000}"
N2="${N2:-12000}"
VARIANTS="${VARIANTS:-plain noop-layer monetize monetize-router monetize-tokens monetize-cached governor governor-router plain-ci governor-ip}"
TOP="${TOP:-25}"
OUT="$ROOT/target/http-callgrind"
mkdir -p "$OUT"

command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

# DRIVER=path runs another build's driver (a "before" build) instead of building this one.
if [[ -z "${DRIVER:-}" ]]; then
    (cd "$ROOT" && cargo build --release -q -p monetize-benches --bin http_driver)
    DRIVER="$ROOT/target/release/http_driver"
fi
OUT="${OUT_DIR:-$OUT}"
mkdir -p "$OUT"

total() { # the event total of a callgrind output file
    awk '/^(summary|totals):/ { print $2; exit }' "$1"
}

# Self instructions per function, one "count<TAB>function" line each.
functions() {
    callgrind_annotate --threshold=100 --auto=no --show-percs=no "$1" 2>/dev/null |
        awk '/^-+$/ { sep++ ; next }
             sep >= 5 && /^ *[0-9,]+ / {
                 n = $1; gsub(",", "", n); $1 = ""; sub(/^ +/, ""); sub(/ \[[^]]*\]$/, "");
                 print n "\t" $0 }'
}

# How many times FILE's profile called functions whose name contains $2 (all callers).
calls_to() {
    callgrind_annotate --tree=caller --threshold=100 --auto=no --show-percs=no "$1" 2>/dev/null |
        awk -v fn="$2" '/^ *$/ { n = 0; next }
            / < / { c = $0; sub(/.*\(/, "", c); sub(/x\).*/, "", c); gsub(",", "", c); sum_[n++] = c; next }
            /\*  / { if (index($0, fn)) for (i = 0; i < n; i++) t += sum_[i]; n = 0 }
            END { print t + 0 }'
}

declare -A PER ALLOCS
for v in $VARIANTS; do
    for n in "$N1" "$N2"; do
        valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$v.$n" \
            --collect-atstart=no --toggle-collect='*http_driver::measured*' \
            "$DRIVER" "$v" "$n" 2>"$OUT/valgrind.$v.$n.log" ||
            { echo "http_driver $v $n failed: see $OUT/valgrind.$v.$n.log" >&2; exit 1; }
        grep -h '^http_driver' "$OUT/valgrind.$v.$n.log" >&2 || true
    done
    i1=$(total "$OUT/cg.$v.$N1")
    i2=$(total "$OUT/cg.$v.$N2")
    PER[$v]=$(awk -v a="$i1" -v b="$i2" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.0f", (b - a) / (n2 - n1) }')
    a1=$(calls_to "$OUT/cg.$v.$N1" "__rust_alloc [")
    a2=$(calls_to "$OUT/cg.$v.$N2" "__rust_alloc [")
    ALLOCS[$v]=$(awk -v a="$a1" -v b="$a2" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')
    functions "$OUT/cg.$v.$N1" >"$OUT/$v.$N1.functions.tsv"
    functions "$OUT/cg.$v.$N2" >"$OUT/$v.$N2.functions.tsv"
    # Marginal self cost per request, per function.
    awk -F'\t' -v n1="$N1" -v n2="$N2" '
        FNR == NR { a[$2] = $1; next }
        { d = ($1 - a[$2]) / (n2 - n1); delete a[$2]; if (d != 0) printf "%.1f\t%s\n", d, $2 }
        END { for (f in a) printf "%.1f\t%s\n", -a[f] / (n2 - n1), f }' \
        "$OUT/$v.$N1.functions.tsv" "$OUT/$v.$N2.functions.tsv" |
        sort -t$'\t' -k1,1gr >"$OUT/$v.per-request.tsv"
done

base() { # the baseline of variant $1, when it was measured
    local b=plain
    [[ "$1" == governor-ip && -n "${PER[plain-ci]:-}" ]] && b=plain-ci
    [[ "$1" != "$b" && -n "${PER[$b]:-}" ]] && echo "$b"
    return 0
}

echo
echo "instructions per request (marginal between N=$N1 and N=$N2; $(date -u +%F))"
# "own": what the layer itself adds, beyond what axum charges for any route layer (the
# `noop-layer` variant's addition over plain), when noop-layer was measured; for
# `monetize-router` (around the router, no route layer) all it adds.
own() {
    local v=$1 b=$2
    [[ -z "$b" || "$v" == noop-layer || "$v" == plain-ci ]] && { echo -; return; }
    # Around the whole router: no route layer, everything added is the layer's own.
    [[ "$v" == *-router || "$v" == monetize-tokens ]] && { printf '%+d' $(( PER[$v] - PER[$b] )); return; }
    [[ -z "${PER[noop-layer]:-}" ]] && { echo -; return; }
    printf '%+d' $(( PER[$v] - PER[$b] - (PER[noop-layer] - PER[plain]) ))
}
printf '%-16s %10s %10s %10s %11s  %s\n' variant instr/req added own allocs/req baseline
for v in $VARIANTS; do
    b=$(base "$v")
    if [[ -n "$b" ]]; then
        printf '%-16s %10s %+10d %10s %11s  %s\n' "$v" "${PER[$v]}" $(( PER[$v] - PER[$b] )) "$(own "$v" "$b")" "${ALLOCS[$v]}" "$b"
    else
        printf '%-16s %10s %10s %10s %11s  %s\n' "$v" "${PER[$v]}" - - "${ALLOCS[$v]}" -
    fi
done
echo "(added: over the baseline; own: added minus noop-layer's addition, i.e. the layer's own work)"

# The per-function listing compares the layered variants with noop-layer (so that axum's
# own route-layer work cancels), governor-ip with plain-ci, the others with plain.
diffbase() {
    case "$1" in
        monetize | monetize-cached | governor)
            [[ -n "${PER[noop-layer]:-}" ]] && { echo noop-layer; return 0; } ;;
    esac
    base "$1"
}

for v in $VARIANTS; do
    b=$(diffbase "$v")
    [[ -z "$b" ]] && continue
    echo
    echo "top self costs per request of $v over $b (instructions; negative = less than $b)"
    awk -F'\t' 'FNR == NR { p[$2] = $1; next }
        { d = $1 - p[$2]; delete p[$2]; printf "%.1f\t%s\n", d, $2 }
        END { for (f in p) printf "%.1f\t%s\n", -p[f], f }' \
        "$OUT/$b.per-request.tsv" "$OUT/$v.per-request.tsv" |
        sort -t$'\t' -k1,1gr >"$OUT/$v.over-$b.tsv"
    head -n "$TOP" "$OUT/$v.over-$b.tsv" | awk -F'\t' '{ printf "%10.1f  %s\n", $1, substr($2, 1, 160) }'
    echo "   ... (all: $OUT/$v.over-$b.tsv)"
done
