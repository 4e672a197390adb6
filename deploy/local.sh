#!/usr/bin/env bash
# A local Ray cluster with `ray start --head` on chosen ports, one job submitted to it through the
# Job Submission API (as on a real cluster), then the cluster stopped: only this one, by PID.
#
#   deploy/local.sh [JOB] [DATE]          e.g. deploy/local.sh jobs/demo.yaml 2026-11-28
#   GCS_PORT=6390 DASHBOARD_PORT=8266 deploy/local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
JOB=${1:-jobs/demo.yaml}
DATE=${2:-$(date +%F)}
GCS_PORT=${GCS_PORT:-6390}
DASHBOARD_PORT=${DASHBOARD_PORT:-8266}
TEMP_DIR=${TEMP_DIR:-/tmp/aigc-ray-$GCS_PORT}
PY=${PY:-.venv/bin/python}
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # every Ray socket on 127.0.0.1

URL=$($PY -m pipeline.localcluster start --port "$GCS_PORT" --dashboard-port "$DASHBOARD_PORT" --temp-dir "$TEMP_DIR")
trap '$PY -m pipeline.localcluster stop --temp-dir "$TEMP_DIR"' EXIT
echo "ray head: $URL (token auth: the token is in ~/.ray/auth_token; aigc submit sends it)"
$PY -m pipeline submit "$JOB" --address "$URL" --date "$DATE" --wait
