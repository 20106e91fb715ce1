"""`catalogfs sql` is a consumer's command: it reads, and refuses anything that would change the
catalogue (exit 2, nothing run, the table unchanged). ``--allow-writes`` is the operator's path."""

from __future__ import annotations

import pytest

from catalogfs.errors import ReadOnlyRefused
from catalogfs.features.read_only import beyond_the_catalogue, require_read_only, writing_node
from catalogfs.jobs import sql

DB = "readonly_features"
T = f"{DB}.labels"

REFUSED = [
    f"DROP TABLE {T}",
    f"drop   table IF EXISTS {T}",
    f"DELETE FROM {T} WHERE x = 1",
    f"INSERT INTO {T} VALUES (9, 'z')",
    f"WITH c AS (SELECT 9 AS x, 'z' AS label) INSERT INTO {T} SELECT * FROM c",
    f"INSERT OVERWRITE {T} SELECT * FROM {T}",
    f"UPDATE {T} SET label = 'z'",
    f"MERGE INTO {T} t USING (SELECT 1 AS x) s ON t.x = s.x WHEN MATCHED THEN DELETE",
    f"TRUNCATE TABLE {T}",
    f"ALTER TABLE {T} ADD COLUMNS (y INT)",
    f"CREATE TABLE {DB}.other (x INT) USING delta",
    f"CREATE TABLE {DB}.copy USING delta AS SELECT * FROM {T}",
    f"CACHE TABLE {T}",
    f"REFRESH TABLE {T}",
    f"USE {DB}",
    "SET spark.sql.shuffle.partitions = 1",
    f"DROP DATABASE {DB} CASCADE",
    f"VACUUM {T}",
    f"OPTIMIZE {T}",
]
READ = [
    f"SELECT * FROM {T}",
    f"  select label from {T} where x = 1",
    f"WITH c AS (SELECT * FROM {T}) SELECT count(*) FROM c",
    f"SELECT * FROM {T} VERSION AS OF 1",
    f"TABLE {T}",
    "VALUES (1), (2)",
    f"SHOW TABLES IN {DB}",
    f"DESCRIBE TABLE {T}",
    f"DESCRIBE HISTORY {T}",
    f"EXPLAIN SELECT * FROM {T}",
    f"EXPLAIN DROP TABLE {T}",  # explained, never run
    f"SELECT * FROM {T} WHERE x IN (SELECT x FROM {T})",
]


@pytest.fixture(scope="module")
def table(spark):
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
    spark.sql(f"CREATE OR REPLACE TABLE {T} (x INT, label STRING) USING delta")
    spark.sql(f"INSERT INTO {T} VALUES (1, 'a'), (2, 'b')")
    yield T
    spark.sql(f"DROP DATABASE IF EXISTS {DB} CASCADE")


def _state(spark):
    rows = sorted(tuple(r) for r in spark.table(T).collect())
    version = spark.sql(f"DESCRIBE HISTORY {T}").agg({"version": "max"}).first()[0]
    return rows, version, sorted(t.name for t in spark.catalog.listTables(DB))


@pytest.mark.parametrize("statement", REFUSED)
def test_writes_are_refused_and_change_nothing(spark, table, statement):
    before = _state(spark)
    assert writing_node(spark, statement) is not None
    with pytest.raises(ReadOnlyRefused, match="only reads"):
        require_read_only(spark, statement)
    assert _state(spark) == before


@pytest.mark.parametrize("statement", READ)
def test_reads_pass(spark, table, statement):
    assert writing_node(spark, statement) is None
    require_read_only(spark, statement)  # nor beyond the catalogue
    spark.sql(statement).collect()


@pytest.mark.parametrize("statement", REFUSED)
def test_writes_are_refused_as_writes_not_as_paths(spark, table, statement):
    assert beyond_the_catalogue(spark, statement) is None


def test_the_command_exits_2_and_operators_can_write(spark, cfg, table, capsys):
    overrides = ["--set", f"storage.data_root={cfg.storage.data_root}"]
    before = _state(spark)
    assert sql.main([*overrides, f"DROP TABLE {T}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("catalogfs sql: refused:") and "--allow-writes" in err[0]
    assert _state(spark) == before
    assert sql.main([*overrides, f"SELECT label FROM {T} ORDER BY x"]) == 0
    assert "a" in capsys.readouterr().out
    assert sql.main([*overrides, "--allow-writes", f"INSERT INTO {T} VALUES (3, 'c')"]) == 0
    assert [r.label for r in spark.table(T).orderBy("x").collect()] == ["a", "b", "c"]
    assert sql.main([*overrides, "SELEC nonsense"]) == 4  # a parse error is the input's, as before


BEYOND = [
    ("SELECT TRANSFORM(1) USING 'touch {marker}' AS (x STRING)", "TRANSFORM"),
    ("SELECT reflect('java.lang.System', 'getProperty', 'user.name') AS u", "reflect"),
    (f"SELECT x FROM {T} WHERE EXISTS (SELECT java_method('java.lang.System', 'getenv', 'HOME'))", "reflect"),
    ("SELECT * FROM text.`/etc/hostname`", "files read by path"),
    ("SELECT * FROM text.`/no/such/file`", "files read by path"),
    ("SELECT * FROM json.`relative/path`", "files read by path"),
    ("SELECT * FROM IDENTIFIER('delta.`/tmp`')", "files read by path"),
]


@pytest.mark.parametrize("statement,what", BEYOND)
def test_what_reaches_beyond_the_catalogue_is_refused_before_analysis(spark, cfg, table, statement, what, tmp_path,
                                                                       capsys):
    """On the command's own driver: refused on the parsed plan (exit 2), so an existing and a missing
    path get the same answer, and TRANSFORM's command never runs."""
    marker = tmp_path / "touched"
    code = sql.main(["--set", f"storage.data_root={cfg.storage.data_root}", statement.format(marker=marker)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert what in err and "nothing was run" in err and "reaches beyond" in err
    assert "PATH_NOT_FOUND" not in err and "does not exist" not in err.lower()
    assert not marker.exists()
