"""POST /datasets (upload or replace parallel QA or bitext, validated on arrival), GET /datasets, DELETE."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Response, UploadFile

from app.datasets import DatasetExists, UnpackLimits, UnpackTooLarge, delete_dataset, list_datasets, save_dataset
from app.deps import EngineDep, SettingsDep, require_read_key, require_write_key
from app.engine import Engine
from app.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from app.job_requests import datasets_of
from app.schemas import NAME_PATTERN, DatasetOut, DatasetsPage
from models.data import DataError

router = APIRouter(prefix="/datasets", tags=["datasets"], dependencies=[Depends(require_read_key)])


@router.post("", status_code=201, response_model=DatasetOut, dependencies=[Depends(require_write_key)])
def upload_dataset(
    settings: SettingsDep,
    file: Annotated[
        UploadFile,
        File(
            description=".zip of <lang>.json files (LAReQA) or of Tatoeba bitext files (<prefix>.<src>-<tgt>.<lang>); "
            '.jsonl of QA groups ({"id", "query", "passage"}) or of bitext rows '
            '({"src", "tgt", "src_lang", "tgt_lang"})'
        ),
    ],
    name: Annotated[str, Form(pattern=NAME_PATTERN)],
    engine: EngineDep,
    replace: Annotated[bool, Form(description="replace a dataset of that name (refused while a job uses it)")] = False,
) -> DatasetOut:
    if replace:
        _refuse_if_in_use(engine, name, "replaced")
    try:
        limits = UnpackLimits(settings.max_unpacked_bytes, settings.max_zip_ratio)
        info = save_dataset(settings.datasets_dir, name, file.filename or "", file.file, limits, replace=replace)
    except DatasetExists:
        raise Conflict(f"dataset {name!r} exists already; send replace=true to replace it") from None
    except UnpackTooLarge as exc:
        raise PayloadTooLarge(f"dataset refused: {exc}") from None
    except DataError as exc:
        raise InvalidInput(f"dataset refused: {exc}") from None
    return DatasetOut(**info)


def _refuse_if_in_use(engine: Engine, name: str, what: str) -> None:
    users = [job.id for job in engine.jobs.unfinished() if name in datasets_of(job.params)]
    if users:
        raise Conflict(f"dataset {name!r} cannot be {what}: queued or running job {users[0]} uses it")


@router.delete("/{name}", status_code=204, dependencies=[Depends(require_write_key)])
def remove_dataset(engine: EngineDep, settings: SettingsDep, name: str = Path(pattern=NAME_PATTERN)) -> Response:
    """Delete a dataset; refused (409) while a queued or running job uses it."""
    _refuse_if_in_use(engine, name, "deleted")
    if not delete_dataset(settings.datasets_dir, name):
        raise NotFound(f"no dataset {name!r}")
    return Response(status_code=204)


@router.get("", response_model=DatasetsPage)
def get_datasets(settings: SettingsDep) -> DatasetsPage:
    found = list_datasets(settings.datasets_dir)
    return DatasetsPage(data=[DatasetOut(**d) for d in found], count=len(found))
