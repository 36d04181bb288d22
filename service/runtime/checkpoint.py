"""The one place where the order of completing a batch is written down.

For every batch, in this order:

1. **Flush the sink.** Every prediction and dead letter produced from the batch is
   acknowledged by the broker (``acks=all``), or :class:`~service.errors.BrokerError`
   is raised and nothing below happens.
2. **Account** for the acknowledged outputs (latency histogram, produced counters).
3. **Commit the input offsets** of the batch (the next offset of each partition).

A crash before step 3 means the batch is read again after restart: its predictions
may be published twice (at-least-once; consumers de-duplicate on ``source``), but no
input record is ever committed without its outputs on the broker. State snapshots,
when they exist, go between steps 2 and 3, so restored state never runs ahead of the
committed offsets.
"""

from __future__ import annotations

from service.io.sinks import Sink
from service.io.sources import Source
from service.pipeline.processor import BatchResult, Processor
from service.runtime.metrics import Metrics


def complete_batch(
    result: BatchResult, sink: Sink, source: Source, processor: Processor, metrics: Metrics
) -> None:
    """Make the batch durable in the order above."""
    sink.flush()
    processor.acknowledged(result)
    if result.offsets:
        source.commit(result.offsets)
        metrics.commits.inc()
