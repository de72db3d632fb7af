"""`xling serve` started as a user starts it (a subprocess on a free port, embedded Redis and worker), for tests."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from xling.cli.supervisor import stop_process
from xling.state.embedded_redis import free_port

READY_WITHIN_S = 60
STOP_WITHIN_S = 30


@contextmanager
def serving(
    data_dir: Path, model: Path, command: list[str], cwd: Path | None = None, own_group: bool = False,
    env_extra: dict[str, str] | None = None,
) -> Iterator[tuple[str, Any, dict[str, str]]]:
    """`xling serve` on a free port with its embedded Redis and worker, until ready; stopped after the block, and
    also when it never became ready (nothing of it outlives the test). `own_group`: in a process group of its own,
    as a shell starts a command (a signal to the group spares pytest)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLING_")}
    env.update(XLING_DATA_DIR=str(data_dir), XLING_RETRIEVAL_MODEL=str(model), HF_HUB_OFFLINE="1", **(env_extra or {}))
    # Output to a file, not a pipe: a pipe nobody reads fills up and blocks the service (and its worker) mid-write.
    log = data_dir.parent / f"serve-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port)], env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=own_group,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "xling serve did not become ready: " + log.read_text()[-4000:]
            time.sleep(0.1)
        yield url, process, env
    finally:
        # SIGTERM first: a SIGKILL of the api alone would leave its Redis and worker (sessions of their own) running.
        stop_process(process, STOP_WITHIN_S)
