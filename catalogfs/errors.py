"""Every error a job reports to its user, in one place, each carrying its exit code.

Layers raise these (or subclasses named for their module) and the job runner maps any
:class:`CatalogfsError` to ``exit_code`` without importing from the layers above it. A plain
exception that is not one of these is a bug: exit 1 with a traceback.

Exit codes (documented in docs/operating.md, "Exit codes"):
  0 success · 1 unexpected error (a bug: traceback shown) · 2 bad config or arguments ·
  3 validation failed or candidates of the wrong schema, nothing published ·
  4 missing input (no videos, no table, no model, bad SQL) ·
  5 the publish kept losing commit races to concurrent writers, or Delta skipped it (retried; rerun the job) ·
  6 the model registry kept failing (locked database, HTTP 5xx; retried; rerun the job) ·
  7 the catalogue is in use by another process (the embedded metastore admits one at a time) ·
  8 ``catalogfs verify`` found a published table that does not match the lineage (a commit no run
    made, a missing version, a duplicate key, rows of an unknown space, frames without a row)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_VALIDATION = 3
EXIT_INPUT = 4
EXIT_CONFLICT = 5
EXIT_UNAVAILABLE = 6
EXIT_BUSY = 7
EXIT_INTEGRITY = 8


class CatalogfsError(Exception):
    """Base of the errors a job reports in one line; ``exit_code`` is what the process exits with."""

    exit_code = EXIT_ERROR


# --- 2: configuration and arguments ---------------------------------------------------------

class ConfigError(CatalogfsError, ValueError):
    """A configuration file, key or value is wrong; the message names which."""

    exit_code = EXIT_CONFIG


class FlagsError(ConfigError):
    """A flags spec or taxonomy file is malformed, or names labels the model does not have."""


class TrainingSetArgumentError(ConfigError):
    """A bad training-set argument: an unsupported events format, the same column as key and time."""


class RelabelError(ConfigError):
    """A space cannot be re-labelled from its stored vectors (its model is not CLIP-like: its labels
    come from a classifier head, not from text embeddings); the message names the space and model."""


# --- 3: validation ---------------------------------------------------------------------------

class ValidationFailed(CatalogfsError, RuntimeError):
    """Candidates failed their suites; nothing was published. The message names what failed.

    ``outcome`` is the validation outcome (``expectations.runner.ValidationOutcome``), kept for
    callers that log it; ``report_dir`` is where the results were written.
    """

    exit_code = EXIT_VALIDATION

    def __init__(self, outcome: Any, report_dir: str) -> None:
        self.outcome = outcome
        self.report_dir = report_dir
        failures: Sequence[str] = getattr(outcome, "failures", ())
        data_docs = getattr(outcome, "data_docs", None)
        lines = "\n  - ".join(failures)
        docs = f"; Data Docs: {data_docs}" if data_docs else ""
        super().__init__(f"validation failed, nothing published; report: {report_dir}{docs}\n  - {lines}")


class IndexRejected(CatalogfsError, RuntimeError):
    """An ANN index version missed its recall check; it did not become current. The message says
    the recall, the minimum and where the report is."""

    exit_code = EXIT_VALIDATION


class SchemaMismatch(CatalogfsError, ValueError):
    """Rows meant for a published table do not have its schema; nothing was written."""

    exit_code = EXIT_VALIDATION


# --- 4: missing or unusable input -------------------------------------------------------------

class InputError(CatalogfsError, RuntimeError):
    """Input the job needs is missing or unusable (no videos, no frames table, …)."""

    exit_code = EXIT_INPUT


class ModelResolutionError(InputError, LookupError):
    """The registry has no model (or no alias, or no version) by the name a job asked for."""


class BundleError(InputError, ValueError):
    """A model bundle is missing, incomplete or unsafe; the message names the file."""


class PromotionError(InputError, ValueError):
    """The space cannot be promoted (never published, unknown) or there is nothing to roll back to."""


class SimilarityError(InputError, LookupError):
    """Unknown video or space, or nothing to search."""


class TrainingSetError(InputError):
    """Events that cannot be used for a training set: a missing file or column, an unknown space."""


class ChangeFeedError(InputError, LookupError):
    """Unknown table, a version range the table does not have, or change data missing for it."""


class VectorIndexError(InputError, LookupError):
    """No index for the space, an index whose files are missing or damaged, or a bad index setting."""


class DataRootMoved(InputError):
    """The catalogue names table folders of another data root (the root was copied or moved) and
    cannot be re-pointed on its own: a table's folder is missing under this root. The message names
    each such table and ``catalogfs relocate``."""


class ReadOnlyRefused(CatalogfsError, PermissionError):
    """A consumer's SQL statement would change the catalogue (DDL/DML); nothing was run."""

    exit_code = EXIT_CONFIG


# --- 5: concurrent writers --------------------------------------------------------------------

class PublishConflict(CatalogfsError, RuntimeError):
    """A publish kept losing commit races to concurrent publishers; the message says what to do."""

    exit_code = EXIT_CONFLICT


class PublishSkipped(PublishConflict):
    """Delta skipped a MERGE of this run (its transaction id was already used): nothing of it was
    committed to that table. ``written`` holds the versions the run did commit."""

    def __init__(self, message: str, written: Mapping[str, int]) -> None:
        super().__init__(message)
        self.written = dict(written)


# --- 6: services that kept failing ------------------------------------------------------------

class RegistryUnavailable(CatalogfsError, RuntimeError):
    """The registry kept failing (locked database, HTTP 5xx, network) after bounded retries."""

    exit_code = EXIT_UNAVAILABLE


class ServerUnavailable(CatalogfsError, RuntimeError):
    """``server.use=always`` and the data root has no running server (or it cannot be reached)."""

    exit_code = EXIT_UNAVAILABLE


# --- 7: the catalogue is busy ----------------------------------------------------------------

class CatalogBusy(CatalogfsError, RuntimeError):
    """Another process has the data root's embedded catalogue open; the message names it."""

    exit_code = EXIT_BUSY


# --- 8: the catalogue does not match its lineage ------------------------------------------------

class IntegrityMismatch(CatalogfsError, RuntimeError):
    """``catalogfs verify`` found mismatches between the published tables and ``feature_versions``;
    the job printed one MISMATCH line for each (table, version, what is wrong)."""

    exit_code = EXIT_INTEGRITY


# --- 1: internal, handled where raised ----------------------------------------------------------

class OnnxExportError(CatalogfsError, RuntimeError):
    """The model could not be exported, or the export computes something else than the model."""
