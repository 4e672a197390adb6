#!/usr/bin/env bash
# Plain-cron alternative to RayCronJob: submit tonight's run to an existing Ray cluster.
# flock makes it "Forbid": if last night's submit is still waiting, tonight's exits at once.
# A rerun for a date that already succeeded is a no-op (the submission id is per job, date and spec).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard URL, e.g. http://HEAD:8265}"
exec flock -n /tmp/aigc-nightly.lock .venv/bin/aigc submit jobs/nightly.yaml --address "$RAY_ADDRESS" \
  --date "$(TZ=Europe/Berlin date +%F)" --wait
