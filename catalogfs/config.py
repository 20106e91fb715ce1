"""Typed, frozen configuration loaded from the packaged ``catalogfs.conf`` YAML files.

Layering: ``base.yaml`` first, then each ``--conf FILE`` in order (a bare profile name such as
``local`` or ``databricks`` means the packaged ``<name>.yaml``), then ``--set key.path=value``
overrides. ``${VAR}`` and ``${VAR:-default}`` in string values are expanded from the environment.
Unknown keys and bad values are errors that name the file (or ``--set``) and the dotted key.
:func:`load_config` remembers where each key came from (:attr:`Config.origins`), which
``catalogfs config show`` prints.

Relative paths (``storage.data_root``, ``spark.ivy_cache``) resolve against the current working
directory. An empty data root (the default) means :func:`catalogfs.packaged.default_data_root`:
``data/`` in a checkout, a per-user folder when installed from the wheel.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catalogfs.errors import ConfigError
from catalogfs.packaged import conf_dir as packaged_conf_dir, default_data_root
from catalogfs.redaction import redact

DEFAULT_CONF_DIR = packaged_conf_dir()
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Section):
    data_root: Path = Field(description=(
        "Folder that holds everything written: warehouse, Derby catalog, staging, MLflow registry, reports, "
        "samples, indexes. Empty: data/ in a checkout, $XDG_DATA_HOME/catalogfs (~/.local/share/catalogfs) "
        "when installed; relative paths resolve against the working directory. Created 0700; jobs write "
        "files 0600 and folders 0700."))
    database: str = Field(description="Database (schema) of the published tables.")
    catalog: str = Field("", description="Catalog for three-part names (Unity Catalog); empty: the session's.")

    @field_validator("catalog")
    @classmethod
    def _catalog_identifier(cls, value: str) -> str:
        if value and not _IDENTIFIER.match(value):
            raise ValueError(f"must be a plain SQL identifier (letters, digits, _), got {value!r}")
        return value

    @field_validator("database")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"must be a plain SQL identifier (letters, digits, _), got {value!r}")
        return value

    @property
    def warehouse_dir(self) -> Path:
        return self.data_root / "warehouse"

    @property
    def metastore_dir(self) -> Path:
        return self.data_root / "metastore_db"

    @property
    def staging_dir(self) -> Path:
        return self.data_root / "staging"

    @property
    def reports_dir(self) -> Path:
        return self.data_root / "reports"

    @property
    def samples_dir(self) -> Path:
        return self.data_root / "samples"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_root / "cache" / "models"

    @property
    def indexes_dir(self) -> Path:
        """Where ANN index versions live: ``<indexes>/<space>/<level>/<index id>/`` (a shared file
        system on a cluster: executors write shards there)."""
        return self.data_root / "indexes"

    def table_path(self, table: str) -> Path:
        """Location of a published table: ``<warehouse>/<database>.db/<table>``."""
        return self.warehouse_dir / f"{self.database}.db" / table

    @property
    def schema_name(self) -> str:
        """``catalog.database`` or ``database``.

        Each part is checked again here (a ``model_copy`` skips the validators), so a name that is
        not a plain identifier never reaches SQL text.
        """
        for what, name in (("storage.catalog", self.catalog), ("storage.database", self.database)):
            if (name or what == "storage.database") and not _IDENTIFIER.match(name):
                raise ConfigError(f"{what} must be a plain SQL identifier (letters, digits, _), got {name!r}")
        return f"{self.catalog}.{self.database}" if self.catalog else self.database

    def qualified(self, table: str) -> str:
        """``[catalog.]database.table``; every part a plain identifier (else :class:`ConfigError`)."""
        if not _IDENTIFIER.match(table):
            raise ConfigError(f"table name must be a plain SQL identifier (letters, digits, _), got {table!r}")
        return f"{self.schema_name}.{table}"


class SparkConfig(_Section):
    managed: bool = Field(False, description="The platform owns the session (Databricks): use it as it is.")
    master: str = Field(description="Spark master when not started by spark-submit (which passes its own).")
    app_name: str = Field("catalogfs", description="Spark application name (spark.app.name) of the jobs' sessions.")
    ivy_cache: Path = Field(description=(
        "Ivy cache for the Delta jars resolved from Maven Central; set-up keeps them in local-jars/ inside it."))
    settings: dict[str, str] = Field(default_factory=dict, description="Extra spark.* settings.")
    class_archive: bool = Field(True, description=(
        "Start the JVM from a class-data archive of Spark's classes (the JDK's CDS), kept beside the "
        "Delta jars and written by the first command of a JDK and Spark installation: each start "
        "costs about a third less CPU. Not under spark-submit or a managed platform."))

    @field_validator("settings", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        return value


class MlflowConfig(_Section):
    tracking_uri: str = Field("", description="Empty: sqlite:///<data_root>/mlflow.db.")
    experiment: str = Field("catalogfs", description=(
        "MLflow experiment of the job runs (params, counts, validation reports); made on first use."))


class SamplesConfig(_Section):
    seconds: float = Field(4.0, gt=0, le=60, description="Length of each sample video (`catalogfs make-samples`).")
    fps: int = Field(24, ge=1, le=60, description="Frame rate of the sample videos.")
    width: int = Field(640, ge=32, le=3840, description="Width of the sample videos in pixels.")
    height: int = Field(360, ge=32, le=2160, description="Height of the sample videos in pixels.")


class ExtractConfig(_Section):
    input: str = Field("", description="Folder or glob of videos; empty means <data_root>/samples.")
    extensions: tuple[str, ...] = Field(
        (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"), min_length=1, description=(
            "File extensions taken from an input folder or glob (default: features.video_frames."
            "VIDEO_EXTENSIONS); other files are skipped and counted."))
    sample_fps: float = Field(1.0, gt=0, le=60, description="Frames kept per second of video.")
    max_side: int = Field(640, ge=16, le=8192, description="Longest side of the stored JPEG.")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of the stored frames.")
    max_frames_per_video: int = Field(3600, ge=1, description=(
        "Most frames kept per video: extraction stops there and the rest of the video is not read."))
    max_video_pixels: int = Field(7680 * 4320, ge=1, description=(
        "A video whose stream declares larger frames (width*height; default 8K, 7680x4320) is not decoded: "
        "status video_too_large."))
    max_video_seconds: float = Field(6 * 3600.0, gt=0, description=(
        "A video that declares a longer duration (seconds; default 6 h) is not decoded: status video_too_long."))

    @field_validator("extensions")
    @classmethod
    def _extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """``MP4``, ``.mp4`` → ``.mp4``; each one extension (no folder, no second dot), no repeats."""
        out: list[str] = []
        for raw in value:
            ext = "." + raw.strip().lower().lstrip(".")
            if ext == "." or "." in ext[1:] or any(c in ext for c in "/\\*?[ ") or not ext.isprintable():
                raise ValueError(f"each must be one extension like .mp4, got {raw!r}")
            if ext not in out:
                out.append(ext)
        return tuple(out)


class ModelConfig(_Section):
    name: str = Field(description="Registered model name in the MLflow registry.")
    alias: str = Field("champion", description=(
        "Alias of the serving model version (models:/<name>@<alias>): what the scheduled embed "
        "maintains and the current_* views select; `spaces promote` and `models promote` move it."))
    register_default: bool = Field(True, description="Register the bundled default model when absent.")

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


class InferenceConfig(_Section):
    """How the engine runs: the one description of :class:`udfs.engine.EngineOptions`, which
    ``EngineOptions.from_config`` builds from this section, each option from the field of its name."""

    batch_size: int = Field(32, ge=1, le=4096, description=(
        "Frames per forward pass (a batch is also cut by max_batch_bytes)."))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description=(
        "auto: CUDA when torch sees a device, else CPU; cuda without a device is an error."))
    num_threads: int = Field(1, ge=1, le=256, description="torch threads per Python worker.")
    top_k: int = Field(5, ge=1, le=100, description="Labels kept per frame.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Decompression-bomb limit (width*height).")
    max_batch_bytes: int = Field(256 * 1024 * 1024, ge=0, description=(
        "A batch is also cut before its preprocessed float32 tensor would exceed this many bytes "
        "(large inputs, e.g. 518 px models); 0: batch_size alone decides."))
    gpu_decode: Literal["auto", "off"] = Field("auto", description=(
        "auto: on CUDA, JPEG frames are decoded and preprocessed on the GPU (torchvision), falling "
        "back to PIL per frame; off: always PIL. Never used on CPU."))
    runtime: Literal["auto", "torch", "onnxruntime"] = Field("auto", description=(
        "auto: on CPU, ONNX Runtime for model families that export exactly (EfficientNet-Lite0; "
        "outputs checked against PyTorch when loaded), PyTorch otherwise; torch: always PyTorch; "
        "onnxruntime: required (CPU only)."))

    @field_validator("gpu_decode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` as false (and ``on`` as true)."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class LabelsConfig(_Section):
    top_k_per_video: int = Field(5, ge=1, le=100, description="Labels kept per video (video_labels rows).")


class ValidationConfig(_Section):
    norm_tolerance: float = Field(1e-3, gt=0, lt=1, description=(
        "The publish gate: every ok vector's norm must lie within this of 1."))
    max_reject_rate: float = Field(0.5, ge=0, le=1, description=(
        "Largest share of a run's new frames that may fail in the pipeline itself (inference errors, a "
        "broken model); bad input does not count here."))
    max_input_reject_rate: float = Field(0.5, ge=0, le=1, description=(
        "Largest share of the space's frame rows, after the publish, that may be bad input (truncated or "
        "unreadable uploads, frames that are not images)."))
    max_input_rejects_per_run: int = Field(0, ge=0, description=(
        "Largest number of bad-input frames one run may publish; 0: no limit."))
    drift_min_cosine: float = Field(0.8, ge=-1, le=1, description="Cosine to the published vector of the same frame.")
    drift_min_share: float = Field(0.95, ge=0, le=1, description="Share of frames that must meet drift_min_cosine.")
    max_label_shift: float = Field(0.5, ge=0, le=1, description="Total variation distance of top-1 labels.")
    driver_max_rows: int = Field(200_000, ge=0, description=(
        "Candidate sets up to this many rows are validated on the driver (their tested columns "
        "collected, GE's pandas engine); larger ones by Spark. 0: always Spark."))


class RetentionConfig(_Section):
    keep_versions: int = Field(20, ge=1, description="Newest table versions kept readable by `catalogfs maintain`.")
    log_retention_days: int = Field(30, ge=1, description="delta.logRetentionDuration of new tables.")


class PublishConfig(_Section):
    max_attempts: int = Field(3, ge=1, le=20, description=(
        "Tries of a publish that lost a Delta commit race to a concurrent publisher."))
    retry_backoff_seconds: float = Field(2.0, ge=0, le=600, description="Wait before the first retry; doubles.")
    sync_history: bool = Field(True, description=(
        "Bring video_embeddings_history up to date after each publish (2-4 s per publishing run on 2 "
        "cores). Off: SQL readers of the history table see it as of the last `catalogfs training-set` "
        "or `catalogfs maintain` (both sync first); run maintain within delta.logRetentionDuration."))


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class IndexConfig(_Section):
    """Approximate nearest-neighbour indexes per space (``catalogfs index build``)."""

    kind: Literal["auto", "ivf_flat", "flat"] = Field("auto", description=(
        "faiss index: ivf_flat (inverted lists of full vectors), flat (exact), auto (flat below "
        "flat_below vectors, else ivf_flat)."))
    flat_below: int = Field(20_000, ge=0, description="auto: spaces smaller than this get an exact flat index.")
    nlist: int = Field(0, ge=0, description="Inverted lists of an IVF index; 0: about 4 * sqrt(vectors).")
    min_recall: float = Field(0.95, gt=0, le=1, description=(
        "An index becomes current only if its mean recall@k against exact search on the held-back "
        "queries reaches this (a Great Expectations expectation)."))
    recall_margin: float = Field(0.01, ge=0, le=0.5, description=(
        "nprobe is chosen on half of the queries to reach min_recall plus this; the other half is the "
        "gate (a margin against the sampling error of the chosen half)."))
    max_nprobe: int = Field(0, ge=0, description=(
        "Most inverted lists a query may search (its latency budget); 0: up to all of them."))
    k: int = Field(10, ge=1, le=1000, description="k of the recall check.")
    queries: int = Field(1000, ge=1, le=100_000, description="Queries sampled (by hash, the same each build) for the recall check.")
    shard_rows: int = Field(250_000, ge=1, description="Vectors per shard of the Spark build (one task each).")
    train_rows: int = Field(100_000, ge=1, description="Most vectors sampled to train the IVF coarse quantizer.")
    rebuild_drift: float = Field(0.25, ge=0, description=(
        "An incremental build adds changed vectors to the current index until the vectors added since "
        "its quantizer was trained exceed this share of those it was trained on; then it rebuilds."))
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description=(
        "Where the IVF quantizer's k-means runs: auto (the GPUs when faiss sees one, i.e. a faiss GPU "
        "build on a GPU driver), cpu, gpu (an error without one)."))
    keep_versions: int = Field(3, ge=1, description=(
        "Index versions kept per space and level by `catalogfs maintain` (the current one is always kept)."))


class TlsConfig(_Section):
    """TLS of ``catalogfs serve``'s JDBC endpoint (PEM files; both or neither)."""

    cert_file: str = Field("", description="PEM certificate (chain) the JDBC endpoint presents; empty: no TLS.")
    key_file: str = Field("", description="PEM private key of cert_file (unencrypted; keep it 0600).")

    @model_validator(mode="after")
    def _both_or_neither(self) -> "TlsConfig":
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("server.tls needs both cert_file and key_file (or neither)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


class ServerConfig(_Section):
    """``catalogfs serve``: one driver that owns the data root's catalogue and serves it over Spark
    Connect (jobs, trusted clients) and HiveServer2 JDBC (SQL tools) on this machine."""

    bind_host: str = Field("127.0.0.1", min_length=1, description=(
        "Address the JDBC endpoint listens on. A non-loopback address needs jdbc_auth: password and "
        "server.tls (the server refuses to start otherwise): passwords must not cross a network in the clear."))
    connect_bind_host: str = Field("127.0.0.1", min_length=1, description=(
        "Address the Spark Connect endpoint listens on: loopback only. Spark 4.2's Connect server has no "
        "TLS, so its token would cross a network in the clear; reach it from another host through an "
        "SSH tunnel or a TLS proxy on this host."))
    connect_port: int = Field(15002, ge=1, le=65535, description="Spark Connect (gRPC) port.")
    jdbc_port: int = Field(10000, ge=1, le=65535, description="HiveServer2 (JDBC, Thrift binary) port.")
    jdbc_read_only: bool = Field(True, description=(
        "The JDBC endpoint refuses statements that would change the catalogue (DDL, DML, CACHE, ADD JAR, "
        "CREATE FUNCTION …; SELECT, SHOW, DESCRIBE, EXPLAIN, SET and USE pass). Whatever this says, it "
        "refuses TRANSFORM, reflect, files read by path and settings outside its allow-list "
        "(catalogfs/jdbc_guard.py). false: users with the operator role may write over JDBC (readers "
        "never). Spark Connect clients, who hold the token, may still write."))
    jdbc_auth: Literal["password", "none"] = Field("password", description=(
        "How JDBC clients log in: password (a user and password from users_file; each user is a reader "
        "or an operator) or none (anyone who reaches the port reads, as a reader; loopback only)."))
    users_file: str = Field("", description=(
        "The JDBC users file (mode 0600; `catalogfs serve-users add NAME --role reader|operator`). "
        "Empty: <data_root>/serve-users. The first start with none makes one with a reader 'reader' "
        "whose random password is kept in the server record (serve.json, 0600; serve --status "
        "--show-token prints it)."))
    tls: TlsConfig = TlsConfig()
    query_timeout_seconds: float = Field(600.0, ge=0, le=86400, description=(
        "A JDBC statement still running after this long is cancelled (its tasks are interrupted), so "
        "one query cannot hold the server's task slots for ever. 0: no limit."))
    token: str = Field("", description=(
        "Pre-shared token that Spark Connect clients must present (sc://localhost:<port>/;token=…). "
        "Empty: a random one is generated at each start and kept in the server record "
        "(<data_root>/serve.json, mode 0600)."))
    use: Literal["auto", "always", "never"] = Field("auto", description=(
        "Whether jobs and commands go through the data root's running server: auto (when one is "
        "running, else their own Spark driver), always (exit 6 when none runs), never (their own "
        "driver; exit 7 while a server holds the catalogue)."))
    start_timeout_seconds: float = Field(300.0, gt=0, le=3600, description=(
        "How long `catalogfs serve --detach` waits for the server to be ready (Spark, both "
        "endpoints, warm-up query) before it gives up and stops it."))
    # The supervisor of `catalogfs serve --detach` (catalogfs/supervisor.py) restarts a server that
    # died (its JVM ran out of memory, was killed …) after a back-off, and gives up on a crash loop.
    restart_max_attempts: int = Field(5, ge=0, le=1000, description=(
        "How many restarts the supervisor of `serve --detach` makes within restart_window_seconds; the "
        "next failure in the window gives up (it logs it and leaves state gave_up in "
        "<data_root>/serve-supervisor.json). 0: never restart."))
    restart_window_seconds: float = Field(600.0, gt=0, le=86400, description=(
        "The window in which failures count, for the back-off and for restart_max_attempts: a server "
        "that stayed up this long starts over at the first delay."))
    restart_backoff_seconds: float = Field(1.0, gt=0, le=3600, description=(
        "Delay before the first restart; it doubles with each further failure in the window."))
    restart_max_backoff_seconds: float = Field(60.0, gt=0, le=3600, description=(
        "The longest delay between restarts (the doubling stops there; never below "
        "restart_backoff_seconds)."))

    @field_validator("token")
    @classmethod
    def _token_chars(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", value):
            raise ValueError("must be letters, digits and . _ ~ + / = - only (it goes into a URL)")
        return value

    @property
    def loopback(self) -> bool:
        """True when the JDBC endpoint listens on loopback only."""
        return _is_loopback(self.bind_host)

    @property
    def connect_loopback(self) -> bool:
        return _is_loopback(self.connect_bind_host)


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK or host.startswith("127.")


class Config(_Section):
    """The whole configuration of one run."""

    storage: StorageConfig
    spark: SparkConfig
    mlflow: MlflowConfig
    samples: SamplesConfig
    extract: ExtractConfig
    model: ModelConfig
    inference: InferenceConfig
    labels: LabelsConfig
    validation: ValidationConfig
    retention: RetentionConfig
    publish: PublishConfig = PublishConfig()
    server: ServerConfig = ServerConfig()
    index: IndexConfig = IndexConfig()
    sources: tuple[str, ...] = Field(default=(), description="Files the config was read from.")
    origins: dict[str, str] = Field(default_factory=dict, exclude=True, description=(
        "Dotted key → where its value came from (file, environment, --set, default); see origin_of."))

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.storage.data_root / 'mlflow.db'}"

    @property
    def input_pattern(self) -> str:
        return self.extract.input or str(self.storage.samples_dir)


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):
        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is None or (found == "" and default is not None):
                if default is None:
                    raise KeyError(name)
                return default
            return found

        return _ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def _merge(target: dict[str, Any], source: Mapping[str, Any], origin: str,
           origins: dict[str, str], prefix: str = "") -> None:
    """Deep-merge ``source`` into ``target``, remembering which file set each dotted key."""
    for key, value in source.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(target.get(key), dict) and dotted != "spark.settings":
            _merge(target[key], value, origin, origins, dotted + ".")
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            target[key] = {**target[key], **value}
            for sub in value:
                origins[f"{dotted}.{sub}"] = origin
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value
            if isinstance(value, Mapping):  # a new section: each key under it comes from here too
                _record_leaves(value, origin, origins, dotted)
        origins[dotted] = origin


def _record_leaves(node: Mapping[str, Any], origin: str, origins: dict[str, str], prefix: str) -> None:
    for key, value in node.items():
        dotted = f"{prefix}.{key}"
        origins[dotted] = origin
        if isinstance(value, Mapping) and dotted != "spark.settings":
            _record_leaves(value, origin, origins, dotted)
        elif isinstance(value, Mapping):
            for sub in value:
                origins[f"{dotted}.{sub}"] = origin


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:  # one line: where, and what (never the offending text itself)
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return _expand_env(data)
    except KeyError as exc:
        raise ConfigError(f"{path}: environment variable {exc.args[0]} is not set (no default given)") from exc


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` → (``a.b``, YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    if dotted.startswith("spark.settings."):
        return {"spark": {"settings": {dotted[len("spark.settings."):]: value}}}
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _resolve_path(value: Path) -> Path:
    expanded = Path(os.path.expanduser(str(value)))
    return expanded if expanded.is_absolute() else (Path.cwd() / expanded).resolve()


def profile_path(name: str | Path, conf_dir: Path | None = None) -> Path:
    """``--conf`` argument → file: a bare name (``local``, ``databricks.yaml``) is a packaged profile,
    anything else (a path with a folder, or an existing file) is taken as it is."""
    text = str(name)
    if os.sep in text or "/" in text or Path(text).exists():
        return Path(text)
    folder = conf_dir or DEFAULT_CONF_DIR
    candidate = folder / (text if text.endswith((".yaml", ".yml")) else f"{text}.yaml")
    if not candidate.exists():
        profiles = sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "base")
        raise ConfigError(f"--conf {text}: no such file, and no packaged profile of that name "
                          f"(profiles: {', '.join(profiles)})")
    return candidate


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                *, conf_dir: Path | None = None) -> Config:
    """Load ``base.yaml`` + ``paths`` + ``overrides`` into a frozen :class:`Config`.

    Raises :class:`ConfigError` naming the file and dotted key of the first problem.
    """
    chosen = [profile_path(p, conf_dir) for p in paths]
    if conf_dir is None:  # base.yaml beside the first file given, else the packaged one
        beside = chosen[0].parent if chosen else None
        conf_dir = beside if beside is not None and (beside / "base.yaml").exists() else DEFAULT_CONF_DIR
    base = conf_dir / "base.yaml"
    files = [base] + [p for p in chosen if p.resolve() != base.resolve()]
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for path in files:
        data = _read_yaml(path)
        _merge(merged, data, str(path), origins)
        for dotted, names in _env_references(path).items():  # set from the environment through the file
            if dotted in origins and origins[dotted] == str(path) and any(n in os.environ for n in names):
                origins[dotted] = f"environment {', '.join(names)} (in {path})"
    for text in overrides:
        key, value = parse_override(text)
        _merge(merged, _expand_env(_nest(key, value)), f"--set {key}", origins)
    merged["sources"] = tuple(str(p) for p in files)
    storage_section = merged.get("storage")
    if isinstance(storage_section, dict) and not storage_section.get("data_root"):  # empty: the default
        storage_section["data_root"] = str(default_data_root())
        origins["storage.data_root"] = "default (data/ in a checkout, else the per-user data folder)"
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            dotted = ".".join(str(p) for p in err["loc"])
            origin = _origin_of(dotted, origins, str(files[-1]))
            if err["type"] == "extra_forbidden":
                problems.append(f"{origin}: unknown key '{dotted}'")
            elif err["type"] == "missing":
                problems.append(f"{origin}: missing key '{dotted}'")
            else:
                shown = redact(err.get("input"), dotted)  # never echo a password in an error
                problems.append(f"{origin}: bad value for '{dotted}': {err['msg']} (got {shown!r})")
        raise ConfigError("; ".join(problems)) from None
    storage = cfg.storage.model_copy(update={"data_root": _resolve_path(cfg.storage.data_root)})
    spark = cfg.spark.model_copy(update={"ivy_cache": _resolve_path(cfg.spark.ivy_cache)})
    return cfg.model_copy(update={"storage": storage, "spark": spark, "origins": dict(origins)})


def _env_references(path: Path) -> dict[str, list[str]]:
    """Dotted key → the environment variables its raw value in ``path`` refers to (``${VAR…}``)."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    found: dict[str, list[str]] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
        elif isinstance(node, str):
            names = [m.group(1) for m in _ENV_REF.finditer(node)]
            if names:
                found[prefix] = names

    walk(raw, "")
    return found


def origin_of(cfg: "Config", dotted: str) -> str:
    """Where the value of ``dotted`` came from: a file, ``--set``, the environment, or the default."""
    return _origin_of(dotted, cfg.origins, "default (the config model)")


def _origin_of(dotted: str, origins: Mapping[str, str], fallback: str) -> str:
    key = dotted
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0]
    return fallback
