"""``python -m catalogfs.jvm_warmup``: start a JVM the way a job does and run a small Delta workload
in a scratch data root (tables, MERGE, the change feed, history, a pandas UDF over Arrow), then
exit. Set-up runs it when the JDK and Spark installation has no class archive yet
(:mod:`catalogfs.class_archive`): the JVM writes the archive at exit, holding the classes the jobs
load, so the first real command does not pay for writing it."""


import atexit
import shutil
import sys
import tempfile
from pathlib import Path

from catalogfs.config import load_config

WORKLOAD = [
    "CREATE DATABASE IF NOT EXISTS warmup",
    "CREATE TABLE warmup.items (id BIGINT, name STRING, vector ARRAY<FLOAT>, payload BINARY) USING delta "
    "TBLPROPERTIES (delta.enableChangeDataFeed = true)",
    "INSERT INTO warmup.items VALUES (1, 'a', array(1.0, 2.0), X'00'), (2, 'b', array(3.0, 4.0), X'01')",
    "MERGE INTO warmup.items AS t USING (SELECT 2L AS id, 'c' AS name, array(5.0f, 6.0f) AS vector, "
    "X'02' AS payload UNION ALL SELECT 3L, 'd', array(7.0f, 8.0f), X'03') AS s ON t.id = s.id "
    "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
    "DELETE FROM warmup.items WHERE id = 1",
    "SELECT _change_type, count(*) FROM table_changes('warmup.items', 0) GROUP BY _change_type",
    "DESCRIBE HISTORY warmup.items",
    "CREATE OR REPLACE VIEW warmup.named AS SELECT id, name FROM warmup.items",
    "SELECT n.id, i.vector FROM warmup.named n JOIN warmup.items i ON n.id = i.id ORDER BY n.id",
    "SHOW TABLES IN warmup",
]


def run_workload(data_root: Path) -> None:
    """Start Spark on ``data_root`` (a scratch folder) and run :data:`WORKLOAD` and a pandas UDF."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    from catalogfs.spark import build_spark

    cfg = load_config(overrides=[f"storage.data_root={data_root}", "server.use=never"])
    spark = build_spark(cfg)
    for statement in WORKLOAD:
        spark.sql(statement).collect()

    @pandas_udf("double")  # type: ignore[call-overload]
    def total(vectors: pd.Series) -> pd.Series:
        return vectors.map(lambda vector: float(sum(vector)))  # (hints evaluated: no __future__ annotations here)

    spark.table("warmup.items").select("id", total("vector").alias("total")).collect()


if __name__ == "__main__":
    scratch = tempfile.mkdtemp(prefix="catalogfs-warmup-")
    atexit.register(shutil.rmtree, scratch, True)  # after the JVM has exited (atexit runs last in, first out)
    run_workload(Path(scratch) / "root")
    sys.exit(0)
