"""gunicorn settings for a service's API in a container (deploy/docker-entrypoint.sh `api`).

prometheus-client multiprocess mode, per its documentation: the start script sets
PROMETHEUS_MULTIPROC_DIR to an emptied directory before gunicorn starts, every worker writes
its samples there, /metrics merges them (shared/metrics.py), and ``child_exit`` marks a dead
worker's live gauges as gone.

Shutdown: on SIGTERM gunicorn stops accepting, lets in-flight requests finish for up to
``graceful_timeout`` seconds, then exits. Kubernetes waits for the preStop sleep (so the
endpoint is removed from the Service first) plus this, so the pod's
terminationGracePeriodSeconds must be at least PRESTOP_SECONDS + graceful_timeout + a margin;
tests/deploy checks that against deploy/k8s.
"""
import os

from prometheus_client import multiprocess

# Also used by tests/deploy to check the Kubernetes manifests against these settings.
PRESTOP_SECONDS = 5
GRACEFUL_TIMEOUT_DEFAULT = 25

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8080')}")
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", str(GRACEFUL_TIMEOUT_DEFAULT)))
# Longer than the ingress controller's upstream keep-alive (nginx: 60 s), so the proxy, not
# gunicorn, closes idle connections and never reuses one gunicorn has just closed.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "65"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))
# The app is imported in each worker, after the fork: metric files carry the worker's pid.
preload_app = False

# Read-only root filesystem: the heartbeat files go to memory, the control socket is off.
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR", "/dev/shm" if os.path.isdir("/dev/shm") else None)
control_socket_disable = True

# Logs to stderr. Access logs are off by default (the metrics carry rate, errors and duration);
# when enabled they print the path without its query string, which may hold an access token.
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG", "").lower() in ("1", "true", "yes") else None
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'


def post_fork(server, worker):  # noqa: ARG001 - gunicorn hook signature
    # A request thread whose database answer has arrived waits for the GIL until the running
    # thread blocks or the switch interval (Python's default: 5 ms) ends; 1 ms trims the tail
    # of concurrent requests (purchase bench, 8 buyers: p99 about 50 -> 45 ms, same CPU).
    import sys
    sys.setswitchinterval(float(os.environ.get("LINKSHOP_SWITCH_INTERVAL_MS", "1")) / 1000)


def on_starting(server):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        server.log.warning("PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows one worker only")
    else:
        os.makedirs(path, exist_ok=True)


def child_exit(server, worker):  # noqa: ARG001 - gunicorn hook signature
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
