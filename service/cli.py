"""``forecastd run | replay | backtest | tune | check | state | demo``: the command line.

Exit status: 0 on a clean stop, 2 on a bad config or bad arguments (one line naming
the key and the reason), 1 when the broker fails us (the supervisor restarts).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kafka.errors import KafkaError

from service.config import Settings, load_settings
from service.errors import ConfigError, DatasetError, ForecastdError
from service.extras import MissingExtra, require
from service.records import RawRecord

log = logging.getLogger("forecastd")

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as a shell reports a command stopped with Ctrl-C."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        _say(f"forecastd: config error: {exc}")
        return EXIT_CONFIG
    except (DatasetError, MissingExtra) as exc:
        _say(f"forecastd: {exc}")
        return EXIT_CONFIG
    except KafkaError as exc:  # a tool's client (replay, state): the daemon's are wrapped
        said = (
            str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
        )
        _say(
            f"forecastd: broker error: {said} (check kafka.bootstrap_servers, kafka.security"
            " and that the broker is up)"
        )
        return 1
    except KeyboardInterrupt:  # a tool stopped with Ctrl-C (the daemon and demo stop cleanly)
        _say("forecastd: interrupted")
        return EXIT_INTERRUPTED
    except ForecastdError as exc:
        from service.runtime.app import Interrupted

        if isinstance(exc, Interrupted):
            return 0
        _say(f"forecastd: {exc}")
        return 1


def _say(text: str) -> None:
    """The last line a command writes on standard error: through the log where the log
    is JSON (``processing.log_format: json``: a log pipeline parses every line), else
    printed as it is (a person reads it)."""
    from service.runtime.logs import JsonFormatter

    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        log.error(text.removeprefix("forecastd: "))
    else:
        print(text, file=sys.stderr)


def _at_least_zero(text: str) -> float:
    """An argument that is a number, 0 or more (argparse reports anything else)."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _warmup(text: str) -> float:
    """A share of the scores (below 1) or a whole number of them."""
    value = _at_least_zero(text)
    if value >= 1 and not value.is_integer():
        raise argparse.ArgumentTypeError(
            f"a share below 1 (0.2) or a whole number of scores (500), got {text}"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forecastd", description="Streaming regression and forecasting daemon for Kafka."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon against Kafka")
    run.add_argument("-c", "--config", help="YAML config (FORECASTD_* variables override it)")
    run.set_defaults(handler=_run)

    replay = commands.add_parser("replay", help="feed a CSV/Parquet file or bundled dataset")
    replay.add_argument("source", help="file path, or a dataset: sp500, waterflow, ...")
    replay.add_argument("-c", "--config", help="config for broker, topic and field names")
    replay.add_argument("--topic", help="target topic (default: kafka.input_topic)")
    replay.add_argument("--bootstrap", help="bootstrap servers (default: from the config)")
    _add_input_columns(replay, "'' to send no time field")
    replay.add_argument(
        "--rate", type=_at_least_zero, default=0.0, help="records/s; 0 = as fast as possible"
    )
    replay.add_argument("--limit", type=_count, default=0, help="send at most N records")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(handler=_replay)

    backtest = commands.add_parser(
        "backtest", help="replay a file or dataset offline through the pipeline; score models"
    )
    backtest.add_argument("source", help="file path, or a dataset: sp500, nonlinear-ar, ...")
    backtest.add_argument("-c", "--config", help="the config whose models and semantics to test")
    _add_input_columns(backtest, "'' to use no time column")
    backtest.add_argument(
        "--warmup",
        type=_warmup,
        default=0.2,
        help="leave out this fraction (<1) or count of scores",
    )
    backtest.add_argument(
        "--report", metavar="DIR", help="write metrics.json, predictions.parquet, plots, index.html"
    )
    backtest.add_argument("--quiet", action="store_true", help="no progress bar")
    backtest.set_defaults(handler=_backtest)

    check = commands.add_parser(
        "check", help="validate a config; print it resolved (defaults, environment; secrets masked)"
    )
    check.add_argument("-c", "--config", help="YAML config (FORECASTD_* variables override it)")
    check.add_argument(
        "--record",
        metavar="JSON",
        help="an input record's value: print what the daemon reads from it (exit 1: refused)",
    )
    check.add_argument("--record-key", metavar="KEY", help="that record's Kafka key, if any")
    check.add_argument(
        "--records",
        metavar="FILE",
        help="records' values, one a line ('-': standard input): a summary (exit 1: any refused)",
    )
    check.add_argument(
        "--broker",
        action="store_true",
        help="ask the broker: do the config's topics exist, with how many partitions; the"
        " group's committed offsets (exit 1: the daemon could not start)",
    )
    check.set_defaults(handler=_check)

    tune = commands.add_parser(
        "tune", help="search hyperparameters on a replay (Optuna); write the best config"
    )
    tune.add_argument("source", help="file path, or a dataset: sp500, waterflow, ...")
    tune.add_argument("-c", "--config", help="the config to start from")
    tune.add_argument("--trials", type=int, default=20, help="trials to run")
    tune.add_argument(
        "--timeout", type=_positive, default=None, help="stop starting trials after S s"
    )
    tune.add_argument("--seed", type=int, default=0, help="sampler seed")
    tune.add_argument("--jobs", type=_count, default=0, help="parallel processes (0: one per core)")
    tune.add_argument(
        "--holdout", type=float, default=0.3, help="share of the replay held back for re-scoring"
    )
    tune.add_argument("--out", required=True, help="where to write the tuned YAML config")
    _add_input_columns(tune, "'' to use no time column")
    tune.add_argument("--limit", type=_count, default=0, help="use the first N records only")
    tune.set_defaults(handler=_tune)

    state = commands.add_parser("state", help="the learned state's checkpoints (state topic)")
    state_commands = state.add_subparsers(dest="state_command", required=True)
    listing = state_commands.add_parser("ls", help="the newest checkpoint of each partition")
    listing.add_argument("-c", "--config", help="YAML config (broker, group, state.topic)")
    listing.set_defaults(handler=_state_ls)
    show = state_commands.add_parser("show", help="summarise one partition's checkpoint")
    show.add_argument("partition", type=int, help="input partition")
    show.add_argument("-c", "--config", help="YAML config (broker, group, state.topic)")
    show.set_defaults(handler=_state_show)

    demo = commands.add_parser("demo", help="embedded broker + real data + live table")
    demo.add_argument("-c", "--config", help="YAML config (default: the built-in demo config)")
    demo.add_argument("--dataset", default="sp500", help="bundled dataset to replay")
    demo.add_argument(
        "--duration", type=_positive, default=90.0, help="stop after this many seconds"
    )
    demo.add_argument("--rate", type=_positive, default=300.0, help="records/s to replay")
    demo.add_argument(
        "--bad-every",
        type=_count,
        default=200,
        help="insert one malformed record every N (0: none)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def _add_input_columns(parser: argparse.ArgumentParser, no_time: str) -> None:
    """The options that map a file's columns onto input records (replay, backtest,
    tune): :func:`_records_of` reads them."""
    parser.add_argument(
        "--key-col", default="key", help="'' to read the file as one series (keyed by its name)"
    )
    parser.add_argument("--time-col", default="ts", help=no_time)
    parser.add_argument("--target-col", default="y")
    parser.add_argument(
        "--features",
        help="comma-separated feature columns (default: all numeric ones with a name)",
    )
    parser.add_argument(
        "--sort",
        action="store_true",
        help="send the rows in time order (a file written newest first, say)",
    )


def _configure_logging(settings: Settings) -> None:
    from service.runtime.logs import configure

    configure(settings)


def _run(args: argparse.Namespace) -> int:
    import threading

    from service.runtime.cpus import resolve_workers

    settings = load_settings(args.config)
    _configure_logging(settings)
    stop = threading.Event()
    workers = resolve_workers(settings.processing.workers)
    if workers > 1:  # a supervisor of worker processes, which never loads the models
        from service.runtime.workers import Pod, install_pod_signal_handlers

        install_pod_signal_handlers(stop)
        return Pod(settings, workers, stop_event=stop).run()
    from service.runtime.app import Daemon, install_signal_handlers

    install_signal_handlers(stop)  # first: a SIGTERM while connecting stops cleanly too
    # kafka-python logs every failed connection attempt (a dozen lines per second of
    # an outage) while it bootstraps; the outcome is one line of ours instead.
    # It stays quiet if connecting fails: its threads may still be retrying.
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    daemon = Daemon(settings, stop_event=stop)
    kafka_log.setLevel(level)
    return daemon.run()


def _replay(args: argparse.Namespace) -> int:
    require("tools", "forecastd replay")
    from service.tools import replay

    settings = load_settings(args.config)
    pairs = _records_of(args, settings)
    topic = args.topic or settings.kafka.input_topic
    bootstrap = args.bootstrap or settings.kafka.bootstrap_servers
    sent = replay.to_kafka(
        pairs,
        topic,
        bootstrap,
        args.rate,
        not args.quiet,
        dict(settings.kafka.security),
        connect_timeout_s=settings.kafka.connect_timeout_s,
    )
    print(f"sent {sent} records to {topic}")
    return 0


def _records_of(args: argparse.Namespace, settings: Settings) -> list[tuple[bytes, bytes]]:
    from service.tools import replay

    frame = replay.load_input(args.source)
    features = tuple(f for f in args.features.split(",") if f) if args.features else None
    columns = replay.Columns(
        args.key_col or None,
        args.time_col or None,
        args.target_col,
        features,
        series=Path(args.source).stem or "series",
    )
    if args.sort:
        frame = replay.in_time_order(frame, columns, settings.schema_.time_format)
    if getattr(args, "limit", 0):
        frame = frame.head(args.limit)
    pairs = replay.encode(frame, columns, settings.schema_)  # first: it checks the columns
    if not args.sort and settings.forecast.out_of_order == "dlq":
        older = replay.older_rows(frame, columns, settings.schema_.time_format)
        if older:
            print(
                f"forecastd: {older} of {len(frame)} rows are older than an earlier row of"
                " their key and will be dead-lettered as out_of_order; if the file is not in"
                " time order (newest first, say), --sort sends its rows in time order",
                file=sys.stderr,
            )
    return pairs


def _offline_records(args: argparse.Namespace, settings: Settings) -> list[RawRecord]:
    """Records for an offline replay. Without a time column (``--time-col ''``) each
    record carries the time it is read at, one millisecond apart, as a broker would
    stamp records produced in one burst: the decoder then takes the record time, as
    the daemon does for input without a ``ts`` field."""
    from service.tools import replay

    records = replay.as_records(_records_of(args, settings), settings.kafka.input_topic)
    if args.time_col:
        return records
    start = time.time_ns() // 1_000_000
    return [r._replace(timestamp_ms=start + i) for i, r in enumerate(records)]


def _backtest(args: argparse.Namespace) -> int:
    require("tools", "forecastd backtest")
    from rich.console import Console
    from rich.table import Table

    from service.runtime.app import set_torch_threads
    from service.tools.backtest import run_backtest

    settings = load_settings(args.config)
    if args.report:
        require("workbench", "forecastd backtest --report")
        _writable_directory(Path(args.report), "--report")
    set_torch_threads(settings.processing.torch_threads)
    records = _offline_records(args, settings)
    if args.report:
        from service.workbench.progress import bar
        from service.workbench.report import build

        with bar(len(records), "backtest", disable=args.quiet) as advance:
            report = build(records, settings, Path(args.report), args.warmup, args.source, advance)
        result = report.run.as_backtest(args.warmup)
    else:
        result = run_backtest(records, settings, warmup=args.warmup)
    table = Table(title=f"backtest of {args.source}: prequential scores after warm-up")
    for column in ("model", "kind", "scored", "MAE", "RMSE", "R²"):
        table.add_column(column, justify="left" if column in {"model", "kind"} else "right")
    for model in settings.models:
        stats = result.scores.get(model.name)
        if stats is None:
            continue
        name = f"{model.name}*" if model.primary else model.name
        table.add_row(
            name,
            model.kind,
            str(stats.n),
            f"{stats.mae:.4f}",
            f"{stats.rmse:.4f}",
            f"{stats.r2:.4f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"{len(records)} records, {result.dead_lettered()}, "
        f"{result.events_per_s:,.0f} events/s; * primary"
    )
    if args.report:
        console.print(f"report: {args.report}/index.html")
    return 0


def _check(args: argparse.Namespace) -> int:
    from service.workbench.check import read_record, read_records, render

    given = [n for n in ("record", "records") if getattr(args, n) is not None]
    given += ["broker"] if args.broker else []
    if len(given) > 1:
        raise ConfigError(f"{' and '.join('--' + n for n in given)}: give one of them")
    if args.broker:
        from service.workbench.preflight import preflight

        text, read = preflight(load_settings(args.config))
    elif args.records is not None:
        settings = load_settings(args.config)
        if args.records == "-":
            stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
            text, read = read_records(settings, stdin)
        else:
            try:
                with open(args.records, encoding="utf-8", errors="surrogateescape") as lines:
                    text, read = read_records(settings, lines)
            except OSError as exc:
                raise DatasetError(f"cannot read {args.records}: {exc.strerror}") from exc
    elif args.record is not None:
        text, read = read_record(load_settings(args.config), args.record, args.record_key)
    else:
        print(render(args.config), end="")
        return 0
    print(text, end="")
    return 0 if read else 1


def _tune(args: argparse.Namespace) -> int:
    require("workbench", "forecastd tune")
    from service.workbench.tune import tune

    settings = load_settings(args.config)
    _writable_directory(Path(args.out).parent, "--out")
    return tune(_offline_records(args, settings), settings, args)


def _writable_directory(directory: Path, option: str) -> None:
    """Create ``directory`` if need be, and check it takes files, before a long run
    whose results would go there.

    Raises:
        ConfigError: it cannot be created or written.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option}: cannot create {directory}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: cannot write into {directory}")


def _state_ls(args: argparse.Namespace) -> int:
    from service.tools.inspect_state import table

    print("\n".join(table(load_settings(args.config))))
    return 0


def _state_show(args: argparse.Namespace) -> int:
    from service.tools.inspect_state import summary

    try:
        lines = summary(load_settings(args.config), args.partition)
    except LookupError as exc:
        print(f"forecastd: {exc.args[0]}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _demo(args: argparse.Namespace) -> int:
    require("demo", "forecastd demo")
    from service.tools.demo import run_demo

    return run_demo(args.config, args.dataset, args.duration, args.rate, args.bad_every)
