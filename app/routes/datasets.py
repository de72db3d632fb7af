"""POST /datasets (upload or replace parallel QA or bitext, validated on arrival), GET /datasets, DELETE."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Response, UploadFile

from xling.app.deps import JobStoreDep, SettingsDep, require_read_key, require_write_key
from xling.app.schemas import NAME_PATTERN, DatasetOut, DatasetsPage
from xling.models.data.text import DataError
from xling.state.datasets import (
    DatasetExists,
    UnpackLimits,
    UnpackTooLarge,
    delete_dataset,
    list_datasets,
    save_dataset,
)
from xling.state.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from xling.state.jobs import parse_job
from xling.state.jobstore import JobStore

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
    jobs: JobStoreDep,
    replace: Annotated[bool, Form(description="replace a dataset of that name (refused while a job uses it)")] = False,
) -> DatasetOut:
    if replace:
        _refuse_if_in_use(jobs, name, "replaced")
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


def _refuse_if_in_use(jobs: JobStore, name: str, what: str) -> None:
    users = [job.id for job in jobs.unfinished() if name in parse_job(job.type, job.params).dataset_names()]
    if users:
        raise Conflict(f"dataset {name!r} cannot be {what}: queued or running job {users[0]} uses it")


@router.delete("/{name}", status_code=204, dependencies=[Depends(require_write_key)])
def remove_dataset(jobs: JobStoreDep, settings: SettingsDep, name: str = Path(pattern=NAME_PATTERN)) -> Response:
    """Delete a dataset; refused (409) while a queued or running job uses it."""
    _refuse_if_in_use(jobs, name, "deleted")
    if not delete_dataset(settings.datasets_dir, name):
        raise NotFound(f"no dataset {name!r}")
    return Response(status_code=204)


@router.get("", response_model=DatasetsPage)
def get_datasets(settings: SettingsDep) -> DatasetsPage:
    found = list_datasets(settings.datasets_dir)
    return DatasetsPage(data=[DatasetOut(**d) for d in found], count=len(found))
