"""The `xling` command as a user runs it: serve (embedded Redis), index FILE, search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import run_xling
from tests.served import serving
from tests.synthetic import corpus, make_groups
from xling.cli.launch import xling_command
from xling.state.embedded_redis import EmbeddedRedis, free_port
from xling.state.jobstore import FINAL
from xling.state.keys import RedisKeys
from xling.state.settings import Settings


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


@pytest.fixture
def served(tmp_path: Path, tiny_model: Path):  # type: ignore[no-untyped-def]
    with serving(tmp_path / "data", tiny_model, xling_command()) as running:
        yield running


def test_serve_index_search_and_stop(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, process, env = served
    docs = corpus(10)
    file = tmp_path / "docs.jsonl"
    file.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))

    indexed = run_xling("index", str(file), "--url", url, "--batch-size", "7", env=env)
    assert indexed.returncode == 0, indexed.stderr
    assert "indexed 40 documents" in indexed.stdout

    found = run_xling("search", docs[12]["text"], "--url", url, "-k", "3", "--json", env=env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"][0]["id"] == docs[12]["id"]
    filtered = run_xling("search", "the cat", "--url", url, "--lang", "de", "--json", env=env)
    assert {h["lang"] for h in json.loads(filtered.stdout)["hits"]} == {"de"}
    table = run_xling("search", docs[0]["text"], "--url", url, env=env)
    assert docs[0]["id"] in table.stdout

    redis_children = _children(process.pid)
    assert redis_children, "serve started no embedded redis"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in redis_children):
        assert time.monotonic() < deadline, "embedded redis outlived xling serve"
        time.sleep(0.1)
    assert (tmp_path / "data" / "redis" / "appendonly.aof").exists()


def test_cli_reports_bad_input_and_bad_files(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, _, env = served
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\nnot json\n')
    result = run_xling("index", str(bad), "--url", url, env=env)
    assert result.returncode == 1 and "bad.jsonl:2" in result.stderr
    empty_query = run_xling("search", "  ", "--url", url, env=env)
    assert empty_query.returncode == 1 and "query is empty" in empty_query.stderr


def _command(pid: int) -> str:
    return subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()


def _worker_pids(serve_pid: int) -> list[int]:
    return [pid for pid in _children(serve_pid) if "xling.cli worker" in _command(pid) and _alive(pid)]


def test_a_second_server_on_the_same_data_dir_refuses_at_once(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, process, env = served
    redis_log = tmp_path / "data" / "redis" / "redis.log"
    starts = redis_log.read_text().count("Ready to accept connections")
    started = time.monotonic()
    second = subprocess.run(
        xling_command("serve", "--port", str(free_port())),
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"pid {process.pid}" in second.stderr and "in use" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert time.monotonic() - started < 30
    assert redis_log.read_text().count("Ready to accept connections") == starts, "a second redis-server started"
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_a_killed_worker_is_restarted_and_reaped(served) -> None:  # type: ignore[no-untyped-def]
    url, process, _ = served
    deadline = time.monotonic() + 60
    while not _worker_pids(process.pid):
        assert time.monotonic() < deadline, "serve started no worker"
        time.sleep(0.2)
    (first,) = _worker_pids(process.pid)
    wanted = os.getpriority(os.PRIO_PROCESS, 0) + 10  # serving keeps priority on shared cores
    deadline = time.monotonic() + 60  # the worker lowers its priority once it has started up
    while int(subprocess.run(["ps", "-o", "ni=", "-p", str(first)], capture_output=True, text=True).stdout) != wanted:
        assert time.monotonic() < deadline, "the worker did not lower its priority"
        time.sleep(0.2)
    os.kill(first, signal.SIGKILL)
    counts = []  # what /healthz said meanwhile: the dead worker never counts once it is reaped
    deadline = time.monotonic() + 60
    while True:
        pids = _worker_pids(process.pid)
        counts.append(httpx.get(f"{url}/healthz").json()["workers"])
        if pids and first not in pids:
            break
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.2)
    assert not _alive(first)  # reaped: not left a zombie
    assert 0 in counts, counts
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/healthz").json()["workers"] < 1:
        assert time.monotonic() < deadline, "the new worker never reported in"
        time.sleep(0.5)
    for _ in range(5):  # one worker runs, one is listed (the killed one's entry is gone, not lapsing)
        assert httpx.get(f"{url}/healthz").json()["workers"] == 1
        time.sleep(0.2)


def _thread_nice_values(pid: int) -> list[int]:
    """The nice value of every thread of `pid` (`ps -o ni` shows the first thread's only)."""
    values = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        values.append(int(stat.rsplit(")", 1)[1].split()[16]))  # field 19; the command name may hold spaces
    return values


def test_a_group_sigterm_stops_api_and_worker_before_redis_and_every_worker_thread_runs_lower(
    tmp_path: Path, tiny_model: Path
) -> None:
    with serving(tmp_path / "data", tiny_model, xling_command(), own_group=True) as (url, process, _):
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/healthz").json()["workers"] < 1:
            assert time.monotonic() < deadline, "the worker never reported in"
            time.sleep(0.2)
        (worker,) = _worker_pids(process.pid)
        wanted = os.getpriority(os.PRIO_PROCESS, 0) + 10
        threads = _thread_nice_values(worker)
        assert len(threads) > 1 and set(threads) == {wanted}, threads  # not only the thread that asked
        assert os.getsid(worker) == worker  # a session of its own, whose autogroup runs at the same nice
        redis_pids = [pid for pid in _children(process.pid) if "redis-server" in _command(pid)]
        assert redis_pids and all(os.getpgid(pid) != os.getpgid(process.pid) for pid in redis_pids)
        os.killpg(process.pid, signal.SIGTERM)  # Ctrl-C in a terminal, `kill -- -PGID`, systemd's stop
        assert process.wait(timeout=60) == 0
    # Redis outlived the api and the worker, so the worker recorded its exit: no entry is left to lapse.
    with EmbeddedRedis(tmp_path / "data" / "redis") as redis_after:
        client = redis.Redis.from_url(redis_after.url, decode_responses=True)
        assert client.zrange(RedisKeys(Settings.model_fields["key_prefix"].default).workers, 0, -1) == []
        client.close()


def test_cli_reports_a_file_that_is_not_utf8(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, _, env = served
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "K' + "ö".encode("latin-1") + b'ln"}\n')
    result = run_xling("index", str(bad), "--url", url, env=env)
    assert result.returncode == 1
    assert "latin1.jsonl:2: not UTF-8 at byte 48 " in result.stderr, result.stderr  # 26 + len('{"id": "b", "text": "K')
    assert "Traceback" not in result.stderr


def test_cli_errors_are_one_line_unless_debug() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_xling("search", "cat", "--url", dead)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the xling service" in lines[0] and "--debug" in lines[0], result.stderr
    debug = run_xling("--debug", "search", "cat", "--url", dead)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConnectError" in debug.stderr


def test_worker_output_is_json_lines(redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLING_")}
    env.update(XLING_REDIS_URL=redis_server.url, XLING_DATA_DIR=str(tmp_path), XLING_KEY_PREFIX="jsonlogs")
    process = subprocess.Popen(
        xling_command("worker"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip():
            lines.append(line)
        if "ready" in line:
            break
    process.terminate()
    process.wait(timeout=30)
    assert any("ready" in line for line in lines), lines
    for line in lines:
        assert json.loads(line)["level"], line  # no banner, no raw warning text: every line is a JSON object


def test_serve_runs_jobs_from_a_folder_with_packages_of_the_same_names(tmp_path: Path, tiny_model: Path) -> None:
    """A project folder with its own `app`, `models` (and even `xling`) packages cannot shadow the worker's modules."""
    project = tmp_path / "project"
    for package in ("app", "models", "worker", "xling"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"raise ImportError('the project\\'s own {package} package')\n")
    (project / "app" / "cli.py").write_text("raise SystemExit('the project app.cli')\n")
    console_script = Path(sys.executable).with_name("xling")  # the command a user types, from that folder
    with serving(tmp_path / "data", tiny_model, [str(console_script)], cwd=project) as (url, _, _):
        groups = "".join(json.dumps(g) + "\n" for g in make_groups(12, seed=3))
        client = httpx.Client(base_url=url, timeout=60)
        uploaded = client.post("/datasets", data={"name": "qa"}, files={"file": ("qa.jsonl", groups.encode())})
        assert uploaded.status_code == 201, uploaded.text
        accepted = client.post("/jobs/evaluate", json={"datasets": ["qa"]})
        assert accepted.status_code == 202, accepted.text
        deadline = time.monotonic() + 180
        while (job := client.get(f"/jobs/{accepted.json()['job_id']}").json())["status"] not in FINAL:
            assert time.monotonic() < deadline, f"the job never finished: {job}"
            time.sleep(0.3)
        assert job["status"] == "succeeded", job
        assert job["metrics"], job


def test_worker_check_says_whether_a_worker_of_this_host_beats(redis_url: str, tmp_path: Path) -> None:
    """`xling worker --check`, the worker container's health check: 0 while a worker of this host beats in Redis."""
    from xling.worker.presence import presence

    env = {k: v for k, v in os.environ.items() if not k.startswith("XLING_")}
    env.update(XLING_REDIS_URL=redis_url, XLING_KEY_PREFIX="check", XLING_DATA_DIR=str(tmp_path))
    settings = Settings(_env_file=None, redis_url=redis_url, key_prefix="check", data_dir=tmp_path)  # type: ignore[call-arg]
    with presence(settings):
        beating = run_xling("worker", "--check", env=env)
    assert beating.returncode == 0, beating.stderr
    assert run_xling("worker", "--check", env=env).returncode == 1  # the worker left: nobody beats here
