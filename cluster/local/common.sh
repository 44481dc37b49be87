# shellcheck shell=bash
# Shared helpers for the cluster/local scripts. Sourced, never run.
#
# State directory layout (BITSWEEP_CLUSTER_DIR, default ~/.local/state/bitsweep/cluster):
#   cluster.env        shell lines to `source` to talk to this cluster (no secret in it)
#   cluster.json       the same facts for programs (gcs_address, dashboard_url, token_path, ...)
#   head/              one directory per service started here:
#     pid              pid of the service's session leader (`ray start --block`, `mlflow server`)
#     sid              its session id (the scripts start every service in a new session)
#     started          the leader's start time (guards against a recycled pid)
#     pids             every pid of that session right after start-up (what a test checks)
#     ray.log          output of `ray start --block` (mlflow: server.log)
#   worker-1/ ...      the same for each worker started on this machine
#   mlflow/            the same for the MLflow server, plus mlflow.db and artifacts/ by default
#
# Stopping is always by pid: the recorded leader gets SIGTERM (Ray drains and stops its own
# children), then any process still in the recorded session gets SIGTERM and finally SIGKILL.
# Nothing is ever looked up or killed by name.

set -euo pipefail

BITSWEEP_CLUSTER_DIR="${BITSWEEP_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/bitsweep/cluster}"
# Ray's executable; a virtual environment's bin/ray keeps Ray and Python versions explicit.
BITSWEEP_RAY="${BITSWEEP_RAY:-ray}"

# The interpreter Ray runs on, exported into every Ray process's environment: a submitted sweep's
# entrypoint (orchestrator/jobs.py) runs bitsweep with it instead of whatever python is first on
# the node's PATH. A virtualenv's bin/ray has it in its shebang line.
bs_export_python() {
    local ray_path shebang
    [ -n "${BITSWEEP_PYTHON:-}" ] && { export BITSWEEP_PYTHON; return; }
    ray_path=$(command -v "$BITSWEEP_RAY" 2>/dev/null) || return 0
    shebang=$(head -n1 "$ray_path" 2>/dev/null || true)
    case "$shebang" in
        '#!'*python*) BITSWEEP_PYTHON="${shebang#\#!}"; export BITSWEEP_PYTHON ;;
    esac
}
BITSWEEP_START_TIMEOUT="${BITSWEEP_START_TIMEOUT:-90}"
BITSWEEP_STOP_TIMEOUT="${BITSWEEP_STOP_TIMEOUT:-45}"

bs_log() { printf '[bitsweep] %s\n' "$*" >&2; }
bs_die() {
    printf '[bitsweep] error: %s\n' "$*" >&2
    exit 1
}

# True for addresses that listen on every interface.
bs_is_wildcard_host() {
    case "$1" in
    "" | 0.0.0.0 | :: | "[::]" | "*" | 0) return 0 ;;
    *) return 1 ;;
    esac
}

bs_is_loopback_host() {
    case "$1" in
    127.* | localhost | ::1 | "[::1]") return 0 ;;
    *) return 1 ;;
    esac
}

# Ray's token auth: RAY_AUTH_MODE=token on every process of the cluster and its clients; the
# token comes, in Ray's order of precedence, from RAY_AUTH_TOKEN, then the file named by
# RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. `ray start` never creates a token (only
# `ray.init()` and `ray get-auth-token --generate` do), so the head script makes one when
# none exists. Sets BS_TOKEN_SOURCE ("env" or the file path).
bs_setup_token() {
    local may_generate="$1"
    if [[ -n "${RAY_AUTH_MODE:-}" && "${RAY_AUTH_MODE}" != "token" ]]; then
        bs_die "RAY_AUTH_MODE=${RAY_AUTH_MODE}: these scripts keep token authentication on;" \
            "unset RAY_AUTH_MODE or set it to 'token'"
    fi
    export RAY_AUTH_MODE=token
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        # Highest precedence in Ray; nothing is written to disk.
        BS_TOKEN_SOURCE=env
        return 0
    fi
    local path="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [[ ! -s "$path" ]]; then
        if [[ "$may_generate" != "yes" ]]; then
            bs_die "no Ray auth token at $path. Copy the head's token file here (mode 600) and" \
                "set RAY_AUTH_TOKEN_PATH to it, or export RAY_AUTH_TOKEN."
        fi
        # Same format as Ray's own generator (secrets.token_hex(32)); private from birth,
        # unlike `ray get-auth-token --generate`, which leaves the file world-readable.
        (
            umask 077
            mkdir -p "$(dirname "$path")"
            od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$path"
        )
        bs_log "generated a new Ray auth token in $path (mode 600)"
    fi
    # A token others can read lets them run code on the cluster.
    local mode
    mode="$(stat -c '%a' "$path" 2>/dev/null || stat -f '%Lp' "$path")"
    if [[ "${mode: -2}" != "00" ]]; then
        bs_log "warning: $path has mode $mode; anyone who can read it can use the cluster" \
            "(chmod 600 '$path')"
    fi
    RAY_AUTH_TOKEN_PATH="$(cd "$(dirname "$path")" && pwd)/$(basename "$path")"
    export RAY_AUTH_TOKEN_PATH
    BS_TOKEN_SOURCE="$RAY_AUTH_TOKEN_PATH"
}

# Refuse a wildcard dashboard bind smuggled in through extra `ray start` arguments.
bs_check_extra_args() {
    local prev="" arg
    for arg in "$@"; do
        if [[ "$arg" == --dashboard-host=* ]] && bs_is_wildcard_host "${arg#--dashboard-host=}"; then
            bs_die "refusing $arg: use BITSWEEP_DASHBOARD_HOST (see the README)"
        fi
        if [[ "$prev" == --dashboard-host ]] && bs_is_wildcard_host "$arg"; then
            bs_die "refusing --dashboard-host $arg: use BITSWEEP_DASHBOARD_HOST (see the README)"
        fi
        prev="$arg"
    done
}

bs_pid_alive() { kill -0 "$1" 2>/dev/null; }

# Start time of pid $1, the same whatever the caller's TZ or locale: clock ticks since boot
# from /proc (field 22 of stat, counted after the parenthesised command name), else ps in UTC.
bs_start_time() {
    local stat
    if stat="$(cat "/proc/$1/stat" 2>/dev/null)"; then
        stat="${stat##*) }"
        # shellcheck disable=SC2086
        set -- $stat
        echo "boot+${20}"
    else
        LC_ALL=C TZ=UTC ps -o lstart= -p "$1" 2>/dev/null | sed 's/^ *//;s/ *$//'
    fi
}

# Pids of every live process in session $1, one a line. Zombies are left out: they are dead
# already and only wait for a parent (often init, once the starting script has exited) to
# reap them.
bs_session_pids() {
    ps -eo pid=,sid=,stat= | awk -v sid="$1" '$2 == sid && $3 !~ /^Z/ { print $1 }'
}

# Whether the service recorded in directory $1 still has its leader alive (same pid, same
# start time: a recycled pid does not count).
bs_service_alive() {
    local dir="$1" pid
    [[ -f "$dir/pid" ]] || return 1
    pid="$(cat "$dir/pid")"
    bs_pid_alive "$pid" || return 1
    [[ "$(bs_start_time "$pid")" == "$(cat "$dir/started" 2>/dev/null)" ]]
}

# Start "$@" in a new session (its own process group too) with output to $2, record it in
# directory $1. Sets BS_PID.
bs_spawn() {
    local dir="$1" logfile="$2"
    shift 2
    mkdir -p "$dir"
    rm -f "$dir/pid" "$dir/sid" "$dir/started" "$dir/pids"
    if command -v setsid >/dev/null 2>&1; then
        # A background child of a non-interactive shell is no group leader, so setsid(1)
        # calls setsid() and execs in place: $! is the service's own pid.
        setsid "$@" </dev/null >"$logfile" 2>&1 &
    else
        bs_die "setsid (util-linux) is required to start services in their own session"
    fi
    BS_PID=$!
    echo "$BS_PID" >"$dir/pid"
    # Until setsid(1) has run, the child is still in our session: wait for it to lead its own.
    local sid="" tries=0
    while ((tries < 50)); do
        if ! bs_pid_alive "$BS_PID"; then
            tail -n 30 "$logfile" >&2 || true
            bs_die "$1 exited right after start (log: $logfile)"
        fi
        sid="$(ps -o sid= -p "$BS_PID" | tr -d ' ')"
        [[ "$sid" == "$BS_PID" ]] && break
        tries=$((tries + 1))
        sleep 0.1
    done
    if [[ "$sid" != "$BS_PID" ]]; then
        kill -TERM "$BS_PID" 2>/dev/null || true
        bs_die "pid $BS_PID is not a session leader (sid $sid); cannot scope its stop"
    fi
    echo "$sid" >"$dir/sid"
    bs_start_time "$BS_PID" >"$dir/started"
}

# Wait until file $2 contains the fixed string $3 while pid $1 lives.
bs_wait_for_line() {
    local pid="$1" logfile="$2" needle="$3" deadline=$((SECONDS + BITSWEEP_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if grep -qF -- "$needle" "$logfile" 2>/dev/null; then
            return 0
        fi
        if ! bs_pid_alive "$pid"; then
            tail -n 40 "$logfile" >&2 || true
            bs_die "process $pid exited before it was ready (log: $logfile)"
        fi
        sleep 0.3
    done
    tail -n 40 "$logfile" >&2 || true
    bs_die "not ready after ${BITSWEEP_START_TIMEOUT}s (log: $logfile)"
}

# HTTP GET $1 answers 200.
bs_http_ok() {
    if command -v curl >/dev/null 2>&1; then
        [[ "$(curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null)" == 200 ]]
    else
        python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=3).status == 200 else 1)
EOF
    fi
}

bs_wait_http() {
    local pid="$1" url="$2" logfile="$3" deadline=$((SECONDS + BITSWEEP_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        bs_http_ok "$url" && return 0
        if ! bs_pid_alive "$pid"; then
            tail -n 40 "$logfile" >&2 || true
            bs_die "process $pid exited before $url answered (log: $logfile)"
        fi
        sleep 0.5
    done
    tail -n 40 "$logfile" >&2 || true
    bs_die "$url did not answer within ${BITSWEEP_START_TIMEOUT}s (log: $logfile)"
}

# Record every pid of the service's session (what a test checks after stop.sh).
bs_record_pids() {
    local dir="$1"
    bs_session_pids "$(cat "$dir/sid")" >"$dir/pids"
}

# Stop the service recorded in directory $1: SIGTERM to the leader, wait for its whole
# session to end, then SIGTERM and SIGKILL to whatever is left of that session.
bs_stop_service() {
    local dir="$1" name pid sid left deadline
    name="$(basename "$dir")"
    if [[ ! -f "$dir/pid" || ! -f "$dir/sid" ]]; then
        bs_log "$name: nothing recorded"
        return 0
    fi
    pid="$(cat "$dir/pid")"
    sid="$(cat "$dir/sid")"
    if bs_service_alive "$dir"; then
        bs_log "$name: SIGTERM to pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
    elif bs_pid_alive "$pid"; then
        # Same pid, another start time: the pid was recycled. The kernel does not reuse a
        # pid while a session or group of that id has members, so our session is gone and
        # the process now holding the pid (and maybe that session id) is not ours.
        bs_log "$name: pid $pid now belongs to another process; nothing of ours is left"
        rm -f "$dir/pid" "$dir/sid" "$dir/started"
        return 0
    fi
    deadline=$((SECONDS + BITSWEEP_STOP_TIMEOUT))
    while ((SECONDS < deadline)); do
        left="$(bs_session_pids "$sid")"
        [[ -z "$left" ]] && break
        sleep 0.5
    done
    left="$(bs_session_pids "$sid")"
    if [[ -n "$left" ]]; then
        bs_log "$name: SIGTERM to what is left of session $sid:" $left
        # shellcheck disable=SC2086
        kill -TERM $left 2>/dev/null || true
        deadline=$((SECONDS + 3))
        while ((SECONDS < deadline)) && [[ -n "$(bs_session_pids "$sid")" ]]; do sleep 0.2; done
        left="$(bs_session_pids "$sid")"
        if [[ -n "$left" ]]; then
            bs_log "$name: SIGKILL to" $left
            # shellcheck disable=SC2086
            kill -KILL $left 2>/dev/null || true
            sleep 0.5
        fi
    fi
    left="$(bs_session_pids "$sid")"
    if [[ -n "$left" ]]; then
        bs_log "$name: still running:" $left
        return 1
    fi
    rm -f "$dir/pid" "$dir/sid" "$dir/started"
    bs_log "$name: stopped"
}

# JSON string literal of $1 (paths and addresses: quotes and backslashes escaped).
bs_json_str() {
    local s="${1//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "$s"
}
