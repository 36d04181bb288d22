"""The production image, built and run for real (opt-in: ``make test-image``).

Builds the image with ``deploy/image/build.sh`` (podman; layers are cached, so a
rebuild after a source edit redoes only the last ones), then runs it the way the
Deployment does: read-only root filesystem, uid 10001, tmpfs on ``/tmp`` and the state
directory, the config mounted read-only. It must consume from the session's embedded
broker (on the host's loopback: the container shares the host's network), publish
predictions, answer ``/readyz`` with 200, and on SIGTERM (``podman stop``) commit
and exit 0 well inside the grace period.

Where the container runtime cannot apply podman's default resource limits (a
sandbox that forbids raising RLIMIT_NOFILE / RLIMIT_NPROC, or cgroups in hybrid mode
that crun refuses), the run falls back to runc with the current process's limits,
and says so: see :func:`run_flags`.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from service.tools.broker import EmbeddedBroker, free_port
from tests.integration.kafka_helpers import (
    consume_all,
    fresh_topics,
    produce,
    scrape,
    wait_for,
)
from tests.integration.streams import linear_trends

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(
        os.environ.get("FORECASTD_IMAGE_TEST") != "1",
        reason="opt-in (builds a container image): run `make test-image`",
    ),
    pytest.mark.timeout(1800),
]

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("FORECASTD_IMAGE", "localhost/forecastd:dev")
EVENTS_PER_KEY = 40  # three keys: 120 records


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built (or brought up to date) by the same script as ``make image``."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (Debian: apt-get install podman)", pytrace=False)
    start = time.monotonic()
    build = subprocess.run(
        ["bash", str(REPO / "deploy/image/build.sh")],
        env={**os.environ, "IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert build.returncode == 0, f"image build failed:\n{build.stdout[-4000:]}\n{build.stderr}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\nimage {IMAGE}: {size / 1e6:.0f} MB, built in {time.monotonic() - start:.0f}s")
    return IMAGE


@pytest.fixture(scope="module")
def run_flags(image: str) -> list[str]:
    """``podman run`` flags this machine needs, found by trying the plain run first.

    Inside some sandboxes crun cannot set podman's default RLIMIT_NOFILE (a raise
    above the caller's hard limit is refused) and rejects hybrid cgroups; runc with
    the caller's own limits works there. Both outcomes are printed.
    """
    plain = podman("run", "--rm", image, "--help", check=False)
    if plain.returncode == 0:
        return []
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # The daemon runs tens of threads; a sandbox here refused 65,536 but took 32,768.
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 4096)
    fallback = [
        "--runtime",
        "runc",
        "--ulimit",
        f"nofile={nofile}:{nofile}",
        "--ulimit",
        f"nproc={nproc}:{nproc}",
    ]
    retry = podman("run", *fallback, "--rm", image, "--help", check=False)
    assert retry.returncode == 0, (
        f"the image does not start here.\nplain podman run: {plain.stderr.strip()}\n"
        f"with {' '.join(fallback)}: {retry.stderr.strip()}"
    )
    print(f"\nplain `podman run` fails here ({plain.stderr.strip()}); using {fallback}")
    return fallback


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"forecastd-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "--force", "--time", "0", name, check=False)


def test_image_serves_predictions_read_only_as_10001_and_stops_cleanly_on_sigterm(
    image: str,
    run_flags: list[str],
    broker: EmbeddedBroker,
    container_name: str,
    tmp_path: Path,
) -> None:
    topics = fresh_topics(broker, partitions=2)
    config = tmp_path / "config.yaml"
    config.write_text("forecast:\n  horizon: 1\n")  # the built-in models: torch included
    config.chmod(0o644)
    port = free_port()
    env = {
        "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "FORECASTD_KAFKA__INPUT_TOPIC": topics.input,
        "FORECASTD_KAFKA__OUTPUT_TOPIC": topics.output,
        "FORECASTD_KAFKA__DEAD_LETTER_TOPIC": topics.dlq,
        "FORECASTD_KAFKA__GROUP_ID": topics.group,
        "FORECASTD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "FORECASTD_METRICS__HOST": "127.0.0.1",
        "FORECASTD_METRICS__PORT": str(port),
    }
    records = linear_trends(EVENTS_PER_KEY)
    produce(broker.bootstrap, topics.input, records)

    podman(
        "run",
        "--detach",
        "--name",
        container_name,
        *run_flags,
        "--network",
        "host",
        "--read-only",
        "--user",
        "10001:10001",
        "--tmpfs",
        "/tmp:rw,size=64m",
        "--tmpfs",
        "/var/lib/forecastd:rw,size=64m,mode=0750,U",  # U: owned by the container user
        "--volume",
        f"{config}:/etc/forecastd/config.yaml:ro",
        *[part for name, value in env.items() for part in ("--env", f"{name}={value}")],
        image,
    )

    def logs() -> str:
        return (
            podman("logs", container_name, check=False).stdout
            + podman("logs", container_name, check=False).stderr
        )

    def ready() -> bool:
        running = podman("inspect", "--format", "{{.State.Running}}", container_name)
        assert running.stdout.strip() == "true", f"the container exited:\n{logs()}"
        try:
            return scrape(port, "/readyz")[0] == 200
        except OSError:
            return False

    wait_for(ready, 120, "/readyz to answer 200")
    predictions = consume_all(broker.bootstrap, topics.output, len(records), timeout_s=120)
    assert len(predictions) == len(records), logs()
    first = orjson.loads(predictions[0].value)
    assert {"key", "ts", "horizon", "y_hat", "model", "model_version", "source"} <= set(first)
    assert first["model"] == "ensemble"

    inspect = podman(
        "inspect", "--format", "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}", container_name
    )
    assert inspect.stdout.split() == ["true", "10001:10001"]
    assert podman("exec", container_name, "id", "-u").stdout.strip() == "10001"
    write = podman("exec", container_name, "touch", "/opt/venv/probe", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr

    stop_start = time.monotonic()
    podman("stop", "--time", "50", container_name, timeout=90)
    stopped_in = time.monotonic() - stop_start
    code = podman("inspect", "--format", "{{.State.ExitCode}}", container_name).stdout.strip()
    output = logs()
    assert code == "0", f"exit {code} after SIGTERM:\n{output}"
    assert stopped_in < 40, f"took {stopped_in:.0f}s to stop: SIGTERM was not handled"
    assert "Traceback" not in output, output

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=topics.group, enable_auto_commit=False
    )
    try:
        committed = sum(
            consumer.committed(TopicPartition(topics.input, partition)) or 0 for partition in (0, 1)
        )
    finally:
        consumer.close()
    assert committed == len(records), "the final batch was not committed on SIGTERM"
    print(f"\nstopped in {stopped_in:.1f}s after SIGTERM; {committed} offsets committed")
