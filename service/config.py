"""Frozen, validated settings: the only place that reads YAML and the environment.

Precedence, lowest first: built-in defaults, the YAML file, then environment variables
named ``FORECASTD_`` + the key path in upper case with ``__`` between levels
(``FORECASTD_KAFKA__BOOTSTRAP_SERVERS=broker:9092``). A numeric level indexes a list
(``FORECASTD_MODELS__0__PARAMS__LR=0.01``). Environment values are strings that the
field's type converts (``6000`` becomes an int where an int is expected); ``[a, b]``
and ``{k: v}`` are read as YAML lists and maps, except under ``kafka.security``, where
every value stays the exact string it is: a password ``[abc]`` or ``{x`` is a
password, not a list or a YAML error.

Secrets never appear in an error: values under ``kafka.security`` and of any key
whose name says password, secret, token, credential or private key
(:func:`is_secret_key`) are masked in validation errors and in ``repr``; an unknown
``kafka.security`` key is rejected by name, against the list of options the clients
know (:data:`SECURITY_OPTIONS`), before any client sees (and echoes) it.

Why hand-rolled env merging rather than pydantic-settings: we need list indexing and
the YAML file as the base layer with one error format for both; the merge is twenty
lines and keeps a single path from raw data to validated settings.

Any invalid value fails start-up with :class:`~service.errors.ConfigError`, whose
message is one line naming the key path and the reason; the CLI exits with status 2.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from models import registry
from service.errors import ConfigError

ENV_PREFIX = "FORECASTD_"

SECURITY_OPTIONS = frozenset(
    {
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_name",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "ssl_check_hostname",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_crlfile",
        "ssl_ciphers",
    }
)
"""kafka-python's security options that a config can set (strings and booleans; its
object-valued ones, ``ssl_context`` and ``sasl_oauth_token_provider``, cannot come
from YAML). :mod:`service.io.confluent` translates each for librdkafka; a name with a dot
is a librdkafka property, passed through with ``client: confluent`` only."""

_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|credential|api_?key|private_?key|ssl_key|sasl_plain|"
    r"sasl\.(username|password)|jaas",
    re.IGNORECASE,
)
MASK = "***"


def is_secret_key(name: str) -> bool:
    """Whether a config key's name says its value is a credential.

    Matches ``password``, ``ssl_password``, ``sasl_plain_password``, ``ssl_keyfile``,
    ``client_secret``, ``token``, ``sasl.password``...; not ``key_field`` or ``keys``,
    whose values are schema names, not secrets.

    >>> [is_secret_key(k) for k in ("sasl_plain_password", "ssl_keyfile", "key_field")]
    [True, True, False]
    """
    return _SECRET_KEY.search(name) is not None


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def topic_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Kafka topic, or None: Kafka takes 1 to 249 of ``A-Z a-z
    0-9 . _ -``, and neither ``.`` nor ``..``; a broker refuses anything else only when
    the daemon first writes there, minutes or a rebalance after start-up."""
    if name in {".", ".."} or not _TOPIC_NAME.fullmatch(name):
        return (
            f"{name!r} is not a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -, and not"
            " '.' or '..')"
        )
    return None


def _a_topic_name(name: str) -> str:
    problem = topic_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


TopicName = Annotated[str, Field(min_length=1, max_length=249), AfterValidator(_a_topic_name)]


class KafkaSettings(_Section):
    """Where records come from and go to. ``client`` picks kafka-python (default) or
    confluent-kafka (the ``confluent`` extra). ``security`` is passed to the client
    (e.g. ``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``).
    ``max_poll_records`` caps a micro-batch (default 1000, twice Kafka's 500): every
    batch pays fixed costs per partition task and model (an optimizer step, a few
    dozen NumPy calls), so a backlog drains faster in larger batches, while a live
    stream's batches stay as small as its arrivals. ``fetch_max_wait_ms`` bounds how
    long the broker may hold a fetch with too little data: a floor on latency when the
    stream is quiet (Kafka's default is 500); while records flow the daemon asks for
    at most 5 ms with kafka-python (:mod:`service.io.pacing`; librdkafka keeps the
    configured wait). Tansu, the broker of the tests and the demo, holds a fetch that
    found no data for the whole wait, and answers some fetches with a 1 ms wait only
    after hundreds of milliseconds and those of 0 ms never, with either client; Kafka
    does not.
    ``producer_batch_bytes`` is the producer's per-partition batch buffer (Kafka's
    ``batch.size``; 1 MiB is librdkafka's default): predictions are small JSON records,
    and the Java client's 16 KiB default fills after a few dozen of them, so
    kafka-python spent much of its per-record cost opening batches.

    Every wait on the broker is bounded, so a hung broker cannot freeze the daemon
    silently (issue 13): ``connect_timeout_s`` at start-up (then exit 1, one line),
    ``flush_timeout_s`` for a batch's outputs to be acknowledged (half of it is the
    producer's delivery timeout, the other half for sending what failed once more on
    a new producer: :class:`service.io.sinks.Renewal`), ``commit_timeout_s`` for an
    offset commit, ``close_timeout_s``
    per client close. ``shutdown_grace_s`` caps any of them once SIGTERM arrived: a
    batch the broker has not taken by then is left uncommitted and the process exits
    1 (keep it plus three ``close_timeout_s`` below the pod's
    ``terminationGracePeriodSeconds``: 20 + 3 x 10 < 60). ``lag_interval_s``:
    how often the lag thread measures lag and broker reachability.

    ``exactly_once`` (needs ``state.enabled``): the outputs, checkpoints and input
    offsets of each commit point go in one Kafka transaction
    (:class:`service.runtime.checkpoint.ExactlyOnce`). ``transactional_id``: the
    producer's transactional id, the same across restarts of one process so that a
    restarted process fences its predecessor; null means ``<group_id>-<host name>``
    (a Kubernetes pod's name), and a worker of ``processing.workers`` appends
    ``-<index>`` (:func:`service.runtime.app.transactional_id`). ``transaction_timeout_s``:
    how long the broker lets a transaction stay open; a transaction left open by a
    process that died and does not come back under its id blocks ``read_committed``
    readers of its partitions that long."""

    bootstrap_servers: str = "localhost:9092"
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    group_id: str = Field("forecastd", min_length=1)
    input_topic: TopicName = "ticks"
    output_topic: TopicName = "predictions"
    dead_letter_topic: TopicName = "ticks.dlq"
    session_timeout_ms: int = Field(10000, ge=1000, le=300000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = Field(1000, ge=1, le=100000)
    poll_timeout_ms: int = Field(200, ge=1, le=60000)
    linger_ms: int = Field(5, ge=0, le=1000)
    fetch_max_wait_ms: int = Field(100, ge=0, le=60000)
    producer_batch_bytes: int = Field(1_048_576, ge=1024, le=16_777_216)
    security: dict[str, Any] = Field(default_factory=dict)
    connect_timeout_s: float = Field(60.0, gt=0, le=3600)
    flush_timeout_s: float = Field(120.0, gt=0, le=3600)
    commit_timeout_s: float = Field(30.0, gt=0, le=3600)
    close_timeout_s: float = Field(10.0, gt=0, le=600)
    shutdown_grace_s: float = Field(20.0, gt=0, le=3600)
    lag_interval_s: float = Field(1.0, gt=0, le=600)
    exactly_once: bool = False
    transactional_id: str | None = Field(None, min_length=1, max_length=200)
    transaction_timeout_s: float = Field(60.0, ge=1, le=900)

    @field_validator("security")
    @classmethod
    def _known_security_options(cls, security: dict[str, Any]) -> dict[str, Any]:
        """Names only in the error: a misspelt ``sasl_plain_pasword`` must not reach
        a client that prints the keyword argument with its value."""
        for name, value in security.items():
            if name not in SECURITY_OPTIONS and "." not in name:
                raise ValueError(
                    f"unknown option {name!r} (known: {', '.join(sorted(SECURITY_OPTIONS))},"
                    " or a librdkafka property with dots for client confluent)"
                )
            if not isinstance(value, str | bool | int | float):
                raise ValueError(f"option {name!r} must be a string, a number or a boolean")
        return security

    @model_validator(mode="after")
    def _librdkafka_names_need_confluent(self) -> KafkaSettings:
        dotted = sorted(name for name in self.security if "." in name)
        if dotted and self.client != "confluent":
            raise ValueError(
                f"security option {dotted[0]!r} is a librdkafka property: client confluent only"
            )
        return self

    def __repr_args__(self) -> Any:
        """``repr`` (and so any log of the settings) masks every security value."""
        for name, value in super().__repr_args__():
            if name == "security":
                yield name, dict.fromkeys(self.security, MASK)
            else:
                yield name, value


class SchemaSettings(_Section):
    """Field names inside input JSON objects. ``features`` lists the exogenous
    feature names models use (in this order); extra names in ``x`` are ignored and a
    missing one is imputed with its running mean. ``auto`` (the default) takes the
    numeric fields of ``x`` in the first poll's records, sorted by name, at most
    ``max_auto_features`` of them, and logs them once; names that only appear later
    are ignored and counted (``forecastd_ignored_features_total``). A process
    discovers its own list: give the list explicitly where replicas must agree on
    it from the first record. ``features_field: ""``: the record is flat, its features
    are its own fields besides the key, time and target
    (:func:`~service.io.decode.features_of`). ``numeric_text``: a target or feature
    written as a string of a JSON number (``"43210.55"``, as exchange and many device
    feeds send prices and readings, to keep their decimals) is that number; off, such
    a string is ``bad_target``/``bad_features``, as the input contract says.
    ``key_source``: ``record`` (the record key, else the key field) or ``field`` (the
    key field always: for a topic partitioned by something coarser than a series, a
    site whose sensors are each a series, or keyed in binary)."""

    key_field: str = Field("key", min_length=1)
    time_field: str = Field("ts", min_length=1)
    target_field: str = Field("y", min_length=1)
    features_field: str = "x"
    features: tuple[str, ...] | Literal["auto"] = "auto"
    max_auto_features: int = Field(32, ge=0, le=1024)
    max_message_bytes: int = Field(1_048_576, ge=64)
    numeric_text: bool = False
    key_source: Literal["record", "field"] = "record"
    time_format: str | None = Field(None, min_length=1)
    time_zone: str = "UTC"

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"{name!r} is not a time zone of the IANA database (such as 'UTC',"
                " 'Europe/Paris', 'America/New_York')"
            ) from exc
        return name

    @field_validator("time_format")
    @classmethod
    def _usable_format(cls, form: str | None) -> str | None:
        """A format that reads back what it writes, so a typo fails at start-up and
        not as every record's ``bad_time``."""
        if form is not None:
            sample = datetime(2024, 3, 9, 13, 5, 7, tzinfo=UTC)
            try:
                datetime.strptime(sample.strftime(form), form)  # noqa: DTZ007 - a check
            except ValueError as exc:
                raise ValueError(
                    f"{form!r} is not a strptime format that reads back: {exc}"
                ) from exc
        return form

    @model_validator(mode="after")
    def _fields_apart(self) -> SchemaSettings:
        """One field, one meaning: a target field that is also the time field would
        read one number as both."""
        seen: dict[str, str] = {}
        for option in ("key_field", "time_field", "target_field", "features_field"):
            name = getattr(self, option)
            if name and name in seen:
                raise ValueError(
                    f"schema.{seen[name]} and schema.{option} are both {name!r}:"
                    " each field of a record holds one thing"
                )
            seen[name] = option
        return self


class ForecastSettings(_Section):
    """Forecasting semantics (README "Forecasting").

    ``window``: the recent values whose statistics are features (and which
    ``torch.attention`` reads). ``history``: the values kept per key for seasonal lags,
    season detection and the key's own scale (``max(window, history)`` are kept, 8
    bytes each). ``seasonal_periods``: up to two periods, in events, for every key;
    empty (the default) detects each key's own (:mod:`service.pipeline.seasons`).
    ``calendar``: time-of-day/week/year features where a key's spacing makes them
    meaningful. ``outliers``: what to do with a value further than
    ``outlier_threshold`` typical changes (the key's unit) from the key's last value:
    ``reject`` dead-letters it (reason ``outlier``), ``clip`` moves it to that bound,
    ``accept`` takes it. After ``outlier_patience`` rejections or clips in a row the
    next such value is taken as it is: the series has moved to a new level, and a
    key must never be locked out. A value beyond ±1e100 is always rejected: no
    measurement is that large, and its square overflows."""

    horizon: int = Field(1, ge=0, le=10000)
    window: int = Field(32, ge=2, le=100000)
    history: int = Field(720, ge=2, le=100000)
    seasonal_periods: tuple[int, ...] = Field((), max_length=2)
    calendar: bool = True
    target: Literal["change", "level"] = "change"
    lags: int = Field(8, ge=1)
    key_ttl_s: float = Field(86400.0, gt=0)
    max_keys: int = Field(50_000, ge=1)
    out_of_order: Literal["dlq", "accept"] = "dlq"
    outliers: Literal["reject", "clip", "accept"] = "reject"
    outlier_threshold: float = Field(1000.0, gt=0)
    outlier_patience: int = Field(3, ge=1)
    max_future_skew_s: float | None = Field(3600.0, gt=0)

    @model_validator(mode="after")
    def _lags_fit_window(self) -> ForecastSettings:
        if self.lags > self.window - 1:
            raise ValueError(f"lags ({self.lags}) must be at most window - 1 ({self.window - 1})")
        for period in self.seasonal_periods:
            if not 2 <= period <= self.kept - 2:
                raise ValueError(
                    f"seasonal period {period} must be in [2, max(window, history) - 2 ="
                    f" {self.kept - 2}]"
                )
        return self

    @property
    def kept(self) -> int:
        """Values kept per key: ``max(window, history)``."""
        return max(self.window, self.history)


class ModelSettings(_Section):
    """One model of the zoo; ``params`` are validated by the model kind itself."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")
    kind: str
    primary: bool = False
    publish: bool = False
    params: dict[str, Any] = Field(default_factory=dict)


class ScoringSettings(_Section):
    rolling_window: int = Field(1000, ge=2)
    interval_coverage: float = Field(0.9, gt=0, lt=1)
    interval_min_samples: int = Field(30, ge=2)


class DriftSettings(_Section):
    """Drift detectors on each model's absolute residuals. ``action``: what a confirmed
    drift of an ensemble member does: ``none`` (the default) only counts it,
    ``shrink`` multiplies every key's ensemble memory by ``shrink`` (so the ensemble
    re-learns whom to trust from the new regime's errors). ``none`` is the default
    because on the ``bench.quality`` datasets ``shrink`` helped almost nowhere and cost
    MAE on several (README, "Forecast quality"): a detector on a partition's pooled
    residuals fires on noise, and its action reaches every key, while fixed share already lets a
    member that became the best take over within a few dozen events."""

    detectors: tuple[Literal["adwin", "page_hinkley"], ...] = ("adwin", "page_hinkley")
    action: Literal["shrink", "none"] = "none"
    shrink: float = Field(0.2, ge=0.0, le=1.0)
    adwin_delta: float = Field(0.002, gt=0, lt=1)
    page_hinkley_threshold: float = Field(50.0, gt=0)
    page_hinkley_delta: float = Field(0.005, ge=0)


class MetricsSettings(_Section):
    """The HTTP port. ``watchdog_s``: ``/healthz`` fails once the loop has been inside
    one broker call, or without a completed batch while records wait, or without a
    turn at all, for this long (a stuck daemon gets restarted; see service.runtime.health).
    ``ready_stale_s``: ``/readyz`` fails when the broker last answered longer ago."""

    host: str = "0.0.0.0"  # noqa: S104 - a pod's metrics port must be reachable from Prometheus
    port: int = Field(9108, ge=0, le=65535)
    watchdog_s: float = Field(60.0, gt=0, le=86400)
    ready_stale_s: float = Field(10.0, gt=0, le=3600)


class ExplanationsSettings(_Section):
    """Live explanations (:mod:`service.pipeline.explanations`), off while ``topic`` is null: a
    seeded random ``sample`` share of the primary model's predictions also gets a record
    on ``topic`` with its ``top`` feature attributions."""

    topic: TopicName | None = None
    sample: float = Field(0.01, gt=0.0, le=1.0)
    top: int = Field(5, ge=1, le=1024)


class ProcessingSettings(_Section):
    """``torch_threads``: intra-op threads for the PyTorch models of this process, the
    one torch thread setting (process-wide, so no model has its own). 1 suits a small
    container: these networks are too small to split, and OpenMP workers that wait on a
    descheduled sibling made more threads far slower at micro-batch sizes
    (``bench/models.py --threads 2``). ``null`` keeps torch's default.

    ``workers``: consumer processes in this pod, each a member of the group with its
    own partition tasks (:mod:`service.runtime.workers`); ``auto`` = the CPUs of the
    container's cgroup limit (else of the machine). A worker that dies is restarted;
    one that dies ``worker_failures`` times within ``worker_failure_window_s`` stops
    the pod with status 1, so that Kubernetes restarts it and the failure shows
    (CrashLoopBackOff) instead of a pod running at part capacity."""

    seed: int = 0
    torch_threads: int | None = Field(1, ge=1, le=256)
    workers: int | Literal["auto"] = 1
    worker_failures: int = Field(5, ge=1, le=1000)
    worker_failure_window_s: float = Field(300.0, gt=0, le=86400)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        if value == "auto":
            return value
        try:
            count = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            count = 0
        if isinstance(value, bool) or not 1 <= count <= 256 or str(count) != str(value):
            raise ValueError("must be a number of processes from 1 to 256, or auto")
        return count

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"


class StateSettings(_Section):
    """Durable learned state (README "Learned state"; :mod:`service.runtime.state`).

    ``enabled``: checkpoint every partition task to ``topic`` (default
    ``<kafka.group_id>.state``, created compacted with one partition per input
    partition when absent) and restore it when a partition is assigned. Input offsets
    are then committed only with a checkpoint, up to the offset it covers.
    A checkpoint is written after a batch once ``interval_s`` passed or
    ``every_events`` records were processed since the last one, and for the
    partitions revoked in a rebalance and at shutdown. A short interval re-reads and
    re-publishes less after a kill -9 (at-least-once); a long one writes less. ``chunk_bytes``: the
    largest state record (a checkpoint is split into chunks; keep it under the
    broker's ``message.max.bytes``; ``schema.max_message_bytes`` caps it too).
    ``restore_timeout_s`` bounds reading one partition's checkpoint (keep it well under
    the consumer's ``max.poll.interval.ms``, 300 s).

    ``local_dir``: also keep each checkpoint in ``<local_dir>/<topic>-<partition>.ckpt``
    (:mod:`service.runtime.localstate`), so that a process restarted on the same volume
    restores without reading the state topic; the topic stays the authority."""

    enabled: bool = True
    topic: TopicName | None = None
    interval_s: float = Field(10.0, gt=0, le=86400)
    every_events: int = Field(200_000, ge=1)
    chunk_bytes: int = Field(512 * 1024, ge=1024, le=64 * 1024 * 1024)
    restore_timeout_s: float = Field(120.0, gt=0, le=3600)
    local_dir: str | None = Field(None, min_length=1)


# The built-in default: an ensemble of complementary members (README "Models"). River's
# Hoeffding tree is left out: on the quality benchmark it added much to the cost per
# event and little to the ensemble's MAE (README, "Configuration"); add
# {kind: river.tree} as a member where it pays. ``rls`` keeps a fit per hash bucket of
# the key (models/rls.py, KeyedRLS): its least squares settle within a few hundred
# events, so unlike series sharing a partition each get their own where one fit
# learned their blend (README, "Unlike series in one partition"); 128 buckets bound
# its memory per task, not per key, and key_buckets leaves the settings fingerprint
# (and so a checkpoint's learned state) alone.
#
# The two smoothers differ by horizon. A series (``horizon >= 1``) has a slow EWMA
# (``alpha`` 0.1: the level of a series that is noise around it, daily births or
# returns) and Holt's damped trend (``holt``: a short series whose trend the learned
# members have too few values to fit, monthly sales over three years); they replaced
# one EWMA of ``alpha`` 0.5, which missed both (README, "Forecast quality", "Outside
# data"). A table (``horizon: 0``) keeps that one EWMA: its rows are not a series, and
# the two lose to it there (README, "Small tables").
_COMMON_MODELS = (
    {"name": "ensemble", "kind": "ensemble", "primary": True},
    {"name": "last", "kind": "persistence"},
    {"name": "seasonal", "kind": "seasonal_naive"},
)
_LEARNED_MODELS = (
    {"name": "linear", "kind": "river.linear"},
    {"name": "rls", "kind": "rls", "params": {"key_buckets": 128}},
    {"name": "mlp", "kind": "torch.mlp", "params": {"average": 0.9}},
    {"name": "knn", "kind": "knn"},
)
_DEFAULT_MODELS = (
    *_COMMON_MODELS,
    {"name": "ewma", "kind": "ewma", "params": {"alpha": 0.1}},
    {"name": "holt", "kind": "holt"},
    *_LEARNED_MODELS,
)
# With ``forecast.horizon: 0`` (a table: each event's value from its own features) the
# default ensemble also has a ridge regression of the value on those features
# (models/ridge.py): the other members learn the change from the key's previous row, an
# unrelated row in a table. It keeps its sums in the features' raw units and solves in
# their own running frame: the pipeline's scaled features move with each row's scale,
# and on a table whose rows come in an order (cars by model year) a fit of them held
# its past rows in coordinates that had moved (README, "Forecast quality"). One
# pseudo-row of prior (``ridge: 1``): more holds the slopes back on a table of a few
# hundred rows. Not at horizon >= 1, where the other members already see the features
# beside the key's history, and a default that changed there would cost every series'
# learned state (the settings fingerprint).
_TABLE_MODELS = (
    *_COMMON_MODELS,
    {"name": "ewma", "kind": "ewma", "params": {"alpha": 0.5}},
    *_LEARNED_MODELS,
    {"name": "regression", "kind": "ridge", "params": {"ridge": 1.0}},
)


def default_models(horizon: int) -> tuple[dict[str, Any], ...]:
    """The built-in ``models`` for ``forecast.horizon`` (the comments above)."""
    return _TABLE_MODELS if horizon == 0 else _DEFAULT_MODELS


class Settings(_Section):
    kafka: KafkaSettings = KafkaSettings()
    schema_: SchemaSettings = Field(SchemaSettings(), alias="schema")
    forecast: ForecastSettings = ForecastSettings()
    models: tuple[ModelSettings, ...] = Field(
        default_factory=lambda: tuple(ModelSettings(**m) for m in _DEFAULT_MODELS), min_length=1
    )
    scoring: ScoringSettings = ScoringSettings()
    drift: DriftSettings = DriftSettings()
    metrics: MetricsSettings = MetricsSettings()
    processing: ProcessingSettings = ProcessingSettings()
    explanations: ExplanationsSettings = ExplanationsSettings()
    state: StateSettings = StateSettings()

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _default_models_for_the_horizon(cls, data: Any) -> Any:
        """Without ``models``, the built-in default for the configured horizon. A
        horizon that is not an integer is left for its own field to refuse."""
        if not isinstance(data, Mapping) or "models" in data:
            return data
        forecast = data.get("forecast")
        if isinstance(forecast, ForecastSettings):
            horizon: Any = forecast.horizon
        elif isinstance(forecast, Mapping):
            horizon = forecast.get("horizon", ForecastSettings.model_fields["horizon"].default)
        else:
            horizon = ForecastSettings.model_fields["horizon"].default
        try:
            models = default_models(int(horizon))
        except (TypeError, ValueError):
            return data
        return {**data, "models": [dict(m) for m in models]}

    @field_validator("models")
    @classmethod
    def _one_primary_unique_names(
        cls, models: tuple[ModelSettings, ...]
    ) -> tuple[ModelSettings, ...]:
        primaries = [m.name for m in models if m.primary]
        if len(primaries) != 1:
            raise ValueError(f"exactly one model must have primary: true (found {len(primaries)})")
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique (repeated: {', '.join(dupes)})")
        for model in models:
            if model.kind == "ensemble":
                members = model.params.get("members") or [
                    m.name for m in models if m.kind != "ensemble"
                ]
                for member in members:
                    other = next((m for m in models if m.name == member), None)
                    if other is None or other.kind == "ensemble":
                        raise ValueError(
                            f"ensemble {model.name!r}: member {member!r} is not a"
                            " (non-ensemble) model of this config"
                        )
                if not members:
                    raise ValueError(f"ensemble {model.name!r} has no member models")
        return models

    @model_validator(mode="after")
    def _exactly_once_needs_checkpoints(self) -> Settings:
        """A transaction commits the checkpoint with the offsets it covers, and stays
        open from one checkpoint to the next: the broker aborts one older than its
        timeout, so checkpoints must come well within it; and a restore reads the
        state topic read_committed, so it may wait that long for one left open."""
        kafka, state = self.kafka, self.state
        if not kafka.exactly_once:
            return self
        if not state.enabled:
            raise ValueError(
                "kafka.exactly_once needs state.enabled: true (each transaction commits the"
                " checkpoint of the records it covers)"
            )
        if state.interval_s > kafka.transaction_timeout_s / 2:
            raise ValueError(
                f"state.interval_s ({state.interval_s:g}) must be at most half of"
                f" kafka.transaction_timeout_s ({kafka.transaction_timeout_s:g}) with"
                " kafka.exactly_once: a transaction stays open from one checkpoint to the next"
            )
        if state.restore_timeout_s <= kafka.transaction_timeout_s:
            raise ValueError(
                f"state.restore_timeout_s ({state.restore_timeout_s:g}) must exceed"
                f" kafka.transaction_timeout_s ({kafka.transaction_timeout_s:g}) with"
                " kafka.exactly_once: a restore waits for a transaction that a dead process"
                " left open to time out"
            )
        return self

    @model_validator(mode="after")
    def _topics_apart(self) -> Settings:
        """One topic per role: the daemon must never read what it writes (an output or
        dead-letter topic that is the input feeds every record back in, forever), and
        a topic of checkpoints, predictions or dead letters must hold only those (the
        state topic's readers, and the users of the others, take every record they
        find there for one of theirs)."""
        topics = {"kafka.input_topic": self.kafka.input_topic, **self.written_topics}
        if self.state.enabled:
            if topic_problem(self.state_topic) is not None:  # a set one is checked as set
                raise ValueError(
                    f"state.topic: the default {self.state_topic!r} (kafka.group_id + '.state')"
                    f" is not a Kafka topic name; set state.topic"
                )
            topics["state.topic"] = self.state_topic
        seen: dict[str, str] = {}
        for key, topic in topics.items():
            if topic in seen:
                loop = seen[topic] == "kafka.input_topic"
                why = " (the daemon would read what it writes)" if loop else ""
                raise ValueError(
                    f"{seen[topic]} and {key} are both {topic!r}: give each its own topic{why}"
                )
            seen[topic] = key
        return self

    @property
    def written_topics(self) -> dict[str, str]:
        """The topics the daemon's producer writes, by setting: outputs, dead letters,
        and explanations when set (the state topic is made by the daemon itself)."""
        topics = {
            "kafka.output_topic": self.kafka.output_topic,
            "kafka.dead_letter_topic": self.kafka.dead_letter_topic,
        }
        if self.explanations.topic is not None:
            topics["explanations.topic"] = self.explanations.topic
        return topics

    @property
    def state_topic(self) -> str:
        """Where checkpoints go: ``state.topic``, else ``<kafka.group_id>.state``."""
        return self.state.topic or f"{self.kafka.group_id}.state"

    def members(self, ensemble: ModelSettings) -> tuple[str, ...]:
        """The names of the models ``ensemble`` combines, in config order."""
        listed = tuple(ensemble.params.get("members") or ())
        if listed:
            return listed
        return tuple(m.name for m in self.models if m.kind != "ensemble")

    @property
    def primary(self) -> ModelSettings:
        return next(m for m in self.models if m.primary)


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (optional), apply ``FORECASTD_*`` overrides and validate.

    Raises:
        ConfigError: one line, ``<key.path>: <reason>``.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    data = with_overrides(data, os.environ if env is None else env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    _validate_model_params(settings)
    return settings


def with_overrides(data: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``data`` (a config's plain form) with the ``FORECASTD_*`` variables of
    ``env`` applied, as :func:`load_settings` applies them to a file: for tools that
    build their settings in code and take overrides in the same form.

    >>> with_overrides({"forecast": {"horizon": 1}}, {"FORECASTD_FORECAST__TARGET": "level"})
    {'forecast': {'horizon': 1, 'target': 'level'}}
    """
    out = copy.deepcopy(dict(data))
    for dotted, value in _env_overrides(env):
        _set_path(out, dotted, value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8 YAML"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _env_overrides(env: Mapping[str, str]) -> list[tuple[list[str], Any]]:
    overrides = []
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if any(not part for part in path):
            raise ConfigError(f"{name}: empty key level (use '__' between levels)")
        overrides.append((path, _env_value(name, path, raw)))
    return overrides


def _env_value(name: str, path: list[str], raw: str) -> Any:
    """Lists and maps (``[a, b]``, ``{k: v}``) are parsed as YAML flow collections;
    anything else stays the string it is, and the field's type converts it
    (``"6000"`` to an int, ``"true"`` to a bool). Parsing scalars as YAML would turn
    a Secret password ``yes`` into ``True`` or ``0123`` into ``123``; so values
    inside ``kafka.security``, and of any secret-named key, are never parsed at all,
    and an unparsable value is never echoed."""
    text = raw.strip()
    inside_security = path[:2] == ["kafka", "security"] and len(path) > 2
    if not text.startswith(("[", "{")) or inside_security or is_secret_key(path[-1]):
        return raw
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        shown = "" if _is_sensitive(path) else f": {raw[:80]!r}"
        raise ConfigError(f"{name}: not a valid YAML list or map{shown}") from exc


def _is_sensitive(path: list[str] | tuple[str | int, ...]) -> bool:
    """Whether a key path holds (or is inside) a credential."""
    names = [str(part) for part in path]
    return names[:2] == ["kafka", "security"] or any(is_secret_key(n) for n in names)


def _set_path(data: Any, path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating mappings on the way."""
    node = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        dotted = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{dotted}: no such list item (the list has {len(node)})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            elif part not in node and path[depth + 1].isdigit():
                raise ConfigError(
                    f"{dotted}.{path[depth + 1]}: {dotted} is not in the config file, so it has"
                    f" no item {path[depth + 1]}: set the whole list (FORECASTD_"
                    f"{'__'.join(path[: depth + 1]).upper()}='[...]') or write it in the file"
                )
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{dotted}: cannot override inside a {type(node).__name__}")


def _validate_model_params(settings: Settings) -> None:
    for index, model in enumerate(settings.models):
        try:
            registry.validate_params(model.kind, model.params)
        except registry.UnknownModelKind as exc:
            raise ConfigError(f"models[{index}].kind: {exc}") from exc
        except ValidationError as exc:
            raise ConfigError(_describe(exc, prefix=("models", index, "params"))) from exc


MORE_SHOWN = 5
"""Further invalid keys named after a config error's first (one line stays readable)."""


def _describe(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> str:
    """The first invalid key as ``key.path[0].leaf: reason (got value)`` on one line
    (a key that may take one of several forms gives the reason of each, joined by
    "or"), then the other invalid keys (``[+2 more: kafka.acks, forecast.window]``), so
    that a config with several mistakes is not fixed one run at a time."""
    errors = exc.errors()
    paths = [_dotted((*prefix, *error["loc"])) for error in errors]
    path, error = paths[0], errors[0]
    reasons = [_reason(e) for p, e in zip(paths, errors, strict=True) if p == path]
    reason = " or ".join(dict.fromkeys(reasons))
    got = ""
    loc = (*prefix, *error["loc"])
    shown = "input" in error and not isinstance(error["input"], dict)
    if error["type"] not in {"missing", "extra_forbidden"} and shown and not _is_sensitive(loc):
        got = f" (got {error['input']!r})"
    others = list(dict.fromkeys(p or "(a rule across sections)" for p in paths if p != path))
    more = ""
    if others:
        named = ", ".join(others[:MORE_SHOWN]) + (", ..." if len(others) > MORE_SHOWN else "")
        more = f" [+{len(others)} more: {named}]"
    if not path:  # a rule across sections: its reason names the keys
        return f"{reason}{got}{more}"
    return f"{path}: {reason}{got}{more}"


def _reason(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling against docs/configuration.md)"
    return str(error["msg"]).removeprefix("Value error, ")


_UNION_TAG = frozenset("[](),' ")
"""Characters of pydantic's names for the alternatives of a union (``tuple[str, ...]``,
``literal['auto']``), which a config key never has."""


def _dotted(loc: tuple[str | int, ...]) -> str:
    """A pydantic error location as a config key path: ``models[0].params.lr``
    (without pydantic's names for a union's alternatives)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _UNION_TAG.intersection(part):
            path += ("." if path else "") + ("schema" if part == "schema_" else part)
    return path
