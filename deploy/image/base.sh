#!/usr/bin/env bash
# Build the image's base from Debian packages (debootstrap, then `podman import`), for
# machines that reach Debian's archive but no container registry. Elsewhere, build
# from python:3.11-slim-bookworm (the Dockerfile's default PYTHON_IMAGE) and skip this.
#
#   deploy/image/base.sh [TAG]      default TAG: localhost/forecastd-base:bookworm
#
# The base holds what the Dockerfile's two stages run: Debian's python3.11 with venv
# and pip (`python` on PATH, as in the python image), and useradd/groupadd (passwd,
# which minbase already has). Needs root, debootstrap and podman.
set -euo pipefail

TAG=${1:-localhost/forecastd-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if podman image exists "$TAG"; then
    echo "base image $TAG exists; remove it (podman rmi $TAG) to rebuild"
    exit 0
fi

rootfs=$(mktemp -d /var/tmp/forecastd-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR"

# Keep the base small and reproducible: no package lists, caches or docs.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*

tar --numeric-owner -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$TAG"
echo "built $TAG"
