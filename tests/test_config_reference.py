"""The configuration reference (docs/configuration.md) is generated from the config model: every key
has a description, the page equals what the generator writes, and defaults and secrets are right.
No Spark."""

import subprocess
import sys

from catalogfs.config import Config, load_config
from catalogfs.config_reference import key_docs, render_reference
from tests.helpers import PROJECT_ROOT

REFERENCE = PROJECT_ROOT / "docs" / "configuration.md"


def test_every_key_has_a_description():
    undescribed = sorted(doc.key for doc in key_docs() if not doc.description)
    assert not undescribed, f"config keys without a Field(description=...) in catalogfs/config.py: {undescribed}"


def test_every_leaf_of_a_loaded_config_is_documented():
    loaded = load_config().model_dump(mode="json", exclude={"sources", "origins"})

    def leaves(node, prefix=""):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and dotted != "spark.settings":
                yield from leaves(value, dotted + ".")
            else:
                yield dotted

    assert sorted(leaves(loaded)) == sorted(doc.key for doc in key_docs())


def test_defaults_come_from_base_yaml_and_the_model():
    docs = {doc.key: doc for doc in key_docs()}
    assert docs["inference.batch_size"].default == "32" and docs["inference.batch_size"].type == "int, ≥ 1, ≤ 4096"
    assert docs["storage.data_root"].default == "${CATALOGFS_DATA_ROOT:-}"
    assert docs["extract.extensions"].default == "[.mp4, .mov, .mkv, .webm, .avi, .m4v]"
    assert docs["spark.managed"].default == "false"  # not in base.yaml: the model's own default
    assert docs["inference.device"].type == "one of auto, cpu, cuda"
    assert Config.model_fields["publish"].default.max_attempts == int(docs["publish.max_attempts"].default)


def test_secret_keys_are_marked():
    secret = {doc.key for doc in key_docs() if doc.secret}
    assert "server.token" in secret and "server.tls.cert_file" not in secret
    assert "**Secret**" in next(line for line in render_reference().splitlines() if "`server.token`" in line)


def test_the_page_in_docs_is_the_generated_one():
    assert REFERENCE.read_text() == render_reference(), (
        "docs/configuration.md is stale: run `python -m catalogfs.config_reference > docs/configuration.md` "
        "(or `make docs`)")


def test_the_module_prints_the_page():
    out = subprocess.run([sys.executable, "-m", "catalogfs.config_reference"], capture_output=True, text=True,
                         check=True, cwd=PROJECT_ROOT / "docs").stdout
    assert out == render_reference() and out.startswith("# Configuration reference")


def test_cells_escape_markdown_outside_code_only():
    lines = render_reference().splitlines()
    tracking = next(line for line in lines if line.startswith("| `mlflow.tracking_uri`"))
    assert "sqlite:///&lt;data_root>/mlflow.db" in tracking  # a bare <data_root> would be an HTML tag
    master = next(line for line in lines if line.startswith("| `spark.master`"))
    assert "| `local[*]` |" in master  # code spans are left as they are
    users = next(line for line in lines if line.startswith("| `server.users_file`"))
    assert "reader\\|operator" in users and users.count(" | ") == 3  # the | inside stays in its cell
