"""One source of truth for the inference options: ``InferenceConfig`` (catalogfs/config.py) describes
them; the engine's ``EngineOptions``, ``conf/base.yaml`` and the configuration reference (docs/configuration.md) must name
the same ones. No Spark."""

import re
import typing
from dataclasses import fields

import yaml

from catalogfs.config import DEFAULT_CONF_DIR, InferenceConfig
from tests.helpers import PROJECT_ROOT
from catalogfs.udfs.engine import GPU_DECODE_MODES, RUNTIMES, EngineOptions

CONFIG_FIELDS = set(InferenceConfig.model_fields)


def _readme_inference_keys() -> set[str]:
    """The ``inference.*`` keys the configuration reference (docs/configuration.md) lists. A row's first cell may
    name several keys of a section: ``inference.batch_size`` / ``device`` / …"""
    keys: set[str] = set()
    for line in (PROJECT_ROOT / "docs" / "configuration.md").read_text().splitlines():
        if not line.startswith("| `inference."):
            continue
        first_cell = line.split("|")[1]
        for name in re.findall(r"`([^`]+)`", first_cell):
            keys.add(name.removeprefix("inference."))
    return keys


def test_every_inference_option_is_described():
    undescribed = sorted(name for name, info in InferenceConfig.model_fields.items() if not info.description)
    assert not undescribed, f"InferenceConfig fields without a description: {undescribed}"


def test_engine_options_are_inference_config_fields_with_the_same_defaults():
    engine_fields = {f.name: f.default for f in fields(EngineOptions)}
    missing = sorted(set(engine_fields) - CONFIG_FIELDS)
    assert not missing, f"EngineOptions fields that InferenceConfig lacks: {missing}"
    defaults = InferenceConfig()
    differ = {name: (default, getattr(defaults, name)) for name, default in engine_fields.items()
              if default != getattr(defaults, name)}
    assert not differ, f"EngineOptions defaults that differ from InferenceConfig's (engine, config): {differ}"


def test_engine_options_come_from_the_config_by_name():
    inference = InferenceConfig(batch_size=7, device="cpu", num_threads=3, top_k=2, max_image_pixels=99,
                                max_batch_bytes=0, gpu_decode="off", runtime="torch")
    options = EngineOptions.from_config(inference)
    assert {f.name: getattr(options, f.name) for f in fields(EngineOptions)} == {
        "batch_size": 7, "device": "cpu", "num_threads": 3, "top_k": 2, "max_image_pixels": 99,
        "max_batch_bytes": 0, "gpu_decode": "off", "runtime": "torch"}
    assert EngineOptions.from_config(InferenceConfig()) == EngineOptions()


def test_the_engine_accepts_exactly_the_configs_choices():
    choices = {name: typing.get_args(InferenceConfig.model_fields[name].annotation)
               for name in ("runtime", "gpu_decode")}
    assert choices == {"runtime": RUNTIMES, "gpu_decode": GPU_DECODE_MODES}


def test_base_yaml_sets_every_inference_option_to_its_default():
    section = yaml.safe_load((DEFAULT_CONF_DIR / "base.yaml").read_text())["inference"]
    assert set(section) == CONFIG_FIELDS, (
        f"conf/base.yaml inference: unknown keys {sorted(set(section) - CONFIG_FIELDS)}, "
        f"missing keys {sorted(CONFIG_FIELDS - set(section))}")
    assert InferenceConfig.model_validate(section) == InferenceConfig()


def test_reference_table_lists_every_inference_option():
    listed = _readme_inference_keys()
    assert listed == CONFIG_FIELDS, (
        f"docs/configuration.md inference table: rows to add {sorted(CONFIG_FIELDS - listed)}, "
        f"rows to remove {sorted(listed - CONFIG_FIELDS)}")
