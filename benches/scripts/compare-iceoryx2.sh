#!/usr/bin/env bash
# framewire shm-pool against iceoryx2, one frame in flight, latency send -> recv.
#
# Alternates, RUNS times, unpinned, pinned to one CPU (PIN_CPU) and, where
# the machine has two CPUs or more, split (PIN_SPLIT, source/publisher on the
# first CPU, sink/subscriber on the second: spinning only means something when
# the spinner does not share its CPU with the sender):
#   fw-event   framewire-bench pipeline --transport shm-pool --hops 0 --resolution RES
#   fw-busy    the same with --options busy_poll=50us
#   iox-event  iceoryx2-pingpong --mode event (listener wake-up)
#   iox-spin   iceoryx2-pingpong --mode spin (busy poll)
# and prints every run, then the medians of the runs' p50 and p99 (us).
#
# Environment: RUNS (5), FRAMES (200 per run), RES (3840x2160), PIN_CPU (0),
# PIN_SPLIT (0,1 on two CPUs or more; empty to leave the split runs out),
# BUSY (busy_poll value, 50us), SKIP_BUILD=1 to use the binaries as built,
# FW_BIN and IOX_BIN to name them, IOX_TARGET_DIR (the iceoryx2 program's
# target directory, outside the repository: ../iox-target beside it).
# The iceoryx2 program needs libclang to build (apt-get install libclang-dev).
set -euo pipefail

RUNS=${RUNS:-5}
FRAMES=${FRAMES:-200}
RES=${RES:-3840x2160}
PIN_CPU=${PIN_CPU:-0}
if [[ -z ${PIN_SPLIT+x} ]]; then
    PIN_SPLIT=$([[ $(nproc) -ge 2 ]] && echo 0,1 || echo)
fi
modes=(unpinned pinned)
[[ -n $PIN_SPLIT ]] && modes+=(split)
BUSY=${BUSY:-50us}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IOX_TARGET_DIR=${IOX_TARGET_DIR:-$(dirname "$repo")/iox-target}
FW_BIN=${FW_BIN:-$repo/target/release/framewire-bench}
IOX_BIN=${IOX_BIN:-$IOX_TARGET_DIR/release/iceoryx2-pingpong}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$repo" && cargo build --release -p framewire-bench)
    (cd "$repo/benches/iceoryx2-pingpong" &&
        CARGO_TARGET_DIR="$IOX_TARGET_DIR" cargo build --release --locked)
fi
for b in "$FW_BIN" "$IOX_BIN"; do
    [[ -x $b ]] || { echo "compare-iceoryx2: $b is not built" >&2; exit 1; }
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
runs="$out/runs.tsv"
: >"$runs"

# run NAME PINNED CMD...: one run; appends "name pinned run p50 p99" to $runs.
run() {
    local name=$1 pinned=$2 k=$3
    shift 3
    local log="$out/$name-$pinned-$k.log"
    if ! timeout 600 "$@" >"$log" 2>&1; then
        echo "compare-iceoryx2: $name ($pinned) run $k failed: $*" >&2
        cat "$log" >&2
        exit 1
    fi
    local line
    line=$(grep -m1 '^  hop latency: p50 ' "$log") || {
        echo "compare-iceoryx2: no 'hop latency' line from $*" >&2
        cat "$log" >&2
        exit 1
    }
    # "  hop latency: p50 7.412 us, p99 12.301 us (...)"
    local p50 p99
    p50=$(sed -E 's/.*p50 ([0-9.]+) us.*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99 ([0-9.]+) us.*/\1/' <<<"$line")
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$pinned" "$k" "$p50" "$p99" >>"$runs"
    printf '%-10s %-9s run %s: p50 %10s us  p99 %10s us\n' "$name" "$pinned" "$k" "$p50" "$p99"
}

fw=(pipeline --transport shm-pool --hops 0 --resolution "$RES" --frames "$FRAMES")
iox=(--resolution "$RES" --frames "$FRAMES")
echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(nproc) CPUs; $RUNS runs x $FRAMES frames of $RES; pinned = CPU $PIN_CPU; split = CPUs ${PIN_SPLIT:-(not run)}"
echo "# framewire $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
for k in $(seq 1 "$RUNS"); do
    for pinned in "${modes[@]}"; do
        pin=()
        [[ $pinned == pinned ]] && pin=(--pin "$PIN_CPU")
        [[ $pinned == split ]] && pin=(--pin "$PIN_SPLIT")
        run fw-event "$pinned" "$k" "$FW_BIN" "${fw[@]}" "${pin[@]}"
        run iox-event "$pinned" "$k" "$IOX_BIN" --mode event "${iox[@]}" "${pin[@]}"
        run fw-busy "$pinned" "$k" "$FW_BIN" "${fw[@]}" --options "busy_poll=$BUSY" "${pin[@]}"
        run iox-spin "$pinned" "$k" "$IOX_BIN" --mode spin "${iox[@]}" "${pin[@]}"
    done
done

# median COLUMN NAME PINNED
median() {
    awk -F'\t' -v n="$2" -v p="$3" -v c="$1" '$1 == n && $2 == p { print $c }' "$runs" |
        sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "medians over $RUNS runs (us, send -> recv, $RES):"
header=$(printf '%-10s' config)
for m in "${modes[@]}"; do header+=$(printf ' | %-12s %-12s' "p50 $m" "p99 $m"); done
echo "$header"
for name in fw-event iox-event fw-busy iox-spin; do
    row=$(printf '%-10s' "$name")
    for m in "${modes[@]}"; do
        row+=$(printf ' | %-12s %-12s' "$(median 4 "$name" "$m")" "$(median 5 "$name" "$m")")
    done
    echo "$row"
done
