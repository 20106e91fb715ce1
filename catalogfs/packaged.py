"""Where the product's own files are: the packaged resources, and the checkout (if any).

Everything the code reads that is not Python ships in the wheel and is found with
:mod:`importlib.resources`, never through a path relative to the source tree:

- ``catalogfs.conf``: ``base.yaml``, the profiles, ``log4j2.properties``, ``taxonomies/``;
- ``catalogfs/java``: the JDBC guard's Java source (compiled on the first ``serve``).

A *checkout* is a source tree with ``setup.cfg`` beside the package (an editable install, or
running from the repository): there a relative default data root stays in ``<checkout>/data``.
Installed from the wheel there is none, and the data root defaults to a per-user folder
(:func:`default_data_root`), never the current directory or site-packages.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

ENV_CONF_DIR = "CATALOGFS_CONF_DIR"  # a folder that replaces the packaged conf (base.yaml + profiles)


def conf_dir() -> Path:
    """The folder of ``base.yaml`` and the profiles: ``$CATALOGFS_CONF_DIR``, else the packaged one."""
    override = os.environ.get(ENV_CONF_DIR)
    return Path(override) if override else Path(str(resources.files("catalogfs.conf")))


def log4j_config() -> Path:
    """The Spark JVM's log4j2 configuration (packaged; quiet INFO noise, keeps warnings)."""
    return Path(str(resources.files("catalogfs.conf") / "log4j2.properties"))


def taxonomies_dir() -> Path:
    """The packaged taxonomies (``content_v1.yaml``, ``moderation_v1.yaml``, their README)."""
    return Path(str(resources.files("catalogfs.conf") / "taxonomies"))


def guard_sources() -> Path:
    """The folder of the JDBC guard's ``*.java`` sources."""
    return Path(str(resources.files("catalogfs") / "java"))


def checkout_root() -> Path | None:
    """The source tree this package runs from (``setup.cfg`` and ``jobs/`` beside it), else ``None``."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "setup.cfg").is_file() and (root / "jobs" / "__init__.py").is_file() else None


def default_data_root() -> Path:
    """The data root when none is configured: ``<checkout>/data`` in a checkout, else the per-user
    ``$XDG_DATA_HOME/catalogfs`` (``~/.local/share/catalogfs`` when ``XDG_DATA_HOME`` is unset)."""
    root = checkout_root()
    if root is not None:
        return root / "data"
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser() / "catalogfs"
