"""Commands that talk to a running service over HTTP: `xling index`, `xling search`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from xling.cli.output import console, fail

UrlOption = Annotated[str, typer.Option("--url", envvar="XLING_URL", help="the xling service")]


def _client(url: str, timeout_s: float = 120) -> httpx.Client:
    key = os.environ.get("XLING_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout_s)


def _fail_on_error(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        body = response.json()
        detail, fields = str(body.get("detail", response.text)), body.get("errors") or []
    except (ValueError, AttributeError):
        detail, fields = response.text, []
    more = "".join(f"\n  {field.get('field')}: {field.get('message')}" for field in fields[3:])  # detail names 3
    fail(f"{response.status_code}: {detail}{more}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from xling.models.data.text import DataError, jsonl_objects

    try:
        return [doc for _, doc in jsonl_objects(path, "id and text")]
    except DataError as exc:
        fail(str(exc))


def index_file(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL: one {id, text, lang?, metadata?}")],
    url: UrlOption = "http://127.0.0.1:8000",
    batch_size: Annotated[int, typer.Option(min=1, help="documents per request")] = 256,
    wait: Annotated[
        float, typer.Option(min=1, max=3600, help="seconds a batch may take to become searchable (a slow machine "
                            "needs more than the service's default)")
    ] = 600,
) -> None:
    """Upsert the documents of a JSONL file through the service, in batches (the key: XLING_API_KEY)."""
    docs = _read_jsonl(file)
    columns = (TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with _client(url, timeout_s=wait + 60) as client, Progress(*columns, console=console) as progress:
        task = progress.add_task("index", total=len(docs))
        for start in range(0, len(docs), batch_size):
            batch = docs[start : start + batch_size]
            _fail_on_error(client.post("/index", params={"wait": wait}, json={"documents": batch}))
            progress.advance(task, len(batch))
    console.print(f"indexed {len(docs)} documents from {file}")


def search(
    text: Annotated[str, typer.Argument(help="the query, in any language")],
    k: Annotated[int, typer.Option("-k", help="how many hits")] = 10,
    lang: Annotated[
        list[str] | None, typer.Option("--lang", help="only documents in this language (repeatable)")
    ] = None,
    query_lang: Annotated[
        str | None, typer.Option(help="the query's own language, for centring (default: detected)")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="dense | lexical | hybrid (default: the service's XLING_SEARCH_MODE)")
    ] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    as_json: Annotated[bool, typer.Option("--json", help="print the raw response")] = False,
) -> None:
    """Search the service and print the hits (the key: XLING_API_KEY)."""
    body: dict[str, Any] = {"query": text, "k": k}
    if mode:
        body["mode"] = mode
    if lang:
        body["langs"] = lang
    if query_lang:
        body["query_lang"] = query_lang
    with _client(url) as client:
        result = _fail_on_error(client.post("/search", json=body))
    if as_json:
        console.print_json(data=result)
        return
    table = Table(title=f"{len(result['hits'])} hits · model {result['model_version']} · {result['took_ms']} ms")
    for column in ("rank", "score", "found by", "lang", "id", "text"):
        table.add_column(column, overflow="fold")
    for hit in result["hits"]:
        text_preview = hit["text"] if len(hit["text"]) < 200 else hit["text"][:197] + "..."
        found_by = " ".join(f"{name} #{rank}" for name, rank in hit.get("ranks", {}).items())
        table.add_row(str(hit["rank"]), f"{hit['score']:.3f}", found_by, hit["lang"] or "", hit["id"], text_preview)
    console.print(table)
