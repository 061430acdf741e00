#!/usr/bin/env bash
# `make test`: the suite in two lanes side by side. The machine has 2 cores and the suite is CPU-bound: four lanes
# took longer than two, and so did three (2026-12-06: 17 min 24 s, the in-process Airflow lane alone 15 min 39 s).
# Tests that run Airflow in-process run in a pytest process of their own (Airflow configures itself once per
# process), and so does each part below; a lane runs its parts one after another. Each lane's output goes to a log,
# printed when both are done; the exit code is non-zero when any part failed.
set -uo pipefail
PYTEST=("$@")  # the pytest command, from the Makefile
LOGS=.storefront/test-lanes
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log "$LOGS"/*.seconds

lane() {  # lane NAME -- PART_ARGS [-- PART_ARGS ...]: run each part's pytest in turn, log to $LOGS/NAME.log
    local name=$1 failed=0
    shift 2
    while (($#)); do
        local part=()
        while (($#)) && [[ $1 != -- ]]; do part+=("$1"); shift; done
        (($#)) && shift
        echo "=== pytest ${part[*]}"
        "${PYTEST[@]}" "${part[@]}" || failed=1
    done >"$LOGS/$name.log" 2>&1
    echo $SECONDS >"$LOGS/$name.seconds"  # a subshell's SECONDS count from the script's start
    return $failed
}

# The fault tests that need no Airflow stack (local stores, a private Redis, S3, serving, MLflow) run after the
# in-process Airflow tests; everything on a stack (tests/test_stack.py, the `test_stack_*` faults) in the other lane.
LOCAL_FAULTS="test_faults and not test_stack_"
lane unit -- -m "not airflow and not integration and not walkthrough" -- -m airflow -- -m integration -k "$LOCAL_FAULTS" &
unit=$!
lane integration -- -m integration -k "not ($LOCAL_FAULTS)" -- -m walkthrough &
integration=$!

status=0
for name in unit integration; do
    pid=${!name}
    if wait "$pid"; then outcome=passed; else outcome=FAILED; status=1; fi
    echo "--- lane $name: $outcome, ended $(cat "$LOGS/$name.seconds") s after the start (log: $LOGS/$name.log)"
    cat "$LOGS/$name.log"
done
exit $status
