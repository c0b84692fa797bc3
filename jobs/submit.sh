#!/usr/bin/env bash
# Submit one ray-entigraph command as a Ray job, stream its logs, print its final status, and exit 0 only
# when the job SUCCEEDED (1 when it FAILED or was STOPPED, 2 on a usage error).
#
#   RAY_ADDRESS=http://HEAD:8265 jobs/submit.sh synthesize --config configs/demo.yaml output_dir=s3://bucket/run1
#
# RAY_ADDRESS    the cluster's job server (dashboard) address, e.g. http://127.0.0.1:8265 (required)
# RAY            the ray CLI to use (default: `ray` on PATH)
# RUNTIME_ENV    runtime-env YAML (default: jobs/runtime_env.yaml)
# SUBMISSION_ID  job id (default: ray-entigraph-<command>-<UTC time>-<pid>)
# Token auth (on when the head found a token at `ray start`): export RAY_AUTH_MODE=token and have the cluster's
# token in ~/.ray/auth_token or export RAY_AUTH_TOKEN.
# Ctrl-C stops following the logs, not the job; `ray job stop <id>` stops the job.
set -uo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
if [[ -z "${RAY_ADDRESS:-}" ]]; then
  echo "jobs/submit.sh: RAY_ADDRESS is not set (the job server address, e.g. http://127.0.0.1:8265)" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ray_cli="${RAY:-ray}"
id="${SUBMISSION_ID:-ray-entigraph-$1-$(date -u +%Y%m%d-%H%M%S)-$$}"
cd "$root" || exit 2

trap 'echo "jobs/submit.sh: stopped following job $id; it keeps running (ray job stop --address $RAY_ADDRESS $id)" >&2; exit 130' INT

"$ray_cli" job submit --address "$RAY_ADDRESS" --submission-id "$id" --working-dir . \
  --runtime-env "${RUNTIME_ENV:-jobs/runtime_env.yaml}" -- ray-entigraph "$@"  # Ray shell-quotes each argument
submit_rc=$?

# `ray job submit` returns when the log stream ends; ask for the job's own status until it is final (a
# dropped log stream returns early while the job still runs).
status=UNKNOWN
unknown=0
while :; do
  out="$("$ray_cli" job status --address "$RAY_ADDRESS" --log-style record "$id" 2>&1)"
  case "$out" in
    *"Job '$id' succeeded"*) status=SUCCEEDED ;;
    *"Job '$id' failed"*) status=FAILED ;;
    *"Job '$id' was stopped"*) status=STOPPED ;;
    *"Status for job '$id': "*) status="$(sed -n "s/.*Status for job '$id': \([A-Z]*\).*/\1/p" <<<"$out" | head -n 1)" ;;
    *) status=UNKNOWN ;;
  esac
  status="${status:-UNKNOWN}"
  case "$status" in
    SUCCEEDED | FAILED | STOPPED) break ;;
    UNKNOWN) unknown=$((unknown + 1)); [[ $unknown -ge 6 ]] && break ;;  # server unreachable, or no such job
  esac
  sleep 5
done

echo
echo "jobs/submit.sh: job $id: ${status:-UNKNOWN}"
if [[ "$status" == "SUCCEEDED" ]]; then
  exit 0
fi
# The reason, as the last lines of this script's output: the tail of the job's own log
# (`ray-entigraph <command>: error: ...` when the CLI failed), else what `ray job status` said.
logs="$("$ray_cli" job logs --address "$RAY_ADDRESS" --log-style record "$id" 2>/dev/null | tail -n 15)"
echo "jobs/submit.sh: last lines of the job log:" >&2
echo "${logs:-$out}" >&2
if grep -q "ray-entigraph: not found" <<<"${logs:-$out}"; then
  echo "jobs/submit.sh: the cluster's nodes do not have ray-entigraph on PATH: install the project on every node" \
    "and start Ray from that environment (see jobs/README.md)" >&2
fi
exit 1
