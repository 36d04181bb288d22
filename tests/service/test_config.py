"""Config: defaults, shipped files, environment overrides, and one-line errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from models import registry
from service.config import Settings, load_settings
from service.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo.yaml", "stocks.yaml", "sensors.yaml", "table.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    settings = load_settings(ROOT / "configs" / name, env={})
    assert sum(m.primary for m in settings.models) == 1
    # every example forecasts with the ensemble of its models, not one fixed model
    assert settings.primary.kind == "ensemble"


def test_the_readme_override_reaches_the_stocks_linear_model() -> None:
    """README "Configuration": ``FORECASTD_MODELS__1__PARAMS__LR`` sets the learning
    rate of ``configs/stocks.yaml``'s River linear model (item 0 is the ensemble)."""
    env = {"FORECASTD_MODELS__1__PARAMS__LR": "0.002"}
    settings = load_settings(ROOT / "configs" / "stocks.yaml", env=env)
    assert settings.models[1].name == "linear"
    assert registry.validate_params("river.linear", settings.models[1].params) == (
        registry.validate_params("river.linear", {"lr": 0.002})
    )


def test_the_table_config_is_the_built_in_default_for_tables() -> None:
    settings = load_settings(ROOT / "configs" / "table.yaml", env={})
    assert settings.forecast.horizon == 0
    assert settings.primary.kind == "ensemble"
    assert {m.name: m.kind for m in settings.models}["regression"] == "ridge"


def test_packaged_demo_config_equals_the_one_in_configs() -> None:
    packaged = load_settings(ROOT / "service" / "tools" / "demo.yaml", env={})
    assert packaged == load_settings(ROOT / "configs" / "demo.yaml", env={})


def test_defaults_follow_the_spec() -> None:
    settings = load_settings(None, env={})
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.kafka.input_topic == "ticks"
    assert settings.schema_.target_field == "y"
    assert settings.forecast.horizon == 1
    assert settings.forecast.window == 32
    assert settings.forecast.target == "change"
    assert settings.metrics.port == 9108


def _ewma_alphas(settings: Settings) -> list[float]:
    return [m.params["alpha"] for m in settings.models if m.kind == "ewma"]


def test_a_table_gets_a_regression_member_by_default(tmp_path: Path) -> None:
    """At horizon 0 the built-in ensemble also combines a regression of the value on
    the event's features (from a file or the environment), and its smoothers are not a
    series' (one EWMA, a faster one, and no trend); models given by the user are
    theirs, whatever the horizon."""
    series = load_settings(None, env={})
    assert "regression" not in [m.name for m in series.models]
    for env in ({"FORECASTD_FORECAST__HORIZON": "0"}, {}):
        path = tmp_path / "table.yaml"
        path.write_text("forecast: {horizon: 0}\n" if not env else "")
        table = load_settings(path, env=env)
        # a table's rows are not a series: one EWMA, no trend, and the regression
        names = [m.name for m in series.models if m.name != "holt"] + ["regression"]
        assert [m.name for m in table.models] == names
        assert _ewma_alphas(table) == [0.5]
        assert _ewma_alphas(series) == [0.1]
        assert "regression" in table.members(table.primary)
    path = tmp_path / "mine.yaml"
    path.write_text("forecast: {horizon: 0}\nmodels: [{name: lin, kind: rls, primary: true}]\n")
    assert [m.name for m in load_settings(path, env={}).models] == ["lin"]
    with pytest.raises(ConfigError, match=r"forecast\.horizon"):
        load_settings(None, env={"FORECASTD_FORECAST__HORIZON": "soon"})


def test_environment_overrides_nested_keys_and_list_items(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "models:\n  - {name: a, kind: river.linear, primary: true, params: {lr: 0.1}}\n"
    )
    env = {
        "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": "broker:9092",
        "FORECASTD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "FORECASTD_MODELS__0__PARAMS__LR": "0.02",
        "FORECASTD_SCHEMA__FEATURES": "[temp, load]",
        "FORECASTD_KAFKA__SECURITY__SASL_PLAIN_PASSWORD": "yes",
        "FORECASTD_KAFKA__SECURITY__SASL_PLAIN_USERNAME": "0123",
        "FORECASTD_KAFKA__GROUP_ID": "42",
        "OTHER_VARIABLE": "ignored",
    }
    settings = load_settings(config, env=env)
    assert settings.kafka.bootstrap_servers == "broker:9092"
    assert settings.kafka.session_timeout_ms == 6000
    assert registry.validate_params("river.linear", settings.models[0].params) == (
        registry.validate_params("river.linear", {"lr": 0.02})
    )
    assert settings.schema_.features == ("temp", "load")
    # secrets and names stay exactly the strings they were
    assert settings.kafka.security == {"sasl_plain_password": "yes", "sasl_plain_username": "0123"}
    assert settings.kafka.group_id == "42"


@pytest.mark.parametrize(
    ("yaml_text", "env", "expected"),
    [
        (
            "forecast:\n  horizon: -1\n",
            {},
            "forecast.horizon: Input should be greater than or equal to 0 (got -1)",
        ),
        ("kafka:\n  bootstrap_server: x:1\n", {}, "kafka.bootstrap_server: unknown key"),
        (
            "models:\n  - {name: m, kind: river.linear, primary: true, params: {lr: -1}}\n",
            {},
            "models[0].params.lr:",
        ),
        (
            "models:\n  - {name: m, kind: no.such.kind, primary: true}\n",
            {},
            "models[0].kind: unknown model kind 'no.such.kind'",
        ),
        (
            "models:\n  - {name: m, kind: ewma}\n",
            {},
            "models: exactly one model must have primary: true (found 0)",
        ),
        (
            "forecast:\n  window: 4\n  lags: 8\n",
            {},
            "forecast: lags (8) must be at most window - 1 (3)",
        ),
        ("", {"FORECASTD_METRICS__PORT": "http"}, "metrics.port: Input should be a valid integer"),
        ("kafka: [1, 2]\n", {}, "kafka: Input should be a valid dictionary"),
        (
            "kafka:\n  exactly_once: true\nstate:\n  enabled: false\n",
            {},
            "kafka.exactly_once needs state.enabled: true",
        ),
        (
            "kafka:\n  exactly_once: true\n",
            {"FORECASTD_STATE__INTERVAL_S": "45"},
            "state.interval_s (45) must be at most half of kafka.transaction_timeout_s (60)",
        ),
        (
            "kafka:\n  exactly_once: true\n  transaction_timeout_s: 300\n",
            {},
            "state.restore_timeout_s (120) must exceed kafka.transaction_timeout_s (300)",
        ),
        (
            "models:\n  - {name: m, kind: torch.mlp, primary: true, params: {threads: 2}}\n",
            {},
            "models[0].params: the 'threads' param was removed: torch's threads are"
            " process-wide; set processing.torch_threads instead",
        ),
    ],
)
def test_bad_config_names_the_key_and_the_reason(
    tmp_path: Path, yaml_text: str, env: dict[str, str], expected: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env=env)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("forecast:\n  horizon: -1\n", "forecast.horizon"),
        ("kafka:\n  session_timeout_ms: fast\n", "kafka.session_timeout_ms"),
        (
            "models:\n  - {name: m, kind: river.linear, primary: true, params: {lr: -1}}\n",
            "models[0].params.lr",
        ),
    ],
)
def test_cli_exits_2_with_one_line_for_a_bad_config(
    tmp_path: Path, yaml_text: str, key: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    result = subprocess.run(
        [sys.executable, "-m", "service", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"forecastd: config error: {key}:")


def test_missing_file_and_broken_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml", env={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: {bootstrap_servers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_settings(broken, env={})


def test_an_item_of_a_list_the_file_does_not_have_says_to_set_the_list() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={"FORECASTD_MODELS__0__KIND": "ewma"})
    assert str(caught.value).startswith(
        "models.0: models is not in the config file, so it has no item 0: set the whole list"
        " (FORECASTD_MODELS='[...]')"
    )


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"FORECASTD_KAFKA__OUTPUT_TOPIC": "ticks"},
            "kafka.input_topic and kafka.output_topic are both 'ticks': give each its own topic"
            " (the daemon would read what it writes)",
        ),
        (
            {"FORECASTD_KAFKA__DEAD_LETTER_TOPIC": "ticks"},
            "kafka.input_topic and kafka.dead_letter_topic are both 'ticks'",
        ),
        (
            {"FORECASTD_EXPLANATIONS__TOPIC": "predictions"},
            "kafka.output_topic and explanations.topic are both 'predictions'",
        ),
        ({"FORECASTD_STATE__TOPIC": "ticks.dlq"}, "kafka.dead_letter_topic and state.topic"),
        ({"FORECASTD_KAFKA__INPUT_TOPIC": "a/b"}, "'a/b' is not a Kafka topic name"),
        ({"FORECASTD_KAFKA__INPUT_TOPIC": ".."}, "'..' is not a Kafka topic name"),
        (
            {"FORECASTD_KAFKA__GROUP_ID": "team one"},
            "state.topic: the default 'team one.state' (kafka.group_id + '.state') is not a"
            " Kafka topic name; set state.topic",
        ),
    ],
)
def test_each_topic_has_one_role_and_a_kafka_name(env: dict[str, str], said: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_settings(None, env=env)


def test_a_state_topic_that_is_off_may_be_anything() -> None:
    env = {"FORECASTD_KAFKA__GROUP_ID": "team one", "FORECASTD_STATE__ENABLED": "false"}
    assert load_settings(None, env=env).kafka.group_id == "team one"


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("forecast: {horizon: 1}  # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 29\)"):
        load_settings(latin, env={})


def test_a_config_error_names_every_invalid_key_on_one_line() -> None:
    """The first mistake with its reason; the other keys named, so a config with three
    mistakes takes one run to see them; a key of two forms (a list, or ``auto``) gives
    both reasons, not pydantic's names for them."""
    with pytest.raises(ConfigError) as caught:
        load_settings(
            None,
            env={
                "FORECASTD_SCHEMA__FEATURES": "5",
                "FORECASTD_FORECAST__WINDOW": "1",
                "FORECASTD_KAFKA__ACKS": "some",
            },
        )
    message = str(caught.value)
    assert "\n" not in message
    first, more = message.split(" [+")
    assert first.startswith("kafka.acks: ")
    assert more == "2 more: schema.features, forecast.window]"
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={"FORECASTD_SCHEMA__FEATURES": "5"})
    assert str(caught.value) == (
        "schema.features: Input should be a valid tuple or Input should be 'auto' (got '5')"
    )


SECRET = "hunter2-Secret"  # noqa: S105 - the value the tests look for in every output


def test_security_values_from_the_environment_stay_strings() -> None:
    """Issue 13, secrets: ``[abc]`` silently became a list, ``{x`` an error quoting it."""
    for password in ("[abc]", "{abc", "{a: b}", f"[{SECRET}"):
        env = {"FORECASTD_KAFKA__SECURITY__SASL_PLAIN_PASSWORD": password}
        settings = load_settings(None, env=env)
        assert settings.kafka.security == {"sasl_plain_password": password}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # misspelt security key: rejected by us, by name, before kafka-python echoes it
        (
            {"FORECASTD_KAFKA__SECURITY__SASL_PLAIN_PASWORD": SECRET},
            "kafka.security: unknown option 'sasl_plain_pasword'",
        ),
        # the whole map, wrong-typed: no "(got '<the value>')"
        ({"FORECASTD_KAFKA__SECURITY": SECRET}, "kafka.security: Input should be a valid"),
        # the whole map, broken YAML: not echoed
        ({"FORECASTD_KAFKA__SECURITY": "{sasl_plain_password: " + SECRET}, "not a valid YAML"),
        # a librdkafka property with kafka-python
        ({"FORECASTD_KAFKA__SECURITY__SASL.PASSWORD": SECRET}, "client confluent only"),
        # a secret-named value of the wrong type elsewhere
        ({"FORECASTD_KAFKA__SECURITY__SSL_PASSWORD": SECRET, "FORECASTD_KAFKA__X": "1"}, "kafka.x"),
    ],
)
def test_config_errors_never_show_a_secret(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env=env)
    assert expected in str(caught.value)
    assert SECRET not in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_settings_repr_masks_security_values() -> None:
    env = {"FORECASTD_KAFKA__SECURITY__SASL_PLAIN_PASSWORD": SECRET}
    settings = load_settings(None, env=env)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert "sasl_plain_password" in repr(settings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FORECASTD_KAFKA__SECURITY__SASL_PLAIN_PASSWORD": "[" + SECRET}, "no broker answered"),
        ({"FORECASTD_KAFKA__SECURITY__SSL_KEYPASSWORD": SECRET}, "ssl_keypassword"),
        ({"FORECASTD_KAFKA__SECURITY": SECRET}, "kafka.security"),
    ],
)
def test_cli_never_prints_a_secret(env: dict[str, str], expected: str) -> None:
    """The four leaks of issue 13 through the real command: nothing the process writes
    contains the secret (a well-formed ``[...`` password gets as far as connecting,
    which fails fast here: no broker listens on port 1)."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "FORECASTD_KAFKA__CONNECT_TIMEOUT_S": "1",
            "FORECASTD_METRICS__PORT": "0",
            **env,
        },
    )
    assert result.returncode in (1, 2), result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ({"time_field": "y"}, "schema.time_field and schema.target_field are both 'y'"),
        ({"features_field": "key"}, "schema.key_field and schema.features_field are both 'key'"),
        ({"target_field": ""}, "schema.target_field"),
        ({"time_zone": "Mars/Base"}, "schema.time_zone: 'Mars/Base' is not a time zone"),
        ({"time_format": "%Q"}, "schema.time_format: '%Q' is not a strptime format"),
    ],
)
def test_a_schema_that_cannot_read_records_is_refused_at_start(
    schema: dict[str, str], said: str, tmp_path: Path
) -> None:
    """A field named twice would read one value as two things; a time zone or format
    that cannot work would make every record ``bad_time``."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"schema": schema}))
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_settings(path)
