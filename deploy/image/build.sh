#!/usr/bin/env bash
# Build the forecastd image with podman (`make image`).
#
#   IMAGE=localhost/forecastd:dev deploy/image/build.sh
#
# Environment:
#   IMAGE         tag to build (default localhost/forecastd:dev)
#   PYTHON_IMAGE  base of both stages; default: a base made from Debian packages by
#                 deploy/image/base.sh (for machines that reach no container
#                 registry); elsewhere e.g. python:3.11-slim-bookworm
#   TORCH_INDEX   index for torch; default the Dockerfile's (the CPU-only index)
#   TORCH_WHEELS  a folder holding the CPU torch wheel, mounted into the build; default
#                 /opt/wheels where it holds one (then TORCH_INDEX defaults to PyPI,
#                 for torch's own dependencies)
#   PIP_CERT      a CA bundle pip must trust (as on the host), mounted into the build
#   ISOLATION     podman's build isolation (default chroot: no user namespaces needed)
#
# Prints the build time and the image size at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The tools the build and the image test use (runc: this sandbox refuses crun's
# setrlimit), from Debian's packages where missing.
missing=()
for tool in podman debootstrap runc; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})) && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

IMAGE=${IMAGE:-localhost/forecastd:dev}
ISOLATION=${ISOLATION:-chroot}
TORCH_WHEELS=${TORCH_WHEELS:-}
if [[ -z "$TORCH_WHEELS" ]] && compgen -G "/opt/wheels/torch-*+cpu-*.whl" >/dev/null; then
    TORCH_WHEELS=/opt/wheels
fi

args=(--isolation "$ISOLATION" --tag "$IMAGE" --file Dockerfile)
if [[ -z "${PYTHON_IMAGE:-}" ]]; then
    PYTHON_IMAGE=localhost/forecastd-base:bookworm
    bash deploy/image/base.sh "$PYTHON_IMAGE"
fi
args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
if [[ -n "$TORCH_WHEELS" ]]; then
    args+=(--volume "$TORCH_WHEELS:/wheels:ro" --build-arg TORCH_WHEELS=/wheels)
    TORCH_INDEX=${TORCH_INDEX:-https://pypi.org/simple}
fi
# pip inside the build trusts certifi's bundle only: where this machine's pip trusts a
# CA of its own (a proxy that intercepts TLS), lend that bundle to the build stage.
if [[ -n "${PIP_CERT:-}" && -f "$PIP_CERT" ]]; then
    args+=(--volume "$PIP_CERT:/etc/pip-ca.crt:ro" --build-arg PIP_CERT=/etc/pip-ca.crt)
fi
if [[ -n "${TORCH_INDEX:-}" ]]; then
    args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
fi

start=$(date +%s)
podman build "${args[@]}" .
elapsed=$(( $(date +%s) - start ))
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE in ${elapsed}s; size $(( size / 1000000 )) MB (base $PYTHON_IMAGE)"
