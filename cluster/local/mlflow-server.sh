#!/usr/bin/env bash
# Run an MLflow tracking server for sweeps (sqlite or PostgreSQL backend, an artifact root),
# bound to 127.0.0.1 by default, recorded by pid so that it is stopped by pid.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: mlflow-server.sh [-h] start|stop|status [-- EXTRA_MLFLOW_SERVER_ARGS...]

start   runs `mlflow server` in its own session, in the background, waits for /health and
        prints the tracking URI; its pid is recorded in $BITSWEEP_CLUSTER_DIR/mlflow/
stop    stops it by that pid (same as `stop.sh mlflow`)
status  says whether it runs and where

Environment (defaults in brackets):
  BITSWEEP_CLUSTER_DIR          state directory [~/.local/state/bitsweep/cluster]
  BITSWEEP_MLFLOW               mlflow executable [mlflow]
  BITSWEEP_MLFLOW_HOST          bind address [127.0.0.1]; the private address the cluster
                                reaches to log sweeps from it. 0.0.0.0/:: is refused unless
                                BITSWEEP_ALLOW_WILDCARD_MLFLOW=1 (only behind a proxy with auth)
  BITSWEEP_MLFLOW_PORT          [5000]
  BITSWEEP_MLFLOW_BACKEND_URI   [sqlite:///$BITSWEEP_CLUSTER_DIR/mlflow/mlflow.db]; or
                                postgresql://USER@HOST:5432/DB (password in ~/.pgpass or
                                PGPASSWORD, never in the URI; needs psycopg2 installed)
  BITSWEEP_MLFLOW_ARTIFACTS     where the server stores artifacts it proxies
                                [$BITSWEEP_CLUSTER_DIR/mlflow/artifacts]; or s3://..., gs://...
                                (the server's credentials; clients only talk HTTP to it)
  BITSWEEP_MLFLOW_ALLOWED_HOSTS Host headers accepted (DNS-rebinding guard) when the server
                                is not on loopback [HOST,HOST:PORT]
  BITSWEEP_MLFLOW_WORKERS       server worker processes [1]: one sweep driver writes at a time
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION   [false]: MLflow's job runner costs ~1.5 GiB and
                                bitsweep does not use it
  BITSWEEP_MLFLOW_BASIC_AUTH    1 to run MLflow's basic-auth app (--app-name basic-auth) [0]
  BITSWEEP_START_TIMEOUT, BITSWEEP_STOP_TIMEOUT   seconds [90, 45]
EOF
}

cmd="${1:-}"
case "$cmd" in
-h | --help)
    usage
    exit 0
    ;;
start | stop | status) shift ;;
*)
    usage >&2
    exit 2
    ;;
esac
if [[ $# -gt 0 ]]; then
    [[ "$1" == "--" && "$cmd" == start ]] || {
        usage >&2
        exit 2
    }
    shift
fi

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DIR="$BITSWEEP_CLUSTER_DIR/mlflow"
HOST="${BITSWEEP_MLFLOW_HOST:-127.0.0.1}"
PORT="${BITSWEEP_MLFLOW_PORT:-5000}"
url_host="$HOST"
[[ "$url_host" == *:* && "$url_host" != \[* ]] && url_host="[$url_host]"
bs_is_wildcard_host "$HOST" && url_host=127.0.0.1
URL="http://$url_host:$PORT"

if [[ "$cmd" == stop ]]; then
    bs_stop_service "$DIR"
    exit $?
fi
if [[ "$cmd" == status ]]; then
    if bs_service_alive "$DIR"; then
        echo "mlflow server running (pid $(cat "$DIR/pid")): $(cat "$DIR/uri" 2>/dev/null || echo "$URL")"
        exit 0
    fi
    echo "mlflow server not running"
    exit 1
fi

if bs_is_wildcard_host "$HOST"; then
    if [[ "${BITSWEEP_ALLOW_WILDCARD_MLFLOW:-0}" != "1" ]]; then
        bs_die "refusing to bind MLflow to '$HOST' (every interface). Bind 127.0.0.1 or a" \
            "private address, or put a reverse proxy with auth and TLS in front and set" \
            "BITSWEEP_ALLOW_WILDCARD_MLFLOW=1"
    fi
    bs_log "warning: MLflow on every interface; MLflow itself has no auth unless basic-auth is on"
fi
command -v "${BITSWEEP_MLFLOW:=mlflow}" >/dev/null 2>&1 || bs_die "mlflow executable '$BITSWEEP_MLFLOW' not found"
if bs_service_alive "$DIR"; then
    bs_die "an MLflow server recorded in $DIR is already running (pid $(cat "$DIR/pid"))"
fi
mkdir -p "$DIR"
chmod 700 "$BITSWEEP_CLUSTER_DIR"

DIR_ABS="$(cd "$DIR" && pwd)"
BACKEND="${BITSWEEP_MLFLOW_BACKEND_URI:-sqlite:///$DIR_ABS/mlflow.db}"
ARTIFACTS="${BITSWEEP_MLFLOW_ARTIFACTS:-$DIR_ABS/artifacts}"
case "$ARTIFACTS" in
*://*) ;;
*) mkdir -p "$ARTIFACTS" ;;
esac
case "$BACKEND" in
*://*:*@*) bs_log "warning: the backend URI carries a password; prefer ~/.pgpass or PGPASSWORD" ;;
esac
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

args=(
    server
    --host "$HOST"
    --port "$PORT"
    --backend-store-uri "$BACKEND"
    # Proxied artifacts: clients upload through the server (mlflow-artifacts:/), so cluster
    # nodes need no storage credentials of their own.
    --serve-artifacts
    --artifacts-destination "$ARTIFACTS"
    --workers "${BITSWEEP_MLFLOW_WORKERS:-1}"
)
if ! bs_is_loopback_host "$HOST"; then
    # MLflow's DNS-rebinding guard: only these Host headers are served.
    args+=(--allowed-hosts "${BITSWEEP_MLFLOW_ALLOWED_HOSTS:-$HOST,$url_host:$PORT}")
fi
[[ "${BITSWEEP_MLFLOW_BASIC_AUTH:-0}" == "1" ]] && args+=(--app-name basic-auth)
args+=("$@")

LOG="$DIR/server.log"
bs_log "starting: $BITSWEEP_MLFLOW ${args[*]}"
bs_spawn "$DIR" "$LOG" "$BITSWEEP_MLFLOW" "${args[@]}"
# A server that never became ready is not left behind.
trap 'bs_log "start-up failed; stopping what was started"; BITSWEEP_STOP_TIMEOUT=5 bs_stop_service "$DIR" || true' EXIT
bs_wait_http "$BS_PID" "$URL/health" "$LOG"
bs_record_pids "$DIR"
echo "$URL" >"$DIR/uri"
trap - EXIT
bs_log "MLflow server running (pid $BS_PID); tracking URI $URL"
echo "$URL"
