"""Cost of every registered model kind: predict + learn events/s per micro-batch size.

    python bench/models.py                      # all kinds, batches of 1, 64 and 512
    python bench/models.py --kinds torch.mlp torch.attention --threads 2
    python bench/models.py --kinds torch.mlp torch.attention --device cuda   # a GPU node

Each cell drives one model the way a partition task does: ``predict`` on a batch, then
``learn`` on the same rows, repeated for ``--seconds`` on synthetic batches shaped like
the daemon's defaults (12 features: 8 lags + 4 window statistics; window 32; change
targets). It reports events per second of predict + learn, so a cell is the most one
core could push through that model alone. Not a test: numbers depend on the machine
and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# Run as a script, Python puts bench/ first on sys.path, where this very file would
# shadow the top-level ``models`` package; put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != _HERE)]

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from models import registry  # noqa: E402
from models.base import ModelContext  # noqa: E402
from models.checks import synthetic_batches  # noqa: E402

SIZES = (1, 64, 512)
CONTEXT = ModelContext(
    feature_names=(*(f"diff_{i}" for i in range(1, 9)), "mean_dev", "std", "min_dev", "max_dev"),
    window=32,
    horizon=1,
    seed=0,
)
# Kinds whose params have no defaults; every other kind runs on its defaults.
REQUIRED: dict[str, dict[str, Any]] = {"river.custom": {"estimator": "linear_model.PARegressor"}}
# Extra rows: what torch.attention would cost without its cheap defaults (the hybrid
# measured in issue 4: width 32, 4 heads, a step on every row of every batch).
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "torch.attention",
        "w32 h4, all rows",
        {"width": 32, "heads": 4, "learn_every": 1, "max_step_rows": None},
    ),
    (
        "rls",
        "exogenous, level (the tables' member before ridge)",
        {"inputs": "exogenous", "target": "level", "ridge": 1.0},
    ),
]


def events_per_second(
    kind: str, params: dict[str, Any], size: int, seconds: float, context: ModelContext = CONTEXT
) -> float:
    """Predict + learn events/s of one fresh model on batches of ``size`` rows."""
    model = registry.build(kind, params, context)
    n_batches = max(4, min(200, 4096 // size))
    stream = list(synthetic_batches(context, n_batches=n_batches, batch_size=size, seed=1))
    for batch, target in stream[:5]:  # warm-up: first calls allocate and dispatch slowly
        model.predict(batch)
        model.learn(batch, target)
    start = time.perf_counter()
    for calls, (batch, target) in enumerate(itertools.cycle(stream), start=1):
        model.predict(batch)
        model.learn(batch, target)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return calls * size / elapsed
    raise AssertionError("unreachable: cycle() never ends")


def device_name(device: str) -> str:
    """The GPU's name for the header line, empty on CPU."""
    if device == "cpu":
        return ""
    return f" + {torch.cuda.get_device_name(torch.device(device))}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="*", help="kinds to run (default: all registered)")
    parser.add_argument("--sizes", nargs="*", type=int, default=list(SIZES))
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per cell")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--device", default="cpu", help="the torch.* kinds' device param (cpu, cuda, cuda:1)"
    )
    parser.add_argument(
        "--exogenous",
        type=int,
        default=0,
        help="the last N features are the events' own (what ridge and rls's exogenous read)",
    )
    args = parser.parse_args(argv)
    names = CONTEXT.feature_names
    if not 0 <= args.exogenous <= len(names):
        parser.error(f"--exogenous: from 0 to {len(names)}")
    context = replace(CONTEXT, exogenous=names[len(names) - args.exogenous :])
    torch.set_num_threads(args.threads)
    kinds = args.kinds or registry.kinds()
    rows = [(kind, "defaults", REQUIRED.get(kind, {})) for kind in kinds]
    rows += [variant for variant in VARIANTS if variant[0] in kinds]
    if args.device != "cpu":
        rows = [
            (kind, f"{label}, {args.device}", {**params, "device": args.device})
            for kind, label, params in rows
            if kind.startswith("torch.")
        ]

    console = Console()
    console.print(
        f"predict + learn, events/s (higher is better) - torch {torch.__version__}, "
        f"{args.threads} torch thread(s), {platform.processor() or platform.machine()}"
        f"{device_name(args.device)}, "
        f"window {CONTEXT.window}, {CONTEXT.n_features} features"
        f" ({args.exogenous} the events' own), "
        f"{args.seconds:g} s per cell"
    )
    table = Table(show_lines=False)
    table.add_column("model")
    table.add_column("params")
    for size in args.sizes:
        table.add_column(f"batch {size}", justify="right")
    started = time.perf_counter()
    for kind, label, params in rows:
        cells = []
        for size in args.sizes:
            rate = events_per_second(kind, params, size, args.seconds, context)
            cells.append(f"{rate:,.0f}")
        table.add_row(kind, label, *cells)
    console.print(table)
    console.print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
