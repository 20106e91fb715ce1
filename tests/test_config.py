from pathlib import Path

import pytest
from pydantic import ValidationError

from catalogfs.config import DEFAULT_CONF_DIR, load_config
from catalogfs.errors import ConfigError
from tests.helpers import PROJECT_ROOT

LOCAL = DEFAULT_CONF_DIR / "local.yaml"


def test_defaults_resolve_data_root_in_the_repository(monkeypatch):
    monkeypatch.delenv("CATALOGFS_DATA_ROOT", raising=False)
    cfg = load_config([LOCAL])
    assert cfg.storage.data_root == PROJECT_ROOT / "data"
    assert cfg.storage.table_path("frames") == PROJECT_ROOT / "data/warehouse/catalog_features.db/frames"
    assert cfg.model.uri == "models:/efficientnet_lite0_imagenet@champion"
    assert cfg.tracking_uri == f"sqlite:///{PROJECT_ROOT / 'data' / 'mlflow.db'}"


def test_environment_variable_moves_the_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("CATALOGFS_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert load_config([LOCAL]).storage.data_root == tmp_path / "elsewhere"


def test_set_overrides_win_and_are_typed():
    cfg = load_config([LOCAL], ["inference.batch_size=7", "spark.settings.spark.foo.bar=x",
                                "storage.database=other_db"])
    assert cfg.inference.batch_size == 7
    assert cfg.spark.settings["spark.foo.bar"] == "x"
    assert cfg.spark.settings["spark.sql.shuffle.partitions"] == "4"  # merged, not replaced
    assert cfg.storage.qualified("frames") == "other_db.frames"


def test_config_is_frozen():
    cfg = load_config([LOCAL])
    with pytest.raises(ValidationError, match="frozen"):
        cfg.inference.batch_size = 3  # type: ignore[misc]


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inference:\n  batch_sise: 16\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad])
    assert str(bad) in str(err.value)
    assert "unknown key 'inference.batch_sise'" in str(err.value)


def test_bad_value_names_file_key_and_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extract:\n  sample_fps: -2\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad])
    message = str(err.value)
    assert str(bad) in message and "'extract.sample_fps'" in message and "-2" in message


def test_bad_override_names_the_override():
    with pytest.raises(ConfigError, match=r"--set inference.device: bad value for 'inference.device'"):
        load_config([LOCAL], ["inference.device=tpu"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config([LOCAL], ["nonsense"])


def test_injection_in_database_name_is_refused():
    with pytest.raises(ConfigError, match="storage.database"):
        load_config([LOCAL], ["storage.database=x; DROP TABLE y"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config([tmp_path / "nope.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("storage: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{broken}: not valid YAML"):
        load_config([broken])


def test_unset_environment_variable_without_default(tmp_path, monkeypatch):
    monkeypatch.delenv("CATALOGFS_TEST_UNSET", raising=False)
    conf = tmp_path / "env.yaml"
    conf.write_text("storage:\n  data_root: ${CATALOGFS_TEST_UNSET}\n")
    with pytest.raises(ConfigError, match="CATALOGFS_TEST_UNSET is not set"):
        load_config([conf])


def test_every_shipped_config_loads():
    for path in sorted(Path(DEFAULT_CONF_DIR).glob("*.yaml")):
        load_config([path])


@pytest.mark.parametrize("payload", ["x; DROP TABLE y", "a`b", "x -- c", "x /* c */", "db.t", "1abc", "x'y"])
def test_hostile_catalog_and_database_names_are_refused(payload):
    for key in ("storage.database", "storage.catalog"):
        with pytest.raises(ConfigError, match=f"bad value for '{key}'.*plain SQL identifier"):
            load_config([LOCAL], [f"{key}={payload}"])


def test_names_are_checked_again_where_sql_is_built():
    """A copy made without validation (``model_copy``) still cannot put a hostile name into SQL."""
    storage = load_config([LOCAL]).storage
    assert storage.qualified("frames") == "catalog_features.frames"
    with pytest.raises(ConfigError, match="storage.database"):
        storage.model_copy(update={"database": "x; DROP TABLE y"}).qualified("frames")
    with pytest.raises(ConfigError, match="storage.catalog"):
        _ = storage.model_copy(update={"catalog": "c`--"}).schema_name
    with pytest.raises(ConfigError, match="table name"):
        storage.qualified("frames; DROP TABLE y")
