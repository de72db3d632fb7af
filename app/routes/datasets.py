"""POST /datasets (upload parallel QA or bitext, validated on arrival), GET /datasets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from app.datasets import DatasetExists, UnpackLimits, UnpackTooLarge, list_datasets, save_dataset
from app.deps import SettingsDep, require_read_key, require_write_key
from app.errors import Conflict, InvalidInput, PayloadTooLarge
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
) -> DatasetOut:
    try:
        limits = UnpackLimits(settings.max_unpacked_bytes, settings.max_zip_ratio)
        info = save_dataset(settings.datasets_dir, name, file.filename or "", file.file, limits)
    except DatasetExists:
        raise Conflict(f"dataset {name!r} exists already") from None
    except UnpackTooLarge as exc:
        raise PayloadTooLarge(f"dataset refused: {exc}") from None
    except DataError as exc:
        raise InvalidInput(f"dataset refused: {exc}") from None
    return DatasetOut(**info)


@router.get("", response_model=DatasetsPage)
def get_datasets(settings: SettingsDep) -> DatasetsPage:
    found = list_datasets(settings.datasets_dir)
    return DatasetsPage(data=[DatasetOut(**d) for d in found], count=len(found))
