"""The Databricks bundle runs the wheel's own entry point with parameters that parse and a packaged
profile. (No Databricks access here: this checks the bundle against the code and the built wheel.)"""

import glob
import importlib
import re
from pathlib import Path

import pytest
import yaml

from catalogfs.config import load_config
from catalogfs.jobs.cli import COMMANDS
from catalogfs.packaged import conf_dir
from tests.helpers import PROJECT_ROOT
from tests.wheel_env import wheel_entry_points

BUNDLE = PROJECT_ROOT / "databricks.yml"


def _bundle():
    root = yaml.safe_load(BUNDLE.read_text())
    variables = {k: v["default"] for k, v in root["variables"].items()}
    tasks = []
    for pattern in root["include"]:
        for path in sorted(glob.glob(str(PROJECT_ROOT / pattern))):
            for job in yaml.safe_load(Path(path).read_text())["resources"]["jobs"].values():
                tasks += [(Path(path).parent, task) for task in job["tasks"]]
    return variables, tasks


def _substitute(text: str, variables: dict) -> str:
    """The bundle's ``${var.x}``; nothing else (no path into the deployed checkout) may be left."""
    text = re.sub(r"\$\{var\.([a-z_]+)\}", lambda m: str(variables[m.group(1)]), text)
    assert "${" not in text and "../" not in text, text
    return text


def test_bundle_has_tasks_and_variables():
    variables, tasks = _bundle()
    assert {"catalog", "schema", "data_root"} <= set(variables)
    assert [t["task_key"] for _, t in tasks] == ["extract_frames", "embed_frames", "video_neighbors", "maintain"]


@pytest.mark.parametrize("index", range(4))
def test_every_task_runs_an_entry_point_of_the_built_wheel(index, built_wheel, capsys):
    variables, tasks = _bundle()
    _, task = tasks[index]
    wheel_task = task["python_wheel_task"]
    assert wheel_task["package_name"] == "catalogfs" and "spark_python_task" not in task
    target = wheel_entry_points(built_wheel)[wheel_task["entry_point"]]  # KeyError: not in the wheel
    module, function = target.split(":")
    entry = getattr(importlib.import_module(module), function)
    params = [_substitute(p, variables) for p in wheel_task["parameters"]]
    assert params[0] in COMMANDS and params[0].replace("-", "_") in task["task_key"]
    assert entry([*params, "--check"]) == 0, capsys.readouterr().err
    packaged = conf_dir()  # the profile is read from the installed package, not a deployed file
    sources = f"{packaged / 'base.yaml'}, {packaged / 'databricks.yaml'}"
    assert f"arguments and config ok ({sources})" in capsys.readouterr().out
    conf = params[params.index("--conf") + 1]
    assert conf == "databricks"  # the packaged profile, not a file of the deployed checkout
    sets = [params[i + 1] for i, p in enumerate(params) if p == "--set"]
    cfg = load_config([conf], sets)
    assert cfg.spark.managed and cfg.storage.catalog == variables["catalog"]
    assert cfg.storage.qualified("video_labels") == f"{variables['catalog']}.{variables['schema']}.video_labels"
    for library in task["libraries"]:
        assert library["whl"].startswith("../dist/")


def test_gpu_cluster_asks_one_task_per_gpu():
    root = yaml.safe_load((PROJECT_ROOT / "resources" / "catalogfs_jobs.yml").read_text())
    cluster = root["resources"]["jobs"]["catalogfs_pipeline"]["job_clusters"][0]["new_cluster"]
    assert cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "1"
    assert "gpu" in cluster["spark_version"]


def test_three_part_names_work_in_local_spark(spark, cfg):
    """catalog.database.table names (as Unity Catalog uses) through the same code paths."""
    from catalogfs.features import delta_writer
    from catalogfs.features.tables import FEATURE_VERSIONS
    from tests.helpers import with_database

    three = with_database(cfg, "uc_features")
    three = three.model_copy(update={"storage": three.storage.model_copy(update={"catalog": "spark_catalog"})})
    delta_writer.ensure_catalog(spark, three.storage, [FEATURE_VERSIONS])
    assert spark.catalog.tableExists("spark_catalog.uc_features.feature_versions")
    assert delta_writer.table_version(spark, three.storage, "feature_versions") == 0
