#!/bin/sh
# Container entrypoint: one image runs any service's API, its worker, or the migrations.
#
#   api <svc> [gunicorn args]   gunicorn services.<svc>.wsgi:app with deploy/gunicorn.conf.py,
#                               in prometheus-client multiprocess mode (the directory in
#                               PROMETHEUS_MULTIPROC_DIR, default /tmp/prometheus-multiproc,
#                               is emptied first: stale files from a previous run would be
#                               summed into the new one's metrics)
#   worker <svc>                python -m services.<svc>.worker (one process: its own registry)
#   web [gunicorn args]         gunicorn web.wsgi:app: the storefront's pages (no metrics, no state)
#   migrate [svc ...]           python -m services.manage migrate
#   anything else               executed as given (e.g. `sh` for debugging)
set -eu

APP_DIR="${APP_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
SERVICES="catalog delivery referral payout risk"

usage() {
    echo "usage: docker-entrypoint.sh api <service> | worker <service> | web | migrate [service ...]" >&2
    echo "       services: $SERVICES" >&2
}

check_service() {
    for s in $SERVICES; do
        [ "$s" = "${1:-}" ] && return 0
    done
    echo "docker-entrypoint: unknown service '${1:-}'" >&2
    usage
    exit 64
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift

case "$cmd" in
    api)
        check_service "${1:-}"
        svc="$1"; shift
        dir="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus-multiproc}"
        case "$dir" in
            /?*/?*) ;;
            *) echo "docker-entrypoint: refusing to wipe PROMETHEUS_MULTIPROC_DIR='$dir'" >&2; exit 64 ;;
        esac
        mkdir -p "$dir"
        # Empty it, not remove it: it is usually an emptyDir mount point.
        find "$dir" -mindepth 1 -delete
        export PROMETHEUS_MULTIPROC_DIR="$dir"
        cd "$APP_DIR"
        exec gunicorn --config "$APP_DIR/deploy/gunicorn.conf.py" "services.$svc.wsgi:app" "$@"
        ;;
    web)
        cd "$APP_DIR"
        exec gunicorn --config "$APP_DIR/deploy/gunicorn.conf.py" "web.wsgi:app" "$@"
        ;;
    worker)
        check_service "${1:-}"
        svc="$1"; shift
        # A single process: the default registry, not the API's multiprocess files.
        unset PROMETHEUS_MULTIPROC_DIR
        cd "$APP_DIR"
        exec python -m "services.$svc.worker" "$@"
        ;;
    migrate)
        for s in "$@"; do check_service "$s"; done
        cd "$APP_DIR"
        exec python -m services.manage migrate "$@"
        ;;
    help|-h|--help)
        usage
        exit 0
        ;;
    *)
        exec "$cmd" "$@"
        ;;
esac
