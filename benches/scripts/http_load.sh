#!/usr/bin/env bash
# The HTTP layer's cost over loopback (issue 3): the same minimal axum app plain, with the
# monetize layer and with tower_governor, each served by `http_server` (one tokio worker, a
# current-thread runtime) pinned to CPU 0, loaded by `wrk` pinned to CPU 1 (-t1, 32
# keep-alive connections, a Lua script rotating `x-api-key` over the 1,000 customers).
#
# Several short rounds; in each round every variant is loaded once, in an order that
# alternates (A B C, then C B A) so that drift of the shared machine falls on all of them.
# Per round: requests/s, server CPU seconds (utime + stime from /proc/<pid>/stat, before
# and after) per request, server CPU use (should be ~100 %: else wrk was the limit), and
# the paired ratios: the round's RPS of a variant over the same round's plain RPS. The
# summary gives medians over rounds.
#
#   benches/scripts/http_load.sh                          # 6 rounds x 5 s, plain monetize-router governor-router monetize governor
#   ROUNDS=8 DURATION=5 VARIANTS="plain monetize monetize-cached governor" benches/scripts/http_load.sh
#
# Old and new side by side: build the old commit's http_server into target/base (for
# example `git worktree add /tmp/wt_base OLD && cd /tmp/wt_base && CARGO_TARGET_DIR=<root>/target/base
# cargo build --release -p monetize-benches --bin http_server`), then name its variants with a
# `base-` prefix: VARIANTS="plain base-monetize-router monetize-router governor-router"
# (BASE_SERVER overrides the binary).
#
# The machine is shared and the scheduler shares CPU fairly between sessions (autogroups),
# not between processes, so that other sessions' builds take half of each core whatever our
# processes' nice value. The server and wrk therefore run in sessions of their own whose
# autogroup nice is NICE (default -15: about 97 % of a core against one other busy session;
# needs root; NICE=0 to leave them as they are). wrk's own CPU use is reported too: when
# the server is below ~100 % and wrk is at ~100 %, the generator was the limit.
#
# Installs wrk with apt-get when it is missing (as root). Per-round figures go to
# target/http-load/rounds.tsv, server logs (with what the monetized servers metered) to
# target/http-load/server.<variant>.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS="${ROUNDS:-6}"
DURATION="${DURATION:-5}"
CONNECTIONS="${CONNECTIONS:-32}"
VARIANTS="${VARIANTS:-plain monetize-router governor-router monetize governor}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
BASE_PORT="${BASE_PORT:-18080}"
NICE="${NICE:--15}"
OUT="$ROOT/target/http-load"
BASE_SERVER="${BASE_SERVER:-$ROOT/target/base/release/http_server}"
LUA="$ROOT/benches/scripts/http_keys.lua"
mkdir -p "$OUT"

if ! command -v wrk >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "wrk is missing; install it (apt-get install wrk) or run as root" >&2
        exit 1
    fi
    echo "installing wrk with apt-get" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
fi
command -v taskset >/dev/null || { echo "taskset is missing (util-linux)" >&2; exit 1; }

(cd "$ROOT" && cargo build --release -q -p monetize-benches --bin http_server)
SERVER="$ROOT/target/release/http_server"
TICK=$(getconf CLK_TCK)

# Runs "$@" in a session of its own whose autogroup nice is $NICE (best effort).
boosted() {
    setsid bash -c 'echo "$0" >/proc/self/autogroup 2>/dev/null; exec "$@"' "$NICE" "$@"
}

declare -A PID PORT
cleanup() {
    for v in "${!PID[@]}"; do kill "${PID[$v]}" 2>/dev/null || true; done
}
trap cleanup EXIT

# One server per variant, all pinned to SERVER_CPU; only the one under load is busy.
port=$BASE_PORT
for v in $VARIANTS; do
    port=$((port + 1))
    # A `base-` variant is served by another build (BASE_SERVER), for old/new side by side.
    srv="$SERVER"
    vv="$v"
    if [[ $v == base-* ]]; then
        srv="$BASE_SERVER"
        vv="${v#base-}"
        [[ -x "$srv" ]] || { echo "$v needs BASE_SERVER (no $srv)" >&2; exit 1; }
    fi
    boosted taskset -c "$SERVER_CPU" "$srv" "$vv" "$port" >"$OUT/server.$v.log" 2>&1 &
    PID[$v]=$!
    PORT[$v]=$port
    for _ in $(seq 1 100); do
        grep -q '^listening on' "$OUT/server.$v.log" 2>/dev/null && break
        kill -0 "${PID[$v]}" 2>/dev/null || { cat "$OUT/server.$v.log" >&2; exit 1; }
        sleep 0.1
    done
    grep -q '^listening on' "$OUT/server.$v.log" || { echo "server $v did not start" >&2; exit 1; }
    # setsid forks when it leads a process group: follow to the server itself.
    if [[ "$(cat "/proc/${PID[$v]}/comm")" != http_server ]]; then
        PID[$v]=$(pgrep -n -f "http_server $vv $port")
    fi
done
echo "servers: $(for v in $VARIANTS; do printf '%s pid %s (%s) ' "$v" "${PID[$v]}" "$(cat "/proc/${PID[$v]}/autogroup" 2>/dev/null)"; done)" >&2

cpu_ticks() { # utime + stime of process $1, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# One wrk run against variant $1 for $2 seconds; prints
# "rps requests seconds non2xx server_cpu_s wrk_cpu_s".
load() {
    local v=$1 secs=$2 before after log
    log="$OUT/wrk.last.txt"
    before=$(cpu_ticks "${PID[$v]}")
    # `times` prints the shell's, then its children's (wrk's) user and system time.
    setsid bash -c 'echo "$0" >/proc/self/autogroup 2>/dev/null; "$@"; times' "$NICE" \
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" -s "$LUA" \
        "http://127.0.0.1:${PORT[$v]}/v1/hello" >"$log" 2>&1
    after=$(cpu_ticks "${PID[$v]}")
    awk -v cpu=$(( after - before )) -v tick="$TICK" '
        function sec(t,   m) { m = t; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", t); sub(/s$/, "", t); return 60 * m + t }
        /requests in/ { n = $1; s = $4; sub(/s,?$/, "", s); if (s ~ /m$/) { sub(/m$/, "", s); s *= 60 } }
        /Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { bad = $5 }
        /^[0-9]+m[0-9.]+s [0-9]+m[0-9.]+s$/ { wrk = sec($1) + sec($2) }
        END { printf "%s %s %s %d %.2f %.2f\n", rps, n, s, bad, cpu / tick, wrk }' "$log"
}

echo "warm-up: 1 s per variant" >&2
for v in $VARIANTS; do load "$v" 1 >/dev/null; done

date_run=$(date -u +%F)
printf 'round\tvariant\trps\trequests\tseconds\tnon2xx\tcpu_s\tcpu_use\tcpu_us_per_req\twrk_cpu_use\n' >"$OUT/rounds.tsv"
read -r -a ORDER <<<"$VARIANTS"
for r in $(seq 1 "$ROUNDS"); do
    if (( r % 2 == 0 )); then
        seq_=$(printf '%s\n' "${ORDER[@]}" | tac)
    else
        seq_=$(printf '%s\n' "${ORDER[@]}")
    fi
    for v in $seq_; do
        read -r rps n s bad cpu wcpu <<<"$(load "$v" "$DURATION")"
        awk -v r="$r" -v v="$v" -v rps="$rps" -v n="$n" -v s="$s" -v bad="$bad" -v cpu="$cpu" -v w="$wcpu" \
            'BEGIN { printf "%d\t%s\t%.0f\t%d\t%.2f\t%d\t%.2f\t%.3f\t%.3f\t%.3f\n", r, v, rps, n, s, bad, cpu, cpu / s, 1e6 * cpu / n, w / s }' \
            >>"$OUT/rounds.tsv"
        tail -n 1 "$OUT/rounds.tsv" >&2
    done
done

# Stop the servers: the monetized ones print what they metered.
for v in $VARIANTS; do kill -TERM "${PID[$v]}" 2>/dev/null || true; done
for v in $VARIANTS; do wait "${PID[$v]}" 2>/dev/null || true; done
PID=()

echo
echo "over loopback: server 1 tokio worker on CPU $SERVER_CPU, wrk -t1 -c$CONNECTIONS on CPU $LOAD_CPU," \
    "$ROUNDS rounds x ${DURATION} s, keys rotating over 1,000 customers ($date_run)"
awk -F'\t' -v variants="$VARIANTS" '
    function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NR > 1 { rps[$1, $2] = $3; cpu[$1, $2] = $9; use[$1, $2] = $8; wuse[$1, $2] = $10; bad[$2] += $6; R = $1 > R ? $1 : R }
    END {
        nv = split(variants, V, " ")
        printf "%-16s %8s %11s %8s %8s %13s %10s %13s %8s\n", "variant", "RPS", "CPU us/req", "CPU use", "wrk use", "paired ratio", "min-max", "CPU/req ratio", "non-2xx"
        for (k = 1; k <= nv; k++) {
            v = V[k]; delete a; delete c; delete u; delete q; delete w; delete g
            for (r = 1; r <= R; r++) {
                a[r] = rps[r, v]; c[r] = cpu[r, v]; u[r] = use[r, v]; g[r] = wuse[r, v]
                q[r] = rps[r, v] / rps[r, "plain"]; w[r] = cpu[r, v] / cpu[r, "plain"]
            }
            lo = 1e9; hi = 0; for (r = 1; r <= R; r++) { lo = q[r] < lo ? q[r] : lo; hi = q[r] > hi ? q[r] : hi }
            if (v == "plain")
                printf "%-16s %8.0f %11.2f %7.0f%% %7.0f%% %13s %10s %13s %8d\n", v, median(a, R), median(c, R), 100 * median(u, R), 100 * median(g, R), "-", "-", "-", bad[v]
            else
                printf "%-16s %8.0f %11.2f %7.0f%% %7.0f%% %13.3f %4.2f-%4.2f %13.3f %8d\n", v, median(a, R), median(c, R), 100 * median(u, R), 100 * median(g, R), median(q, R), lo, hi, median(w, R), bad[v]
        }
    }' "$OUT/rounds.tsv"
echo "(medians over rounds; CPU = the server's utime + stime; paired ratio = round RPS / same"
echo " round plain RPS; CPU/req ratio likewise; rounds in $OUT/rounds.tsv)"
for v in $VARIANTS; do
    m=$(grep -h '^metered' "$OUT/server.$v.log" || true)
    if [[ -n "$m" ]]; then
        sent=$(awk -F'\t' -v v="$v" 'NR > 1 && $2 == v { n += $4 } END { print n }' "$OUT/rounds.tsv")
        echo "$v server: $m (wrk counted $sent responses in the rounds, plus the warm-up)"
    fi
done
