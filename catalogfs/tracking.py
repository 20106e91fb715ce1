"""MLflow set-up: the tracking/registry URI, the experiment, and one run per job."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from catalogfs.config import Config
from catalogfs.permissions import ensure_private_dir
from catalogfs.redaction import redact
from catalogfs.relocation import ensure_in_place

log = logging.getLogger(__name__)


def configure_mlflow(cfg: Config) -> str:
    """Point MLflow at the configured registry and return the experiment id (created if missing).

    Artifacts of a new experiment go under ``<data_root>/mlflow-artifacts`` (never the working folder).
    A registry copied or moved with its data root is re-pointed at this root's artifacts first.
    """
    import mlflow

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ensure_private_dir(cfg.storage.data_root)
    # a copied or moved data root: its registry names the old root's artifacts (catalogfs.relocation)
    ensure_in_place(cfg.storage, tracking_uri=cfg.mlflow.tracking_uri)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (cfg.storage.data_root / "mlflow-artifacts").resolve()
    return mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=artifacts.as_uri())


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} → {"a.b": "1"}, values cut to MLflow's param length."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


def config_params(cfg: Config) -> dict[str, str]:
    """The config as MLflow parameters, secrets redacted (``***`` under secret-looking keys, no
    passwords in URIs): MLflow params are readable by everyone with access to the experiment."""
    return flatten(redact(cfg.model_dump(mode="json", exclude={"sources"})))


@contextmanager
def job_run(cfg: Config, job: str) -> Iterator[Any]:
    """An MLflow run for one job, with the whole config (secrets redacted) as parameters."""
    import mlflow

    experiment_id = configure_mlflow(cfg)
    with mlflow.start_run(experiment_id=experiment_id, run_name=job) as run:
        mlflow.set_tag("catalogfs.job", job)
        mlflow.log_params(config_params(cfg))
        mlflow.set_tag("catalogfs.config_files", ",".join(cfg.sources))
        yield run
