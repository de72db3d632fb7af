"""The `xling` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from app.logs import configure_logging
from app.settings import Settings

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="xling: multilingual search that tunes itself.")
console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("xling")

UrlOption = Annotated[str, typer.Option("--url", envvar="XLING_URL", help="the xling service")]


def _client(url: str) -> httpx.Client:
    key = os.environ.get("XLING_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=120)


def _fail_on_error(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    err_console.print(f"[red]error {response.status_code}:[/red] {detail}")
    raise typer.Exit(1)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8000,
) -> None:
    """Run the api; with no XLING_REDIS_URL, also an embedded Redis (AOF under DATA_DIR/redis)."""
    import uvicorn

    from app.embedded_redis import EmbeddedRedis
    from app.main import create_app

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.redis_dir)
        settings.redis_url = embedded.start()
        log.info("embedded redis started", extra={"url": settings.redis_url, "dir": str(settings.redis_dir)})
    # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets `finally` stop Redis.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)
    finally:
        if embedded is not None:
            embedded.stop()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    docs = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                err_console.print(f"[red]{path}:{number}: not JSON: {exc}[/red]")
                raise typer.Exit(1) from None
            if not isinstance(doc, dict):
                err_console.print(f"[red]{path}:{number}: expected an object with id and text[/red]")
                raise typer.Exit(1)
            docs.append(doc)
    return docs


@cli.command("index")
def index_file(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL: one {id, text, lang?, metadata?}")],
    url: UrlOption = "http://127.0.0.1:8000",
    batch_size: Annotated[int, typer.Option(min=1, help="documents per request")] = 256,
) -> None:
    """Upsert the documents of a JSONL file through the service, in batches."""
    docs = _read_jsonl(file)
    columns = (TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with _client(url) as client, Progress(*columns, console=console) as progress:
        task = progress.add_task("index", total=len(docs))
        for start in range(0, len(docs), batch_size):
            batch = docs[start : start + batch_size]
            _fail_on_error(client.post("/index", json={"documents": batch}))
            progress.advance(task, len(batch))
    console.print(f"indexed {len(docs)} documents from {file}")


@cli.command()
def search(
    text: Annotated[str, typer.Argument(help="the query, in any language")],
    k: Annotated[int, typer.Option("-k", help="how many hits")] = 10,
    lang: Annotated[
        list[str] | None, typer.Option("--lang", help="only documents in this language (repeatable)")
    ] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    as_json: Annotated[bool, typer.Option("--json", help="print the raw response")] = False,
) -> None:
    """Search the service and print the hits."""
    body: dict[str, Any] = {"query": text, "k": k}
    if lang:
        body["langs"] = lang
    with _client(url) as client:
        result = _fail_on_error(client.post("/search", json=body))
    if as_json:
        console.print_json(data=result)
        return
    table = Table(title=f"{len(result['hits'])} hits · model {result['model_version']} · {result['took_ms']} ms")
    for column in ("rank", "score", "lang", "id", "text"):
        table.add_column(column, overflow="fold")
    for hit in result["hits"]:
        text_preview = hit["text"] if len(hit["text"]) < 200 else hit["text"][:197] + "..."
        table.add_row(str(hit["rank"]), f"{hit['score']:.3f}", hit["lang"] or "", hit["id"], text_preview)
    console.print(table)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
