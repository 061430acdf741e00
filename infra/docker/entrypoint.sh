#!/usr/bin/env bash
# The contract of the official Airflow image's /entrypoint that the Helm chart's jobs and probes call
# (`exec /entrypoint airflow jobs check ...`): run the given command; a bare Airflow subcommand such as
# `scheduler` runs as `airflow scheduler`. No waiting for the database and no user creation here: compose orders
# start-up with health checks, the chart with its wait-for-migrations init containers.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    exec bash
fi
if command -v -- "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec airflow "$@"
