"""Request and response bodies. Shapes are checked here; size limits from settings in `limits.py`."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

from xling.models.adapters.config import AdapterConfig
from xling.models.index.fusion import SearchMode
from xling.models.training.config import TrainConfig


class FieldError(BaseModel):
    field: str = Field(description="e.g. documents[0].id, or k for a query parameter")
    message: str


class ErrorOut(BaseModel):
    """Every error response has this shape."""

    detail: str = Field(description="one readable sentence")
    code: str = Field(description="invalid_input, not_found, conflict, unauthorized, store_unavailable, ...")
    errors: list[FieldError] = Field(default_factory=list, description="one entry per invalid field")


# Ids appear in URLs (`DELETE /index/{id}`), so no '/', whitespace or '?#%'.
DOC_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._:@+=~-]{0,255}$"
# BCP 47-like: a 2-3 letter primary subtag, optional subtags (`zh-Hans`, `pt-BR`, `sr-Latn-RS`).
LANG_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$"
# One or more, comma-separated (GET /search?lang=de,fr).
LANG_LIST_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}(,[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3})*$"



def _decimal_digits(value: object) -> object:
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be an integer written in decimal digits (no sign, point, exponent or spaces)")
    return value


# An integer query parameter, as strict as a body's integer: a query string is text, and pydantic's lax mode would
# read '2.0', '+3' or ' 3' as 2 and 3 where the JSON body refuses 2.0.
# Bounds go before the validator (`Annotated[int, Field(ge=1), DIGITS]`): after it, the API description would
# lose them.
DIGITS = BeforeValidator(_decimal_digits)
QueryInt = Annotated[int, DIGITS]

# A write's `wait`: true, false, or seconds from 1 to 3600 (three decimals at most; less than a second would
# answer 503 for nearly every write).
WAIT_PATTERN = r"^(true|false|([1-9][0-9]{0,2}|[12][0-9]{3}|3[0-5][0-9]{2})(\.[0-9]{1,3})?|3600(\.0{1,3})?)$"
WAIT_SECONDS_PATTERN = r"^(([0-9]{1,3}|[0-2][0-9]{3}|3[0-5][0-9]{2})(\.[0-9]{1,3})?|3600(\.0{1,3})?)$"
# A doc-log offset as writes return it (a Redis stream id).
OFFSET_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"

DocId = Annotated[str, StringConstraints(pattern=DOC_ID_PATTERN)]
LangCode = Annotated[str, StringConstraints(pattern=LANG_PATTERN)]
MetadataValue = str | int | float | bool | None


def _flat_metadata(value: dict[str, Any]) -> dict[str, Any]:
    for key, item in value.items():
        if not 1 <= len(key) <= 64:
            raise ValueError(f"metadata key {key[:70]!r} must have 1-64 characters")
        if item is not None and not isinstance(item, str | int | float | bool):
            raise ValueError(f"metadata must be a flat object: {key!r} holds a {type(item).__name__}, not a scalar")
        # Python's JSON reader takes NaN, Infinity and 1e400 (as inf); JSON has no such numbers, and stored they
        # would read back as null, so that a filter on the value would no longer match the document.
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"metadata {key!r} is not a finite number (NaN, Infinity and overflows are refused)")
    return value


# The schema states the rule the validator enforces: string keys of 1-64 characters, scalar values.
_METADATA_SCHEMA = {
    "type": "object",
    "propertyNames": {"minLength": 1, "maxLength": 64},
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
}
Metadata = Annotated[dict[str, Any], AfterValidator(_flat_metadata), WithJsonSchema(_METADATA_SCHEMA)]


# Unknown fields refused, values of another JSON type (`true`, `"3"` or `2.0` for an integer) refused rather than
# converted, and no NaN or infinite numbers (Python's JSON reader accepts them; JSON has none).
STRICT_BODY = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Strict(BaseModel):
    """A request body as strict as the API description (STRICT_BODY)."""

    model_config = STRICT_BODY


class DocumentIn(_Strict):
    id: DocId
    text: Annotated[str, StringConstraints(min_length=1)]
    lang: LangCode | None = None
    metadata: Metadata = Field(default_factory=dict, description="flat object: string keys, scalar values")


class IndexRequest(_Strict):
    documents: list[DocumentIn] = Field(min_length=1)


class IndexResponse(BaseModel):
    indexed: int
    log_offset: str
    applied: bool = Field(True, description="searchable on this replica already (false: wait=false was asked)")


class WriteApplied(BaseModel):
    offset: str
    applied: bool = Field(description="this replica has applied the log up to `offset`: the write is searchable")
    applied_offset: str = Field(description="where this replica's index stands in the log")


class DeleteRequest(_Strict):
    ids: list[DocId] = Field(min_length=1, json_schema_extra={"uniqueItems": True})


class DeleteResponse(BaseModel):
    deleted: int
    missing: list[str]
    log_offset: str | None = Field(None, description="the deletion's place in the log (None: nothing deleted)")
    applied: bool = True


class DocumentOut(BaseModel):
    id: str
    text: str
    lang: str | None
    metadata: dict[str, MetadataValue]


class SearchRequest(_Strict):
    query: str
    k: int = 10
    langs: list[LangCode] | None = None
    filter: Metadata | None = Field(None, description="metadata equality: every key must match")
    query_lang: LangCode | None = Field(
        None, description="the query's own language, for centring and for its adapter when the served version has "
        "one for it (default: detected among the corpus's languages and the adapters')"
    )
    mode: SearchMode | None = Field(
        None, description="dense, lexical (BM25) or hybrid (both, fused); default: the service's XLING_SEARCH_MODE"
    )


class HitOut(BaseModel):
    id: str
    score: float = Field(description="dense: cosine; lexical: BM25; hybrid: the fused score")
    rank: int
    text: str
    lang: str | None
    metadata: dict[str, MetadataValue]
    ranks: dict[str, int] = Field(
        default_factory=dict, description="the rankings that found this hit (dense, lexical) and its rank in each"
    )


class SearchResponse(BaseModel):
    hits: list[HitOut]
    model_version: str
    took_ms: float


class IndexStats(BaseModel):
    documents: int = Field(description="documents stored in Redis")
    vectors: int = Field(description="vectors in this replica's index")
    index: dict[str, Any] = Field(
        description="the index kind and build parameters (as its snapshots record them), tombstones and compactions"
    )
    languages: dict[str, int]
    model_version: str
    applied_offset: str
    log_offset: str
    log_entries: int = Field(description="entries in the doc log; trimmed behind what replicas still need")
    log_trimmed_to: str = Field(description="entries before this offset may have been trimmed")
    lexical: dict[str, Any] | None = Field(
        None, description="this replica's lexical index: documents, documents per language partition, applied offset"
        " (null: XLING_LEXICAL=false)"
    )


class Health(BaseModel):
    status: str
    model_version: str | None
    model_origin: str | None
    detail: str | None = None
    redis: Literal["ok", "unreachable"] = "ok"
    workers: int | None = Field(None, description="workers seen consuming the job queue (None: Redis unreachable)")
    centering: str = Field(
        "off", description="off | uncalibrated (serving raw until enough documents) | calibrated:<means id>"
    )
    calibration: dict[str, Any] | None = Field(
        None, description="the calibration of the served version's next means, while one is queued or running: "
        "job_id (null when this api calibrates itself), status and progress (stage, step, done, total, "
        "rate_per_s, eta_s; or reasons and elapsed_s)"
    )
    warnings: list[str] = Field(default_factory=list)


# Jobs, datasets, models -------------------------------------------------------------------------
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class GuardIn(_Strict):
    metric: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}:[a-z_@0-9]+$",
        description="<eval dataset>:<metric>, e.g. xquad:mono_map or tatoeba:bitext_acc@1",
    )
    max_drop: float = Field(0.005, ge=0, le=1, description="how far it may fall (rise, for rank_distance)")


class FinetuneRequest(TrainConfig, _Strict):
    """A finetune job: the training parameters are TrainConfig's (models/training/config.py, their one
    declaration, bounds and descriptions included); these fields say what to train on and what to do after."""

    model_config = STRICT_BODY

    dataset: Name | list[Name] = Field(
        description="a dataset under DATA_DIR/datasets (GET /datasets), or several: parallel QA and/or bitext"
    )
    base: str = Field("active", description="'active', a registry version, or a hub id")
    eval_datasets: list[Name] = Field(
        default_factory=list, description="LAReQA and/or bitext datasets scored after training"
    )
    deploy: Literal["never", "if_better", "always"] = "never"
    compare_on: Name | None = Field(
        None,
        description="if_better compares on this eval dataset (Multi mAP of a LAReQA set, accuracy@1 of a bitext set);"
        " default: Multi mAP averaged over the LAReQA eval datasets",
    )
    guards: list[GuardIn] | None = Field(
        None,
        description="if_better deploys only if none of these fell by more than its max_drop; default: Mono mAP of"
        " every LAReQA eval dataset and accuracy@1 of every bitext one, max_drop guard_max_drop; [] for none",
    )
    adapters: list[LangCode] = Field(
        default_factory=list, max_length=64,
        description="instead of tuning the shared weights, train one LoRA adapter per listed language on its side of"
        " the bitext datasets, mapped onto the base's embeddings of the other side; the new version is the base plus"
        " these adapters, and every other language's vectors stay exactly the base's. The shared-weight settings"
        " above are then unused",
    )
    adapter_config: AdapterConfig | None = Field(
        None, description="the adapters' hyper-parameters (rank, learning_rate, max_steps, max_seconds, distillation,"
        " ...); default: the measured ones (docs: bench/RESULTS.md, per-language adapters)",
    )
    version: Name | None = Field(None, description="name of the new version; default ft-<job id>")


class EvaluateRequest(_Strict):
    model: str = Field("active", description="'active', a registry version, or a hub id")
    datasets: list[Name] = Field(min_length=1)
    centering: bool = Field(False, description="also score LAReQA sets with vectors centred per language")
    mode: SearchMode = Field("dense", description="retrieval to score: dense, lexical, or hybrid (service's fusion)")


class ExperimentRequest(_Strict):
    train_dataset: Name | list[Name]
    eval_datasets: list[Name] = Field(min_length=1, description="LAReQA and/or bitext datasets")
    base: str = "active"
    steps: int = Field(200, ge=1, le=10_000_000)
    seed: int = 0
    seeds: list[int] | None = Field(None, min_length=1, max_length=20, description="one run per seed; overrides seed")
    freeze_embeddings: bool = False
    batch_size: int = Field(100, ge=2, le=4096)
    learning_rate: float = Field(3e-5, gt=0, lt=1)
    alpha: float = Field(0.5, ge=0, le=1)
    max_length: int = Field(128, ge=8, le=8192)


class ReindexRequest(_Strict):
    version: Name = Field(description="a registry version to encode the corpus with and activate")
    recalibrate: bool = Field(
        False, description="new centring means from the corpus as it is now, then a re-encode with them; the"
        " version (a registry version or the configured default) keeps serving, and is not activated",
    )


class JobAccepted(BaseModel):
    job_id: str
    status: str


class JobOut(BaseModel):
    id: str
    type: str
    status: str
    params: dict[str, Any]
    progress: dict[str, Any]
    metrics: dict[str, Any]
    decision: dict[str, Any]
    model_version: str | None
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat: float | None
    progress_at: float | None = Field(None, description="when its progress last advanced (its start, before any); a"
                                      " running job that stands still for XLING_JOB_STALL_TIMEOUT_S is failed")
    cancel_requested: bool
    retry_of: str | None
    warning: str | None = Field(None, description="e.g. queued while no worker consumes the queue")


class JobsPage(BaseModel):
    data: list[JobOut]
    count: int


class DatasetOut(BaseModel):
    name: str
    kind: Literal["qa", "bitext"] = Field("qa", description="parallel QA (train, LAReQA) or bitext (accuracy@1, X-Y)")
    format: str = Field(description="lareqa | jsonl | bitext-tatoeba | bitext-jsonl")
    summary: dict[str, Any]
    created_at: str


class DatasetsPage(BaseModel):
    data: list[DatasetOut]
    count: int


class ModelsPage(BaseModel):
    data: list[dict[str, Any]] = Field(description="registry versions, and the configured default (`default`)")
    count: int
    active: str = Field(description="the version that should serve: the activated one, else the default")
    activated: str | None = Field(None, description="the activated version; None = the default serves")
    rollback_target: str | None = Field(None, description="what activating the previous version goes back to")


class ActiveModel(BaseModel):
    version: str = Field(description="the version this replica serves")
    activated: str | None = Field(description="the version activated in Redis (None = configured default)")
    origin: str | None
    swap_error: str | None
    centering: dict[str, Any] = Field(
        default_factory=dict, description="the serving pair's centring: its means, and the drift since calibration"
    )


class Activation(BaseModel):
    version: str
    job_id: str | None = Field(None, description="set when the corpus must be re-encoded first (202)")


# OpenAI-compatible embeddings (/v1) ---------------------------------------------------------------
class EmbeddingsRequest(BaseModel):
    """The OpenAI embeddings request, so LangChain, LlamaIndex and the `openai` client work unchanged."""

    model_config = STRICT_BODY

    input: Annotated[
        str | list[str] | list[int] | list[list[int]],
        # Declared as text only: token arrays are refused (with a reason), xling tokenizes itself.
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1, "pattern": r"\S"},
                    {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1, "pattern": r"\S"}},
                ]
            }
        ),
    ] = Field(description="a text or a list of texts")
    model: str = Field(description="the served model: its version (GET /v1/models) or the name it was configured by")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes of each vector"
    )
    dimensions: int | None = Field(None, ge=1, description="must equal the model's dimension if given")
    user: str | None = Field(None, max_length=256, description="accepted and ignored")
    input_type: Literal["query", "passage"] = Field(
        "query",
        description="xling's extension: the model's query prefix (default; e5's advice for similarity and for "
        "queries) or its passage prefix (documents to be retrieved). The openai client sends it via extra_body.",
    )
    lang: LangCode | None = Field(
        None,
        description="xling's extension: the inputs' language (ISO code). Text in a language the served version "
        "has an adapter for goes through it; without `lang` each input's language is detected. The openai client "
        "sends it via extra_body.",
    )


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    adapter: str | None = Field(None, description="the language adapter that encoded this input (null: the shared "
                                "weights)")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingsUsage
    centred: bool = Field(
        description="whether the vectors are centred on their language's mean, as the served index's are"
    )
    centering: str | None = Field(None, description="the id of the means they were centred with")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "xling"


class ModelCards(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
