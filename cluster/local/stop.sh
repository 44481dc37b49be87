#!/usr/bin/env bash
# Stop services that the cluster/local scripts started, by the pids they recorded.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: stop.sh [-h] [--all] [NAME...]

Stops the services recorded in $BITSWEEP_CLUSTER_DIR by pid: NAME is a subdirectory there
(head, worker-1, mlflow, ...). Without NAME it stops every Ray node recorded on this machine,
workers first, then the head; --all also stops the MLflow server.

Each service gets SIGTERM (Ray drains the node and stops its own processes), then whatever
is left of its session after BITSWEEP_STOP_TIMEOUT seconds [45] gets SIGTERM and SIGKILL.
Only processes of the sessions these scripts started are ever signalled (Ray's own stop
command, which stops every Ray process of the user, is not used; nothing is looked up by
process name). Exit status 1 if anything survived.
EOF
}

ALL=0
names=()
for arg in "$@"; do
    case "$arg" in
    -h | --help)
        usage
        exit 0
        ;;
    --all) ALL=1 ;;
    -*)
        usage >&2
        exit 2
        ;;
    *) names+=("$arg") ;;
    esac
done

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ -d "$BITSWEEP_CLUSTER_DIR" ]] || {
    bs_log "no state directory $BITSWEEP_CLUSTER_DIR; nothing to stop"
    exit 0
}

if [[ ${#names[@]} -eq 0 ]]; then
    # Workers before the head, so none of them waits on a vanished GCS.
    for dir in "$BITSWEEP_CLUSTER_DIR"/*/; do
        name="$(basename "$dir")"
        [[ -f "$dir/pid" && "$name" != head && "$name" != mlflow ]] && names+=("$name")
    done
    [[ -f "$BITSWEEP_CLUSTER_DIR/head/pid" ]] && names+=(head)
    [[ $ALL == 1 && -f "$BITSWEEP_CLUSTER_DIR/mlflow/pid" ]] && names+=(mlflow)
fi
if [[ ${#names[@]} -eq 0 ]]; then
    bs_log "nothing recorded in $BITSWEEP_CLUSTER_DIR"
    exit 0
fi

status=0
for name in "${names[@]}"; do
    [[ "$name" != */* && -d "$BITSWEEP_CLUSTER_DIR/$name" ]] || {
        bs_log "$name: not recorded in $BITSWEEP_CLUSTER_DIR"
        status=1
        continue
    }
    bs_stop_service "$BITSWEEP_CLUSTER_DIR/$name" || status=1
done
if [[ ! -f "$BITSWEEP_CLUSTER_DIR/head/pid" ]]; then
    rm -f "$BITSWEEP_CLUSTER_DIR/cluster.env" "$BITSWEEP_CLUSTER_DIR/cluster.json"
fi
exit "$status"
