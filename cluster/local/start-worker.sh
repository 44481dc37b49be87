#!/usr/bin/env bash
# Start a Ray worker node that joins a head with the same auth token, recording its pids so
# that stop.sh can stop it by pid.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: start-worker.sh [-h] [HEAD_ADDRESS] [-- EXTRA_RAY_START_ARGS...]

Starts `ray start --address HEAD_ADDRESS --block` in its own session, in the background, and
waits until the node runs. HEAD_ADDRESS is the head's GCS address (HOST:6379); without it,
BITSWEEP_HEAD_ADDRESS or the cluster.env that start-head.sh wrote on this machine is used.

Environment (defaults in brackets):
  BITSWEEP_CLUSTER_DIR      state directory [~/.local/state/bitsweep/cluster]
  BITSWEEP_WORKER_NAME      name of this node's state subdirectory [worker-N, first free N]
  BITSWEEP_RAY              ray executable [ray]; the same Ray and Python as the head
  BITSWEEP_NODE_IP          this node's address for Ray [Ray's guess]
  BITSWEEP_DASHBOARD_AGENT_PORT  the node's dashboard agent HTTP port [52365]; a second
                            node on the same machine as the head needs another one
  BITSWEEP_METRICS_PORT     Prometheus metrics port [random]
  BITSWEEP_NUM_CPUS, BITSWEEP_NUM_GPUS   [detected]
  BITSWEEP_TRIAL_SLOTS      custom resource `trial_slot` on this node [0]
  BITSWEEP_RESOURCES        JSON of custom resources; replaces the trial_slot setting
  BITSWEEP_OBJECT_STORE_MEMORY   bytes [Ray's default]
  BITSWEEP_TEMP_DIR         Ray's temp dir for this node [the head's]
  BITSWEEP_INCLUDE_LOG_MONITOR   true/false [Ray's default: true]; false for extra nodes on
                            the head's machine (one log monitor per machine)
  BITSWEEP_START_TIMEOUT    seconds to wait for start-up [90]
  RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH   the head's token (never generated here)
EOF
}

HEAD_ADDRESS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --)
        shift
        break
        ;;
    -*)
        usage >&2
        exit 2
        ;;
    *)
        [[ -z "$HEAD_ADDRESS" ]] || {
            usage >&2
            exit 2
        }
        HEAD_ADDRESS="$1"
        shift
        ;;
    esac
done

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ -z "$HEAD_ADDRESS" ]]; then
    HEAD_ADDRESS="${BITSWEEP_HEAD_ADDRESS:-}"
fi
if [[ -z "$HEAD_ADDRESS" && -f "$BITSWEEP_CLUSTER_DIR/cluster.env" ]]; then
    HEAD_ADDRESS="$(
        # shellcheck disable=SC1091
        source "$BITSWEEP_CLUSTER_DIR/cluster.env"
        echo "${BITSWEEP_HEAD_ADDRESS:-}"
    )"
    # A head started on this machine also tells where its token is.
    if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        RAY_AUTH_TOKEN_PATH="$(
            # shellcheck disable=SC1091
            source "$BITSWEEP_CLUSTER_DIR/cluster.env"
            echo "${RAY_AUTH_TOKEN_PATH:-}"
        )"
        if [[ -n "$RAY_AUTH_TOKEN_PATH" ]]; then
            export RAY_AUTH_TOKEN_PATH
        else
            unset RAY_AUTH_TOKEN_PATH
        fi
    fi
fi
[[ -n "$HEAD_ADDRESS" ]] || bs_die "no head address: pass HOST:PORT or set BITSWEEP_HEAD_ADDRESS"
bs_check_extra_args "$@"
command -v "$BITSWEEP_RAY" >/dev/null 2>&1 || bs_die "ray executable '$BITSWEEP_RAY' not found"

if [[ -n "${BITSWEEP_WORKER_NAME:-}" ]]; then
    NAME="$BITSWEEP_WORKER_NAME"
    [[ "$NAME" != head && "$NAME" != mlflow && "$NAME" != */* ]] || bs_die "bad worker name '$NAME'"
else
    n=1
    while bs_service_alive "$BITSWEEP_CLUSTER_DIR/worker-$n"; do n=$((n + 1)); done
    NAME="worker-$n"
fi
NODE_DIR="$BITSWEEP_CLUSTER_DIR/$NAME"
if bs_service_alive "$NODE_DIR"; then
    bs_die "$NAME recorded in $NODE_DIR is already running (pid $(cat "$NODE_DIR/pid"))"
fi
mkdir -p "$BITSWEEP_CLUSTER_DIR"
chmod 700 "$BITSWEEP_CLUSTER_DIR"

bs_setup_token no
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"

args=(
    start --block
    --address "$HEAD_ADDRESS"
    --dashboard-agent-listen-port "${BITSWEEP_DASHBOARD_AGENT_PORT:-52365}"
    --disable-usage-stats
    --log-style record
)
[[ -n "${BITSWEEP_NODE_IP:-}" ]] && args+=(--node-ip-address "$BITSWEEP_NODE_IP")
[[ -n "${BITSWEEP_METRICS_PORT:-}" ]] && args+=(--metrics-export-port "$BITSWEEP_METRICS_PORT")
[[ -n "${BITSWEEP_NUM_CPUS:-}" ]] && args+=(--num-cpus "$BITSWEEP_NUM_CPUS")
[[ -n "${BITSWEEP_NUM_GPUS:-}" ]] && args+=(--num-gpus "$BITSWEEP_NUM_GPUS")
[[ -n "${BITSWEEP_OBJECT_STORE_MEMORY:-}" ]] && args+=(--object-store-memory "$BITSWEEP_OBJECT_STORE_MEMORY")
[[ -n "${BITSWEEP_TEMP_DIR:-}" ]] && args+=(--temp-dir "$BITSWEEP_TEMP_DIR")
[[ -n "${BITSWEEP_INCLUDE_LOG_MONITOR:-}" ]] && args+=(--include-log-monitor "$BITSWEEP_INCLUDE_LOG_MONITOR")
TRIAL_SLOTS="${BITSWEEP_TRIAL_SLOTS:-0}"
if [[ -n "${BITSWEEP_RESOURCES:-}" ]]; then
    args+=(--resources "$BITSWEEP_RESOURCES")
elif [[ "$TRIAL_SLOTS" != "0" ]]; then
    args+=(--resources "{\"trial_slot\": $TRIAL_SLOTS}")
fi
args+=("$@")

LOG="$NODE_DIR/ray.log"
bs_log "starting $NAME: $BITSWEEP_RAY ${args[*]}"
# Same shape as the head: `ray start --block` is the parent of this node's processes.
bs_export_python
bs_spawn "$NODE_DIR" "$LOG" "$BITSWEEP_RAY" "${args[@]}"
# A node that never became ready is not left behind.
trap 'bs_log "start-up failed; stopping what was started"; BITSWEEP_STOP_TIMEOUT=5 bs_stop_service "$NODE_DIR" || true' EXIT
bs_wait_for_line "$BS_PID" "$LOG" "Ray runtime started."
bs_record_pids "$NODE_DIR"
trap - EXIT
bs_log "$NAME running (pid $BS_PID), joined $HEAD_ADDRESS"
