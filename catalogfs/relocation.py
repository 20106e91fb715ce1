"""A data root that was copied or moved: re-point what its catalogue and registry store as absolute paths.

Two stores under the data root record absolute locations: the embedded Derby metastore (each
database's and table's folder, and a data-source table's ``path``) and the MLflow sqlite registry
(the experiment's artifact location, each run's artifact URI, each model version's source). After
a copy (backup, restore, a bigger disk) they still name the old root, so a job on the copy would
read and write the original's tables. Delta tables themselves hold only relative paths.

What was moved is read from the stores themselves: the ``default`` database lies at
``<old root>/warehouse`` (or the configured database at ``<old root>/warehouse/<db>.db``), and the
experiment's artifacts at ``<old root>/mlflow-artifacts``. A location under the old root is
re-pointed to the same relative path under the current root — a table only when that folder
exists here and is a Delta table, and never to a folder outside the root (a symlink that leads out
counts as outside); locations under neither root are left alone. Anything that cannot be
re-pointed makes the whole plan refused (:class:`DataRootMoved`), nothing changed.

:func:`ensure_in_place` runs where a session opens the catalogue (``catalogfs.spark.build_spark``):
it re-points a consistent move and logs one warning line, or raises. ``catalogfs relocate`` shows
the plan (``--dry-run``) or applies it explicitly. Hive's own ``metatool -updateLocation`` edits the
same columns; Spark's ``ALTER DATABASE … SET LOCATION`` is refused by the built-in Hive 2.3 client.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote, unquote, urlparse

from catalogfs.config import StorageConfig
from catalogfs.errors import DataRootMoved

log = logging.getLogger(__name__)

__all__ = ["Move", "RelocationPlan", "apply_plan", "ensure_in_place", "plan_catalogue", "plan_registry"]

# MLflow sqlite registry: the columns that hold absolute artifact locations (params keep the config
# a run used, as history; they are not rewritten)
REGISTRY_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("model_versions", "source"), ("model_versions", "storage_location"),
                    ("logged_models", "artifact_location"))
REGISTRY_ARTIFACTS = "mlflow-artifacts"


@dataclass(frozen=True)
class Move:
    """One stored location under the old root: ``store`` (metastore, registry), what holds it, the
    stored value, the value it becomes (None: it cannot be re-pointed, ``problem`` says why)."""

    store: str
    what: str
    old: str
    new: str | None
    problem: str = ""


@dataclass(frozen=True)
class RelocationPlan:
    """What moving one store from ``old_root`` to ``root`` changes (``old_root`` None: not moved)."""

    store: str
    root: Path
    old_root: Path | None
    moves: tuple[Move, ...] = ()
    foreign: tuple[str, ...] = ()  # locations under neither root: left as they are

    @property
    def problems(self) -> list[str]:
        return [f"{m.what}: {m.problem}" for m in self.moves if m.problem]

    def describe(self) -> list[str]:
        """One line per change, problem and location left alone."""
        lines = [f"{self.store}: {m.what}: {m.old} → {m.new}" if not m.problem
                 else f"{self.store}: {m.what}: cannot re-point {m.old}: {m.problem}" for m in self.moves]
        return lines + [f"{self.store}: left alone (outside both roots): {f}" for f in self.foreign]


# --- locations ----------------------------------------------------------------------------------

def local_path(location: str | None) -> Path | None:
    """The local folder a stored location names (``file:/…``, ``file:///…`` or a bare path), else None."""
    if not location:
        return None
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file") or parsed.netloc not in ("", "localhost"):
        return None
    return Path(unquote(parsed.path))


def same_place(a: Path, b: Path) -> bool:
    """Whether two paths name the same folder (symlinks followed where they exist)."""
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def _styled_like(old: str, path: Path) -> str:
    """``path`` written the way ``old`` was (``file:///…``, ``file:/…`` or bare), URI-quoted as Hadoop does."""
    quoted = quote(str(path), safe="/:@&=+$,;-_.!~*'()")
    if old.startswith("file:///"):
        return "file://" + quoted
    if old.startswith("file:"):
        return "file:" + quoted
    return str(path)


def _inside(path: Path, root: Path) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _move(store: str, what: str, old: str, old_root: Path, root: Path, *, must_hold: str | None) -> Move:
    """Re-point ``old`` (under ``old_root``) to the same relative path under ``root``, checked:
    inside ``root`` (symlinks followed) and, with ``must_hold``, that entry present in the folder."""
    path = local_path(old)
    if path is None:  # _under() said it lies under old_root, so it is a local path
        return Move(store, what, old, None, f"{old} is not a local path")
    relative = path.relative_to(old_root)
    new = root / relative
    if ".." in relative.parts or not _inside(new, root):
        return Move(store, what, old, None, f"{new} lies outside the data root {root}")
    if must_hold is not None and not (new / must_hold).exists():
        missing = "folder is missing" if not new.exists() else f"folder holds no {must_hold} (not a Delta table)"
        return Move(store, what, old, None, f"its {missing} under this data root: {new}")
    return Move(store, what, old, _styled_like(old, new))


def _under(location: str | None, root: Path) -> bool:
    path = local_path(location)
    return path is not None and (path == root or root in path.parents)


# --- the metastore ------------------------------------------------------------------------------

class _Derby:
    """A JDBC connection to the embedded metastore, through the JVM of ``jvm`` (py4j)."""

    def __init__(self, jvm: Any, metastore_dir: Path) -> None:
        self.connection = jvm.java.sql.DriverManager.getConnection(f"jdbc:derby:;databaseName={metastore_dir}")
        self.connection.setAutoCommit(False)

    def rows(self, sql: str, width: int) -> list[tuple]:
        statement = self.connection.createStatement()
        try:
            result = statement.executeQuery(sql)
            found = []
            while result.next():
                found.append(tuple(result.getString(i + 1) for i in range(width)))
            return found
        finally:
            statement.close()

    def update(self, sql: str, *values: str) -> None:
        statement = self.connection.prepareStatement(sql)
        try:
            for i, value in enumerate(values):
                statement.setString(i + 1, value)
            statement.executeUpdate()
        finally:
            statement.close()

    def close(self, commit: bool) -> None:
        (self.connection.commit if commit else self.connection.rollback)()
        self.connection.close()


_TABLES_SQL = ("SELECT d.NAME, t.TBL_NAME, s.LOCATION, "
               "(SELECT p.PARAM_VALUE FROM TABLE_PARAMS p WHERE p.TBL_ID = t.TBL_ID "
               "AND p.PARAM_KEY = 'spark.sql.sources.provider') "
               "FROM TBLS t JOIN DBS d ON t.DB_ID = d.DB_ID JOIN SDS s ON t.SD_ID = s.SD_ID")
_PATHS_SQL = ("SELECT d.NAME, t.TBL_NAME, p.PARAM_VALUE FROM TBLS t JOIN DBS d ON t.DB_ID = d.DB_ID "
              "JOIN SDS s ON t.SD_ID = s.SD_ID JOIN SERDE_PARAMS p ON p.SERDE_ID = s.SERDE_ID "
              "WHERE p.PARAM_KEY = 'path'")
_UPDATES = {"database": "UPDATE DBS SET DB_LOCATION_URI = ? WHERE DB_LOCATION_URI = ?",
            "table": "UPDATE SDS SET LOCATION = ? WHERE LOCATION = ?",
            "table path": "UPDATE SERDE_PARAMS SET PARAM_VALUE = ? WHERE PARAM_KEY = 'path' AND PARAM_VALUE = ?"}


def _catalogue_root(databases: dict[str, str], storage: StorageConfig) -> Path | None:
    """The data root the metastore was written under, read from where the ``default`` database
    (``<root>/warehouse``) or the configured one (``<root>/warehouse/<db>.db``) lies; None: unknown."""
    default, ours = local_path(databases.get("default")), local_path(databases.get(storage.database))
    if default is not None and default.name == storage.warehouse_dir.name:
        return default.parent
    if ours is not None and ours.name == f"{storage.database}.db" and ours.parent.name == storage.warehouse_dir.name:
        return ours.parent.parent
    return None


def plan_catalogue(jvm: Any, storage: StorageConfig, *, old_root: Path | None = None) -> RelocationPlan:
    """What re-pointing the metastore from its old root (found, or ``old_root``) to ``storage.data_root``
    changes. Reads only."""
    root = storage.data_root
    if not (storage.metastore_dir / "service.properties").exists():  # a fresh root: nothing recorded yet
        return RelocationPlan("metastore", root, None)
    try:
        derby = _Derby(jvm, storage.metastore_dir)
        try:
            databases = dict(derby.rows("SELECT NAME, DB_LOCATION_URI FROM DBS", 2))
            tables = derby.rows(_TABLES_SQL, 4)
            paths = derby.rows(_PATHS_SQL, 3)
        finally:
            derby.close(commit=False)
    except Exception as exc:  # noqa: BLE001 - a metastore Hive has not finished creating: Hive reports it
        log.debug("metastore not read for relocation: %s", (str(exc).splitlines() or [type(exc).__name__])[0])
        return RelocationPlan("metastore", root, None)
    old_root = old_root or _catalogue_root(databases, storage)
    if old_root is None or same_place(old_root, root):
        return RelocationPlan("metastore", root, None)
    moves, foreign = [], []
    entries: list[tuple[str, str, Any, str | None]] = [
        ("database", f"database {name}", location, None) for name, location in databases.items()]
    entries += [("table", f"table {db}.{table}", location, "_delta_log" if (provider or "").lower() == "delta" else "")
                for db, table, location, provider in tables]
    entries += [("table path", f"table {db}.{table} (path)", location, None) for db, table, location in paths]
    for kind, what, location, must_hold in entries:
        if _under(location, old_root):
            moves.append(_move(kind, what, location, old_root, root, must_hold=must_hold))
        elif location and not _under(location, root) and local_path(location) is not None:
            foreign.append(f"{what}: {location}")
    return RelocationPlan("metastore", root, old_root, tuple(moves), tuple(foreign))


def _apply_catalogue(jvm: Any, storage: StorageConfig, plan: RelocationPlan) -> None:
    derby = _Derby(jvm, storage.metastore_dir)
    done = False
    try:
        for move in plan.moves:
            if move.new is None:  # a refused move: plan.ok would have said so before applying
                raise ValueError(f"{move.what}: {move.problem}")
            derby.update(_UPDATES[move.store], move.new, move.old)
        done = True
    finally:
        derby.close(commit=done)


# --- the model registry -------------------------------------------------------------------------

def _registry_db(storage: StorageConfig, tracking_uri: str) -> Path | None:
    """The registry's sqlite file when it is the data root's own (``mlflow.tracking_uri`` empty)."""
    path = storage.data_root / "mlflow.db"
    return path if not tracking_uri and path.exists() else None


def _registry_values(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    present = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    values = []
    for table, column in REGISTRY_COLUMNS:
        if table in present and column in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            values += [(table, column, v) for (v,) in db.execute(f"SELECT DISTINCT {column} FROM {table}") if v]
    return values


def plan_registry(storage: StorageConfig, tracking_uri: str = "", *, old_root: Path | None = None) -> RelocationPlan:
    """What re-pointing the data root's own MLflow registry (``<root>/mlflow.db``) from its old root
    (where its experiments' ``mlflow-artifacts`` lie, or ``old_root``) to this root changes. Reads only."""
    root, path = storage.data_root, _registry_db(storage, tracking_uri)
    if path is None:
        return RelocationPlan("registry", root, None)
    with sqlite3.connect(path) as db:
        values = _registry_values(db)
    if old_root is None:
        found = [local_path(v) for t, _, v in values if t == "experiments"]
        old_root = next((p.parent for p in found if p is not None and p.name == REGISTRY_ARTIFACTS
                         and not same_place(p.parent, root)), None)
    if old_root is None or same_place(old_root, root):
        return RelocationPlan("registry", root, None)
    moves = tuple(_move(f"{t}.{c}", f"{t}.{c}", v, old_root, root, must_hold=None)
                  for t, c, v in values if _under(v, old_root))
    if moves and not (root / REGISTRY_ARTIFACTS).is_dir():
        moves += (Move("registry", "artifacts", str(old_root / REGISTRY_ARTIFACTS), None,
                       f"{root / REGISTRY_ARTIFACTS} is missing (copy it with the data root)"),)
    return RelocationPlan("registry", root, old_root, moves)


def _apply_registry(storage: StorageConfig, plan: RelocationPlan) -> None:
    with sqlite3.connect(storage.data_root / "mlflow.db") as db:  # one transaction
        for move in plan.moves:
            table, column = move.store.split(".")
            db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (move.new, move.old))


# --- both ---------------------------------------------------------------------------------------

def apply_plan(plans: Sequence[RelocationPlan], storage: StorageConfig, jvm: Any = None) -> None:
    """Apply every plan (the metastore's needs ``jvm``); refuses all of them, changing nothing,
    when any has a problem (:class:`DataRootMoved`, naming each and ``catalogfs relocate``)."""
    problems = [p for plan in plans for p in plan.problems]
    if problems:
        old = next((str(p.old_root) for p in plans if p.old_root), "?")
        raise DataRootMoved(
            f"the data root {storage.data_root} was moved or copied from {old}, and its catalogue cannot "
            f"be re-pointed here: " + "; ".join(problems)
            + ". Copy what is missing from the old root (the whole data root moves together), then run "
              "`catalogfs relocate` (`--dry-run` shows what it would change)")
    for plan in plans:
        if plan.moves and plan.store == "metastore":
            _apply_catalogue(jvm, storage, plan)
        elif plan.moves:
            _apply_registry(storage, plan)


def ensure_in_place(storage: StorageConfig, *, jvm: Any = None, tracking_uri: str | None = None) -> list[RelocationPlan]:
    """On open: re-point the metastore (with ``jvm``) and/or the registry (with ``tracking_uri``)
    when the data root was moved, logging one warning line; raises :class:`DataRootMoved` when it
    cannot. Returns the plans applied (empty: nothing was moved)."""
    plans = ([plan_catalogue(jvm, storage)] if jvm is not None else []) \
        + ([plan_registry(storage, tracking_uri)] if tracking_uri is not None else [])
    moved = [p for p in plans if p.moves]
    if not moved:
        return []
    apply_plan(moved, storage, jvm)
    log.warning("data root moved from %s to %s: re-pointed %s", moved[0].old_root, storage.data_root,
                ", ".join(f"{len(p.moves)} {p.store} locations" for p in moved))
    return moved


def summary(plans: Iterable[RelocationPlan]) -> list[str]:
    """Every plan's lines, or one line saying nothing needs re-pointing."""
    lines = [line for plan in plans for line in plan.describe()]
    return lines or ["nothing to re-point: the catalogue and the registry lie under this data root"]
