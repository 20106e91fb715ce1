"""Secrets in config never reach MLflow params, log records or error messages (no JVM needed;
tests/test_safety.py runs real jobs with a canary secret and greps everything they leave)."""

import logging

import pytest

from catalogfs.jobs import cli
from catalogfs.config import DEFAULT_CONF_DIR, load_config
from catalogfs.errors import ConfigError
from catalogfs.redaction import install_log_redaction, is_secret_key, redact, redact_text, secret_values
from catalogfs.tracking import config_params

LOCAL = DEFAULT_CONF_DIR / "local.yaml"
CANARY = "canary-7f3a9c-do-not-leak"


@pytest.mark.parametrize("key, secret", [
    ("spark.settings.spark.hadoop.fs.s3a.secret.key", True),
    ("spark.settings.spark.hadoop.fs.s3a.access.key", True),
    ("spark.settings.spark.hadoop.fs.s3a.accessKey", True),
    ("spark.settings.fs.azure.account.key.acct.dfs.core.windows.net", True),
    ("spark.settings.spark.authenticate.secret", True),
    ("db.password", True), ("github_token", True), ("gcp.credentials", True),
    ("storage.database", False), ("inference.batch_size", False), ("retention.keep_versions", False),
    ("spark.settings.spark.sql.shuffle.partitions", False), ("mlflow.tracking_uri", False),
    ("server.jdbc_auth", False), ("spark.settings.spark.hadoop.hive.server2.auth", True),
])
def test_secret_looking_keys(key, secret):
    assert is_secret_key(key) is secret


def test_uri_passwords_and_secret_query_values_are_masked():
    assert redact_text(f"https://bob:{CANARY}@mlflow.example.com/x") == "https://bob:***@mlflow.example.com/x"
    assert redact_text(f"postgresql://u:{CANARY}@db:5432/mlflow") == "postgresql://u:***@db:5432/mlflow"
    assert redact_text(f"https://h/api?run=1&token={CANARY}&x=2") == "https://h/api?run=1&token=***&x=2"
    assert redact_text("https://h/plain?run=1") == "https://h/plain?run=1"
    assert redact_text(f"said {CANARY} twice: {CANARY}", [CANARY]) == "said *** twice: ***"
    assert redact({"a": {"password": CANARY, "n": 3}, "uri": f"s3://k:{CANARY}@b/p"}) == {
        "a": {"password": "***", "n": 3}, "uri": "s3://k:***@b/p"}


@pytest.fixture
def canary_config(tmp_path, monkeypatch):
    """A config with the canary in a Spark secret (via ${ENV}) and in the tracking URI's userinfo."""
    monkeypatch.setenv("CATALOGFS_TEST_S3_SECRET", CANARY)
    conf = tmp_path / "canary.yaml"
    conf.write_text(
        "spark:\n  settings:\n    spark.hadoop.fs.s3a.secret.key: ${CATALOGFS_TEST_S3_SECRET}\n"
        f"mlflow:\n  tracking_uri: https://ml-user:{CANARY}-uri@mlflow.example.com\n")
    return conf


def test_mlflow_params_carry_no_secret(canary_config):
    cfg = load_config([LOCAL, canary_config])
    assert cfg.spark.settings["spark.hadoop.fs.s3a.secret.key"] == CANARY  # the job still gets it
    params = config_params(cfg)
    assert not [k for k, v in params.items() if CANARY in v]
    assert params["spark.settings.spark.hadoop.fs.s3a.secret.key"] == "***"
    assert params["mlflow.tracking_uri"] == "https://ml-user:***@mlflow.example.com"
    assert params["inference.batch_size"] == "32"  # ordinary values are kept
    assert secret_values(cfg.model_dump(mode="json")) >= {CANARY, f"{CANARY}-uri"}


def test_log_records_are_scrubbed(caplog):
    install_log_redaction([CANARY])
    with caplog.at_level(logging.INFO):
        logging.getLogger("catalogfs.test").info("connecting with %s to %s", CANARY,
                                                 "https://u:other-secret@h")
        try:
            raise RuntimeError(f"refused key {CANARY}")
        except RuntimeError:
            logging.getLogger("catalogfs.test").exception("failed")
    assert CANARY not in caplog.text and "other-secret" not in caplog.text
    assert "connecting with *** to https://u:***@h" in caplog.text and "refused key ***" in caplog.text


def test_config_errors_do_not_echo_secrets(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"mlflow:\n  tracking_uri:\n    user: bob\n    password: {CANARY}\n")
    with pytest.raises(ConfigError) as err:
        load_config([LOCAL, bad])
    assert "bad value for 'mlflow.tracking_uri'" in str(err.value) and CANARY not in str(err.value)
    assert cli.main(["embed", "--conf", str(LOCAL), "--conf", str(bad)]) == 2
    captured = capsys.readouterr()
    assert CANARY not in captured.err + captured.out and "'password': '***'" in captured.err
