# forecastd production image.
#
#   docker build -t forecastd .         # or: make image (podman; deploy/image/build.sh)
#   docker run --rm -p 9108:9108 --read-only --tmpfs /tmp \
#     -v "$PWD/deploy/base/config.yaml:/etc/forecastd/config.yaml:ro" \
#     -v forecastd-state:/var/lib/forecastd \
#     -e FORECASTD_KAFKA__BOOTSTRAP_SERVERS=broker:9092 forecastd
#
# Two stages: `build` makes a virtual environment in /opt/venv (CPU-only torch first,
# then the runtime dependencies, then the package); the runtime stage copies only
# that venv onto a fresh slim base, so no pip cache, build tooling or sources ship.
# Layers run from least to most often changed: torch, dependencies (keyed on
# pyproject.toml), then the source, so an edit to service/ or models/ rebuilds one
# small layer.
#
# PYTHON_IMAGE is the base of both stages: any Debian-like image with Python 3.11
# (`python` on PATH, its venv module) and useradd. Where no registry is reachable,
# deploy/image/base.sh makes one from Debian packages.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

# Keep in step with the Makefile's pin.
ARG TORCH_VERSION=2.13.0
# Where torch comes from: the CPU-only index (PyPI's Linux wheel is the CUDA build,
# several GB of libraries). Where a machine has the CPU wheel on disk instead, mount
# its folder and name it (`podman build -v /opt/wheels:/wheels:ro --build-arg
# TORCH_WHEELS=/wheels --build-arg TORCH_INDEX=https://pypi.org/simple`): the CPU
# wheel's `+cpu` version outranks PyPI's, and the check below fails a CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS=
# Build-time only: a CA bundle (mounted) for a network whose TLS is intercepted. Unset
# unless given; it never reaches the runtime stage.
ARG PIP_CERT

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# CPU-only wheel, checked: a CUDA build fails the build here rather than shipping.
# The constraint keeps every later resolve from swapping it for another build.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
        --index-url "${TORCH_INDEX}" \
        --find-links "${TORCH_WHEELS:-/nonexistent}" \
    && python -c 'import torch, sys; sys.exit(torch.version.cuda is not None)' \
    && echo "torch==${TORCH_VERSION}" > /opt/constraints.txt

WORKDIR /src

# Runtime dependencies only, read from pyproject.toml, so this layer is reused until
# the dependency list changes.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt -c /opt/constraints.txt

# The package itself, without touching the dependencies installed above.
COPY README.md ./
COPY service/ service/
COPY models/ models/
RUN pip install --no-cache-dir --no-deps . \
    && pip check


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="forecastd" \
      org.opencontainers.image.description="Streaming regression and forecasting daemon: Kafka in, online models, scored predictions out." \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, unprivileged uid/gid (10001) that matches runAsUser/runAsGroup in
# deploy/base/deployment.yaml. The daemon writes only to its state directory and /tmp;
# with a read-only root filesystem both must be mounted (emptyDir, tmpfs or a volume).
RUN groupadd --system --gid 10001 forecastd \
    && useradd --system --uid 10001 --gid forecastd --home-dir /var/lib/forecastd \
        --no-create-home --shell /usr/sbin/nologin forecastd \
    && install -d -o forecastd -g forecastd -m 0750 /var/lib/forecastd \
    && install -d -m 0755 /etc/forecastd

COPY --from=build /opt/venv /opt/venv

# Bytecode was compiled at install time in the build stage; never write .pyc at run
# time (the root filesystem is read-only). HOME points at /tmp so that any library
# cache (~/.cache) lands on the writable mount.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

USER 10001:10001
WORKDIR /var/lib/forecastd

# Prometheus metrics, /healthz and /readyz (config `metrics.port`).
EXPOSE 9108

ENTRYPOINT ["forecastd"]
CMD ["run", "-c", "/etc/forecastd/config.yaml"]
