#!/usr/bin/env bash
# Start a Ray head node on this machine with token authentication on and the dashboard bound
# to 127.0.0.1, recording its pids so that stop.sh can stop it by pid.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: start-head.sh [-h] [-- EXTRA_RAY_START_ARGS...]

Starts `ray start --head --block` in its own session, in the background, waits until the
dashboard answers, and writes the cluster's address to $BITSWEEP_CLUSTER_DIR/cluster.env
and cluster.json. Stop it with stop.sh.

Environment (defaults in brackets):
  BITSWEEP_CLUSTER_DIR      state directory [~/.local/state/bitsweep/cluster]
  BITSWEEP_RAY              ray executable [ray]; use the one of the project's virtualenv
  BITSWEEP_NODE_IP          this node's address for Ray [Ray's guess]; on a private network
                            set the private address the workers will reach
  BITSWEEP_GCS_PORT         GCS port the workers join [6379]
  BITSWEEP_DASHBOARD_HOST   dashboard bind address [127.0.0.1]; a private address to let
                            other machines submit jobs. 0.0.0.0/:: is refused unless
                            BITSWEEP_ALLOW_WILDCARD_DASHBOARD=1 (only behind TLS and auth)
  BITSWEEP_DASHBOARD_PORT   dashboard / job submission port [8265]
  BITSWEEP_DASHBOARD_AGENT_PORT  the node's dashboard agent HTTP port [52365]
  BITSWEEP_CLIENT_SERVER_PORT    Ray Client server port [10001]
  BITSWEEP_METRICS_PORT     Prometheus metrics port [random]
  BITSWEEP_NUM_CPUS, BITSWEEP_NUM_GPUS   [detected]
  BITSWEEP_TRIAL_SLOTS      custom resource `trial_slot` that sweep trial drivers ask for
                            instead of a CPU [4]; 0 for none
  BITSWEEP_RESOURCES        JSON of custom resources; replaces the trial_slot default
  BITSWEEP_OBJECT_STORE_MEMORY   bytes [Ray's default]
  BITSWEEP_TEMP_DIR         Ray's temp dir for this node [Ray's default, /tmp/ray]; keep it
                            short (Unix socket paths under it are limited to 107 bytes)
  BITSWEEP_START_TIMEOUT    seconds to wait for start-up [90]
  RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH   the token, as Ray reads it; when neither gives one,
                            a new token is written to ~/.ray/auth_token (mode 600)
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
if [[ $# -gt 0 && "$1" != "--" ]]; then
    usage >&2
    exit 2
fi
[[ "${1:-}" == "--" ]] && shift

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GCS_PORT="${BITSWEEP_GCS_PORT:-6379}"
DASHBOARD_HOST="${BITSWEEP_DASHBOARD_HOST:-127.0.0.1}"
DASHBOARD_PORT="${BITSWEEP_DASHBOARD_PORT:-8265}"
AGENT_PORT="${BITSWEEP_DASHBOARD_AGENT_PORT:-52365}"
CLIENT_PORT="${BITSWEEP_CLIENT_SERVER_PORT:-10001}"
TRIAL_SLOTS="${BITSWEEP_TRIAL_SLOTS:-4}"

# The dashboard is the job submission API: whoever reaches it runs code on the cluster.
if bs_is_wildcard_host "$DASHBOARD_HOST"; then
    if [[ "${BITSWEEP_ALLOW_WILDCARD_DASHBOARD:-0}" != "1" ]]; then
        bs_die "refusing --dashboard-host '$DASHBOARD_HOST' (every interface). Bind 127.0.0.1" \
            "or a private address; put TLS and auth in front before exposing it, then set" \
            "BITSWEEP_ALLOW_WILDCARD_DASHBOARD=1"
    fi
    bs_log "warning: dashboard on every interface ($DASHBOARD_HOST); token auth is all that guards it"
fi
bs_check_extra_args "$@"
command -v "$BITSWEEP_RAY" >/dev/null 2>&1 || bs_die "ray executable '$BITSWEEP_RAY' not found"

NODE_DIR="$BITSWEEP_CLUSTER_DIR/head"
if bs_service_alive "$NODE_DIR"; then
    bs_die "a head recorded in $NODE_DIR is already running (pid $(cat "$NODE_DIR/pid")); stop.sh first"
fi
mkdir -p "$BITSWEEP_CLUSTER_DIR"
chmod 700 "$BITSWEEP_CLUSTER_DIR"

bs_setup_token yes
# Ray's usage stats ping an outside server; nothing in a private cluster should.
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"

args=(
    start --head --block
    --port "$GCS_PORT"
    --dashboard-host "$DASHBOARD_HOST"
    --dashboard-port "$DASHBOARD_PORT"
    --dashboard-agent-listen-port "$AGENT_PORT"
    --ray-client-server-port "$CLIENT_PORT"
    --disable-usage-stats
    --log-style record
)
[[ -n "${BITSWEEP_NODE_IP:-}" ]] && args+=(--node-ip-address "$BITSWEEP_NODE_IP")
[[ -n "${BITSWEEP_METRICS_PORT:-}" ]] && args+=(--metrics-export-port "$BITSWEEP_METRICS_PORT")
[[ -n "${BITSWEEP_NUM_CPUS:-}" ]] && args+=(--num-cpus "$BITSWEEP_NUM_CPUS")
[[ -n "${BITSWEEP_NUM_GPUS:-}" ]] && args+=(--num-gpus "$BITSWEEP_NUM_GPUS")
[[ -n "${BITSWEEP_OBJECT_STORE_MEMORY:-}" ]] && args+=(--object-store-memory "$BITSWEEP_OBJECT_STORE_MEMORY")
[[ -n "${BITSWEEP_TEMP_DIR:-}" ]] && args+=(--temp-dir "$BITSWEEP_TEMP_DIR")
if [[ -n "${BITSWEEP_RESOURCES:-}" ]]; then
    args+=(--resources "$BITSWEEP_RESOURCES")
elif [[ "$TRIAL_SLOTS" != "0" ]]; then
    args+=(--resources "{\"trial_slot\": $TRIAL_SLOTS}")
fi
args+=("$@")

LOG="$NODE_DIR/ray.log"
bs_log "starting the head: $BITSWEEP_RAY ${args[*]}"
# --block keeps `ray start` in the foreground as the parent of every Ray process of this
# node: SIGTERM to it drains the node and stops them all (Ray's own shutdown hook), and the
# children die with it (PR_SET_PDEATHSIG) even if it is killed.
bs_export_python
bs_spawn "$NODE_DIR" "$LOG" "$BITSWEEP_RAY" "${args[@]}"
HEAD_PID="$BS_PID"
# A head that never became ready is not left behind.
trap 'bs_log "start-up failed; stopping what was started"; BITSWEEP_STOP_TIMEOUT=5 bs_stop_service "$NODE_DIR" || true' EXIT
bs_wait_for_line "$HEAD_PID" "$LOG" "Ray runtime started."

# The address Ray settled on: it replaces a loopback --node-ip-address by the machine's
# routable one (the GCS listens on every interface whatever the node IP).
NODE_IP="$(sed -n 's/.*Local node IP: *\([^ ]*\).*/\1/p' "$LOG" | head -n 1)"
NODE_IP="${NODE_IP:-${BITSWEEP_NODE_IP:-}}"
[[ -n "$NODE_IP" ]] || bs_die "could not read the node IP from $LOG; set BITSWEEP_NODE_IP"
GCS_ADDRESS="$NODE_IP:$GCS_PORT"
# The dashboard answers its health check without the token.
probe_host="$DASHBOARD_HOST"
bs_is_wildcard_host "$probe_host" && probe_host=127.0.0.1
[[ "$probe_host" == *:* && "$probe_host" != \[* ]] && probe_host="[$probe_host]"
DASHBOARD_URL="http://$probe_host:$DASHBOARD_PORT"
bs_wait_http "$HEAD_PID" "$DASHBOARD_URL/api/gcs_healthz" "$LOG"
bs_record_pids "$NODE_DIR"

TOKEN_PATH_LINE="# token from RAY_AUTH_TOKEN in the starting shell; export it as well"
TOKEN_PATH_JSON=null
if [[ "$BS_TOKEN_SOURCE" != env ]]; then
    TOKEN_PATH_LINE="export RAY_AUTH_TOKEN_PATH=$(printf '%q' "$RAY_AUTH_TOKEN_PATH")"
    TOKEN_PATH_JSON="$(bs_json_str "$RAY_AUTH_TOKEN_PATH")"
fi
# No secret here: the token stays where it was, these files only say where.
cat >"$BITSWEEP_CLUSTER_DIR/cluster.env" <<EOF
# Written by cluster/local/start-head.sh. \`source\` it to reach this cluster.
export RAY_AUTH_MODE=token
$TOKEN_PATH_LINE
# GCS address: for workers (start-worker.sh) and ray.init(address=...)
export BITSWEEP_HEAD_ADDRESS=$(printf '%q' "$GCS_ADDRESS")
# Job submission API (bitsweep submit --address, ray job submit --address)
export BITSWEEP_DASHBOARD_URL=$(printf '%q' "$DASHBOARD_URL")
EOF
cat >"$BITSWEEP_CLUSTER_DIR/cluster.json" <<EOF
{
  "gcs_address": $(bs_json_str "$GCS_ADDRESS"),
  "dashboard_url": $(bs_json_str "$DASHBOARD_URL"),
  "auth_mode": "token",
  "token_path": $TOKEN_PATH_JSON,
  "head_pid": $HEAD_PID,
  "state_dir": $(bs_json_str "$BITSWEEP_CLUSTER_DIR")
}
EOF

trap - EXIT
bs_log "head running (pid $HEAD_PID): GCS $GCS_ADDRESS, dashboard $DASHBOARD_URL"
bs_log "workers: RAY_AUTH_TOKEN_PATH=<copy of the token> start-worker.sh $GCS_ADDRESS"
bs_log "clients: source $BITSWEEP_CLUSTER_DIR/cluster.env"
