"""POST /v1/embeddings and GET /v1/models: the OpenAI embeddings API over the serving encoder.

Texts go through the search micro-batcher (shared encoder forwards), guarded by the search key,
within the write limits: at most XLING_MAX_DOCS_PER_REQUEST texts of XLING_MAX_TEXT_CHARS each.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends

from xling.app.deps import EngineDep, SettingsDep, SwapDep, require_search_key
from xling.app.schemas import (
    EmbeddingOut,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbeddingsUsage,
    ModelCard,
    ModelCards,
)
from xling.serving.engine import Engine
from xling.serving.swap import HotSwap
from xling.state.errors import InvalidInput, NotFound
from xling.state.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai-compatible"], dependencies=[Depends(require_search_key)])


def _texts(body: EmbeddingsRequest, settings: Settings) -> list[str]:
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise InvalidInput("input is empty: send a text or a list of texts")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidInput("input holds token ids; send text (xling tokenizes with the model's own tokenizer)")
    if len(texts) > settings.max_docs_per_request:
        raise InvalidInput(f"{len(texts)} inputs in one request; the limit is {settings.max_docs_per_request}")
    for index, text in enumerate(texts):
        assert isinstance(text, str)
        if not text.strip():
            raise InvalidInput(f"input[{index}] is empty")
        if len(text) > settings.max_text_chars:
            raise InvalidInput(f"input[{index}] has {len(text)} characters; the limit is {settings.max_text_chars}")
    return [str(t) for t in texts]


def _served_names(engine: Engine, swap: HotSwap) -> set[str]:
    pair, source = engine.require_pair(), swap.source
    names = {pair.version}
    if source is not None and source.version == pair.version:
        names.add(source.name)
    return names


def _card(engine: Engine, swap: HotSwap) -> ModelCard:
    return ModelCard(id=engine.require_pair().version, created=int(swap.since))


@router.post("/embeddings", response_model=EmbeddingsResponse)
async def embeddings(
    body: EmbeddingsRequest, engine: EngineDep, swap: SwapDep, settings: SettingsDep
) -> EmbeddingsResponse:
    """Embed texts with the serving model (unit-norm vectors: dot product = cosine). When the service centres,
    the vectors are centred as its index's are (`centred` says so): queries on their detected language's mean,
    documents likewise. Text in a language with an adapter goes through it (`lang`, else detection), and each
    input says which adapter encoded it."""
    texts = _texts(body, settings)
    if body.model not in _served_names(engine, swap):
        raise NotFound(f"model {body.model!r} is not served here; GET /v1/models lists the one that is")
    dim = engine.require_pair().encoder.dim
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidInput(f"dimensions={body.dimensions}: this model gives {dim}-dimensional vectors only")
    result = await engine.embed(texts, body.input_type, body.lang)
    data = [
        EmbeddingOut(
            index=i,
            embedding=base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            if body.encoding_format == "base64"
            else vector.tolist(),
            adapter=adapter,
        )
        for i, (vector, adapter) in enumerate(zip(result.vectors, result.adapters, strict=True))
    ]
    tokens = sum(result.tokens)
    return EmbeddingsResponse(
        data=data, model=result.model_version, usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens),
        centred=result.centering_id is not None, centering=result.centering_id,
    )


@router.get("/models", response_model=ModelCards)
def list_models(engine: EngineDep, swap: SwapDep) -> ModelCards:
    """The served model (one per replica)."""
    return ModelCards(data=[_card(engine, swap)])


@router.get("/models/{model}", response_model=ModelCard)
def get_model(model: str, engine: EngineDep, swap: SwapDep) -> ModelCard:
    if model not in _served_names(engine, swap):
        raise NotFound(f"model {model!r} is not served here")
    return _card(engine, swap)
