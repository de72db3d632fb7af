"""The settings: `XLING_*` environment variables and `.env`, one class per section, one `Settings` over them all."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from xling.models.index.fusion import Fusion, SearchMode


def parse_addresses(value: str) -> list[tuple[str, int]]:
    """"host:port,host:port" as [(host, port), ...]; an IPv6 host goes in brackets ("[::1]:26379")."""
    addresses = []
    for item in (part.strip() for part in value.split(",")):
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not host:port: {item!r} (in {value!r})")
        addresses.append((host, int(port)))
    return addresses


# The settings in sections, one class each (a reader finds a setting by its subject; the configuration reference
# follows them); `Settings` inherits them all, so every name is one flat `XLING_<NAME>` variable as before.


class StateSettings(BaseModel):
    """Where state lives: Redis (one server or Sentinels), the data folder, the key namespace."""

    redis_url: str | None = Field(None, description="Redis to use; unset = `xling serve` starts an embedded one")
    redis_sentinels: str | None = Field(
        None, description="host:port,host:port of Sentinels that name the master (instead of XLING_REDIS_URL)"
    )
    redis_master_name: str = Field("xling", description="with Sentinels: the name they monitor the master by")
    redis_password: SecretStr | None = Field(
        None, description="with Sentinels: the master's and replicas' password (with a URL, it goes in the URL)"
    )
    redis_wait_replicas: int = Field(
        1, ge=0, description="a document write is acknowledged once this many replicas hold it (WAIT), or all the "
        "master has if fewer; 0 = never wait"
    )
    redis_wait_timeout_ms: int = Field(
        2_000, ge=1, description="how long a write waits for its replicas before it is answered 503"
    )
    data_dir: Path = Field(Path("./data"), description="models/, indexes/, datasets/, reports/, redis/")
    key_prefix: str = Field("xling", description="namespace of every Redis key")


class ModelSettings(BaseModel):
    """The served encoder and how it encodes."""

    retrieval_model: str | None = Field(None, description="registry version, folder or hub id; unset = default")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    encode_batch_size: int = Field(256, ge=1, le=4096, description="most texts per encoder forward")
    encode_batch_tokens: int | None = Field(
        None, ge=64, description="padded tokens per encoder forward; unset = 1024 on CPU, 32768 on GPU"
    )
    max_seq_length: int | None = Field(None, ge=8, le=8192, description="cap on tokens per text")
    encoder_precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="CPU encoder arithmetic; auto = bf16 where the CPU has it natively, else fp32 (GPU: bf16/fp16)",
    )


class IndexSettings(BaseModel):
    """The vector index (DESIGN §3; a snapshot records its build parameters, which must match these) and Qdrant."""

    index: Literal["flat", "hnsw", "qdrant"] = Field(
        "flat", description="flat = exact search; hnsw = approximate graph search, for large corpora; qdrant = a "
        "Qdrant collection per model version (XLING_QDRANT_URL or XLING_QDRANT_PATH; README)"
    )
    hnsw_m: int = Field(32, ge=4, le=128, description="hnsw: graph links per document")
    hnsw_ef_construction: int = Field(80, ge=8, le=4096, description="hnsw: candidate list while inserting")
    hnsw_ef_search: int = Field(
        256, ge=8, le=4096, description="hnsw: candidate list per query; higher finds more of the true top-k, slower"
    )
    hnsw_exact_filter_max: int = Field(
        20_000, ge=0, description="hnsw: a filter matching at most this many documents is served by an exact scan"
    )

    qdrant_url: str | None = Field(None, description="qdrant: the server, e.g. http://qdrant:6333")
    qdrant_api_key: SecretStr | None = Field(None, description="qdrant: the server's API key")
    qdrant_path: Path | None = Field(
        None, description="qdrant: a folder for the client's embedded local mode (trials and tests; one process)"
    )
    qdrant_on_disk: bool = Field(False, description="qdrant: vectors and payload on disk, int8 copies in RAM")
    qdrant_writer_lease_s: float = Field(
        10.0, gt=0, description="qdrant: one api replica writes the log into a collection; another takes over this "
        "long after it stops renewing"
    )
    qdrant_drop_after_s: float = Field(
        60.0, ge=0, description="qdrant: a collection replaced by a rebuild is dropped this long after"
    )
    qdrant_sweep_after_s: float = Field(
        86_400.0, gt=0, description="qdrant: a collection of this deployment that no build recorded (its build "
        "crashed) is dropped once it is this old; longer than the longest build"
    )


class SecuritySettings(BaseModel):
    """Bearer keys."""

    api_key: SecretStr | None = Field(None, description="Bearer key for writes, jobs and activation")
    search_api_key: SecretStr | None = Field(None, description="Bearer key for search (unset = open)")


class LimitSettings(BaseModel):
    """What one request may ask."""

    max_query_chars: int = Field(2_000, ge=1)
    max_k: int = Field(100, ge=1, le=10_000)
    max_docs_per_request: int = Field(1_000, ge=1)
    max_text_chars: int = Field(20_000, ge=1)
    max_metadata_bytes: int = Field(2_048, ge=2)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="dataset uploads (POST /datasets)")
    max_unpacked_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=1024, description="a zip upload's members, unpacked, together"
    )
    max_zip_ratio: float = Field(
        100.0, ge=1, description="a zip member may unpack to at most this many times its compressed size"
    )
    max_langs_per_query: int = Field(32, ge=1)


class BatchingSettings(BaseModel):
    """Search micro-batching, and the memory that query batches of many shapes would otherwise hold
    (bench/RESULTS.md, memory soak)."""

    batch_max_size: int = Field(64, ge=1, le=4096)
    batch_max_wait_ms: float = Field(2.0, ge=0, le=1_000)
    search_queue_max: int = Field(1_024, ge=1, description="queued queries beyond this get 429")

    # Memory: every query batch has its own shape (rows x tokens), and without these the api's memory grows with
    # the shapes it has seen (bench/RESULTS.md, memory soak).
    kernel_cache_capacity: int = Field(
        64, ge=0, description="oneDNN kernels kept for reuse (its default, 1024, holds ~0.5 GB of bf16 kernels)"
    )
    memory_trim_interval_s: float = Field(
        5.0, ge=0, description="how often the api hands freed heap memory back to the system (0: never)"
    )


class CenteringSettings(BaseModel):
    """Centring: per-language bias removal (state/centering.py, README "Centring")."""

    centering: bool = Field(True, description="centre documents and queries on their language's mean (off: raw)")
    centering_min_docs: int = Field(
        10, ge=1, description="documents a language needs for a mean of its own (fewer: the fallback mean)"
    )
    centering_sample_per_lang: int = Field(
        1_000, ge=1, description="documents per language a calibration encodes for the means"
    )
    centering_drift_threshold: float = Field(
        0.05, gt=0, description="recalibrate when a language's mean would move by more than this share of its length"
    )
    centering_requeue_s: int = Field(
        600, ge=1, description="at most one automatic recalibration job per version within this many seconds"
    )


class LexicalSettings(BaseModel):
    """The lexical index, where documents live, and fusion (models/index/lexical.py, models/index/fusion.py; README
    "Lexical and hybrid search")."""

    lexical: bool = Field(True, description="keep a BM25 index beside the vector index (off: only mode=dense works)")
    search_mode: SearchMode = Field(
        "hybrid", description="the mode of a search that names none (README: why hybrid)"
    )
    lexical_engine: Literal["auto", "replica", "qdrant", "tantivy"] = Field(
        "auto", description="where BM25 lives: replica = an index in each api replica's memory (journaled to "
        "XLING_LEXICAL_DIR); qdrant = sparse vectors in the Qdrant collection (needs XLING_INDEX=qdrant); auto = "
        "qdrant with XLING_INDEX=qdrant, else replica; tantivy = the former name of replica"
    )
    document_store: Literal["redis", "qdrant"] = Field(
        "redis", description="where documents are kept: redis = a hash beside the doc log; qdrant = only the payload "
        "of the serving Qdrant collection, each log entry carrying its document (needs XLING_INDEX=qdrant; one-way: "
        "README, 'Documents in Qdrant')"
    )
    fusion: Literal["weighted", "rrf"] = Field(
        "weighted", description="hybrid: cosine + weight x max-normalised BM25, or reciprocal-rank fusion"
    )
    fusion_weight: float = Field(0.055, ge=0, le=10, description="weighted fusion: the BM25 share")
    fusion_normalise: Literal["query", "language"] = Field(
        "language", description="weighted fusion: BM25 over the query's best in each language, or overall"
    )
    fusion_rrf_k: int = Field(60, ge=1, description="rrf: the rank offset k in 1 / (k + rank)")
    fusion_window: int = Field(100, ge=1, le=10_000, description="rrf: the depth of each ranking that counts")


class WriteSettings(BaseModel):
    """The write path."""

    write_timeout_s: float = Field(30.0, gt=0, description="read-your-writes deadline; 503 past it")
    applier_batch: int = Field(512, ge=1, description="log entries applied (and encoded) together")
    snapshot_every_entries: int = Field(10_000, ge=1)
    snapshot_interval_s: float = Field(300.0, gt=0)


class JobSettings(BaseModel):
    """Jobs, workers, hot swap and the doc log's retention."""

    heartbeat_interval_s: float = Field(2.0, gt=0, description="how often a running job beats")
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="a running job silent this long is failed: worker lost")
    job_stall_timeout_s: float = Field(
        3600.0, ge=0, description="a running job whose progress has not advanced for this long (its worker alive "
        "but the job stuck) is failed with the reason; 0: never"
    )
    sweep_interval_s: float = Field(5.0, gt=0, description="how often the api looks for lost jobs")
    swap_poll_s: float = Field(1.0, gt=0, description="how often the api checks which model should serve")
    allow_hub_models: bool = Field(True, description="jobs may name hub ids as base models")
    start_worker: bool = Field(True, description="xling serve with embedded Redis also runs a worker")
    worker_nice: int = Field(
        10, ge=0, le=19, description="the worker lowers its CPU priority by this much, so serving wins shared cores"
    )
    reindex_ranges: int = Field(
        8, ge=1, le=10_000, description="a reindex is split into this many ranges, encoded by any worker of the queue"
    )
    reindex_lease_s: float = Field(
        30.0, gt=0, description="a range whose worker's lease thread has not renewed it for this long (the worker "
        "died or was stopped) is finished by another"
    )
    train_processes: int = Field(
        0, ge=0, le=64, description="a finetune job trains on this many devices at once (torch.distributed, one "
        "process each); 0 = every GPU of the worker's node, one process without GPUs"
    )
    log_trim_interval_s: float = Field(10.0, gt=0, description="how often an api trims the doc log behind all holds")
    log_hold_ttl_s: float = Field(
        120.0, gt=0, description="a replica's hold on the doc log lapses this long after it stops refreshing it"
    )
    log_swap_grace_s: float = Field(
        600.0, gt=0, description="a reindex job keeps the log from its offset this long, for replicas to swap"
    )
    embedded_redis_fsync: Literal["always", "everysec"] = Field(
        "always", description="embedded Redis: fsync the AOF before acknowledging a write (always) or once a second"
    )


class LogSettings(BaseModel):
    """Logging."""

    log_level: str = "INFO"
    log_json: bool = True


SECTIONS: tuple[type[BaseModel], ...] = (
    StateSettings, ModelSettings, IndexSettings, SecuritySettings, LimitSettings, BatchingSettings,
    CenteringSettings, LexicalSettings, WriteSettings, JobSettings, LogSettings,
)


class Settings(
    StateSettings, ModelSettings, IndexSettings, SecuritySettings, LimitSettings, BatchingSettings,
    CenteringSettings, LexicalSettings, WriteSettings, JobSettings, LogSettings, BaseSettings,
):
    model_config = SettingsConfigDict(env_prefix="XLING_", env_file=".env", extra="ignore")

    @model_validator(mode="after")
    def _heartbeat_fits_timeout(self) -> Settings:
        if self.heartbeat_timeout_s <= 2 * self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must exceed twice heartbeat_interval_s, or live jobs look lost")
        if self.log_hold_ttl_s <= 2 * self.log_trim_interval_s:
            raise ValueError("log_hold_ttl_s must exceed twice log_trim_interval_s, or live replicas lose their hold")
        return self

    @field_validator("redis_url", "redis_sentinels", "qdrant_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty variable means none (docker/distributed.env empties XLING_REDIS_URL for the Sentinels).
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_shape(cls, value: str | None) -> str | None:
        if value is not None:
            parse_addresses(value)  # raises on a malformed list
        return value

    @model_validator(mode="after")
    def _one_redis(self) -> Settings:
        if self.redis_url is not None and self.redis_sentinels is not None:
            raise ValueError("set XLING_REDIS_URL or XLING_REDIS_SENTINELS, not both")
        return self

    @model_validator(mode="after")
    def _one_qdrant(self) -> Settings:
        if self.index == "qdrant" and (self.qdrant_url is None) == (self.qdrant_path is None):
            raise ValueError("XLING_INDEX=qdrant needs XLING_QDRANT_URL (a server) or XLING_QDRANT_PATH (local "
                             "mode), one of them")
        return self

    @model_validator(mode="after")
    def _qdrant_options_need_qdrant(self) -> Settings:
        for name, value in (("lexical_engine", self.lexical_engine), ("document_store", self.document_store)):
            if value == "qdrant" and self.index != "qdrant":
                raise ValueError(f"XLING_{name.upper()}=qdrant needs XLING_INDEX=qdrant")
        return self

    @property
    def documents_in_qdrant(self) -> bool:
        """Documents live in the serving collection's payload, and log entries carry them (no Redis hash)."""
        return self.document_store == "qdrant"

    @property
    def lexical_in_qdrant(self) -> bool:
        """BM25 is served from the Qdrant collections' sparse vectors, not from an index in each replica."""
        return self.lexical and self.index == "qdrant" and self.lexical_engine not in ("replica", "tantivy")

    @property
    def lexical_per_replica(self) -> bool:
        return self.lexical and not self.lexical_in_qdrant

    @property
    def memory_index_kind(self) -> Literal["flat", "hnsw"]:
        """The kind of an index held in memory: XLING_INDEX's, or flat where the index lives in Qdrant (a worker's
        transient build before it is copied into a collection)."""
        return "flat" if self.index == "qdrant" else self.index

    @property
    def qdrant_local(self) -> bool:
        """The client's embedded local mode: the api process owns the collections (no other process may open
        the folder), so the worker leaves collection building to it."""
        return self.index == "qdrant" and self.qdrant_path is not None

    @property
    def redis_configured(self) -> bool:
        """A Redis was named (a URL or Sentinels); unset, `xling serve` starts an embedded one."""
        return self.redis_url is not None or self.redis_sentinels is not None

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return parse_addresses(self.redis_sentinels) if self.redis_sentinels else []

    @field_validator("key_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
            raise ValueError("key_prefix must be 1-64 letters, digits, '_', '.', '-'")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _no_empty_keys(self) -> Settings:
        # An empty key would make "guarded" routes accept `Authorization: Bearer ` from anyone.
        for name in ("api_key", "search_api_key"):
            key = getattr(self, name)
            if key is not None and not key.get_secret_value().strip():
                raise ValueError(f"XLING_{name.upper()} is set but empty")
        return self

    @cached_property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @cached_property
    def indexes_dir(self) -> Path:
        return self.data_dir / "indexes"

    def fusion_config(self, method: str | None = None, weight: float | None = None) -> Fusion:
        """How hybrid search fuses, from the settings; `method` and `weight` override them (the CLI's options)."""
        return Fusion(
            method or self.fusion,  # type: ignore[arg-type]  # Fusion refuses an unknown name
            self.fusion_weight if weight is None else weight, self.fusion_rrf_k, self.fusion_window,
            self.fusion_normalise,
        )

    @cached_property
    def lexical_dir(self) -> Path:
        return self.indexes_dir / "lexical"

    @cached_property
    def jobs_dir(self) -> Path:
        """Per job, the files of its training ranks when it trains on several devices (worker/ranked_finetune.py)."""
        return self.data_dir / "jobs"

    @cached_property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @cached_property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @cached_property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"
