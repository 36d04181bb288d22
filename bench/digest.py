"""Every number a config publishes over a stream, as one digest: the same digest on two
commits means the same forecasts, to the bit.

    python -m bench.digest                                          # built-in defaults
    python -m bench.digest --keys 20 --partitions 16 --set FORECASTD_KAFKA__MAX_POLL_RECORDS=16
    python -m bench.digest --keys 7 --partitions 1 --records 12000

A change meant to make the daemon cheaper and nothing else (a buffer in place of a
copy, a loop fused, a plan run in fewer calls) should leave every forecast as it was.
A test of one model shows that for what it covers; this shows it for the whole
pipeline. It runs ``forecastd backtest``'s pipeline (no broker) on ``--records``
records of ``--dataset`` spread over ``--keys`` keys in ``--partitions`` partitions
(as :mod:`bench.pipeline` does), with every configured model published, so that a
member that moved shows even where the ensemble's output would hide it, and prints
how many predictions were published and the SHA-256 of them in order, each without
its ``produced_at`` (the wall clock). Run it on both commits with the same arguments,
for a few poll sizes and partitionings. Not a test: two machines may differ in the
last bits of their BLAS.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterable
from pathlib import Path

import orjson

from bench.pipeline import records_for
from bench.specs import add_set_option, set_overrides
from service.config import load_settings
from service.runtime.app import set_torch_threads
from service.tools.backtest import run_backtest
from service.workbench.collect import publish_all

WALL_CLOCK = frozenset({"produced_at"})
"""Fields of a prediction that say when it was made, not what it says."""


def digest(published: Iterable[bytes]) -> tuple[int, str]:
    """How many predictions, and the SHA-256 of their fields (sorted, less
    :data:`WALL_CLOCK`) in order."""
    hasher = hashlib.sha256()
    count = 0
    for value in published:
        fields = {k: v for k, v in orjson.loads(value).items() if k not in WALL_CLOCK}
        hasher.update(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))
        count += 1
    return count, hasher.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, help="default: the built-in settings")
    parser.add_argument("--dataset", default="sp500")
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--keys", type=int, default=20)
    add_set_option(parser, "the config")
    args = parser.parse_args(argv)
    # every model: the primary's output alone hides a member that moved behind a weight
    settings = publish_all(load_settings(args.config, env=set_overrides(parser, args.set)))
    set_torch_threads(settings.processing.torch_threads)
    records = records_for(settings, args.dataset, args.records, args.partitions, args.keys)
    count, hexdigest = digest(run_backtest(records, settings).published)
    print(f"{count} predictions, sha256 {hexdigest}")


if __name__ == "__main__":
    main()
