"""Benchmark: Prefect's orchestration overhead for the preprocess flow's task graph, against a real local API server.

    .venv/bin/python bench/orchestration.py [--shards 1 8 32 128] [--kinds mixed] [--workers 2] [--no-worker] [--json]

Starts its own Prefect API server (`prefect server start` on a free loopback port, SQLite database and
PREFECT_HOME in a temporary folder, analytics and UI off), points this process at it, and then:

1. per shard: runs a flow with exactly the task graph of `flows/preprocess.py:process` -- one task run
   per shard (`tasks.engine.shard_task.shard_task`'s signature and options: `tasks.infra.runtime.TASK_OPTIONS`, retries,
   NO_CACHE, persist_result=False, the run named after the shard), mapped with `.map` under
   `ThreadPoolTaskRunner(max_workers=2)`, collected with `flows.runs.collect_shards` (as_completed
   plus a progress artifact updated per shard) and the two summary artifacts at the end -- for each shard
   count S in --shards. The tasks do no work: they return the manifest rows a real shard returns for
   --shard-size placeholder items (real `WorkItem`s, a real `PreprocessConfig` and `ShardRun` as
   arguments), so all the time is orchestration.
   --kinds mixed (default) makes ceil(S/2) person shards and floor(S/2) garment shards; --kinds person
   makes all S person shards. One unreported S=1 run warms the process up first.
   Per S: the wall seconds of the flow call; the flow body alone; "flushed": until this process's
   queued events and logs have been sent (task runs are recorded from events in Prefect 3, so the
   flow call can return before the server knows them); "recorded": until the server lists every task
   run as Completed. A least-squares line of wall over S gives the fixed cost per flow run
   (intercept) and the marginal cost per shard (slope), a line over task runs the cost per task run.
2. per image: the marginal cost of a person, a garment and an average shard divided by
   --shard-size (default `tasks.records.config.DEFAULT_SHARD_SIZE`), as a fraction of --cpu-s-per-image
   (default 1 s, a typical CPU preprocess of one image).
3. per child flow run (--worker, on by default; --no-worker skips it): creates a process work pool,
   deploys the no-op flow `noop_child` of this file (`flow.from_source(<bench dir>,
   "orchestration.py:noop_child").deploy`), starts `prefect worker start --pool bench-pool --limit 4`
   (query and prefetch every 1 s) and creates runs with `run_deployment(..., timeout=0)`: first
   --child-runs one after the other, then --child-runs at once. Reports creation -> Completed per run
   from the server's state timestamps, split into worker pickup (-> Pending), process start and flow
   load (-> Running) and the run itself (-> Completed).

Server and worker are stopped (SIGTERM to the process group, SIGKILL after a grace period) at the end,
on errors and on Ctrl-C. Progress goes to stderr; the tables (markdown) or the JSON to stdout. The
default run takes about 2 to 4 minutes on a 2-core machine; the server shares the CPUs with the flow.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from prefect import flow

from bench.machine import fmt, log

DEFAULT_SHARDS = (1, 8, 32, 128)
KINDS = ("mixed", "person")
PERSON_TASKS = 1  # one task run per shard: every stage of its items in one pass
GARMENT_TASKS = 1
SERVER_STARTUP_TIMEOUT_S = 180
RECORD_TIMEOUT_S = 180
CHILD_TIMEOUT_S = 180
STOP_GRACE_S = 15
POOL = "bench-pool"
WORKER_LIMIT = 4
LOCKED = "database is locked"




# ---- The flows --------------------------------------------------------------------------------


@flow(name="noop-child", log_prints=False)
def noop_child() -> dict[str, bool]:
    """The child flow run through the process worker: does nothing."""
    return {"ok": True}


def placeholder_works(kind: str, shard: int, size: int) -> list:
    """`size` real WorkItems of one kind (what a real shard passes its tasks), pointing nowhere."""
    from tasks.records.catalog import CatalogItem, WorkItem
    from tasks.stages.registry import stages_for

    folder = "persons" if kind == "person" else "garments"
    stages = frozenset(stages_for(kind))
    works = []
    for index in range(size):
        stem = f"{kind}-{shard:05d}-{index:05d}"
        key = f"{stem}.jpg"
        item = CatalogItem(kind=kind, key=key, rel=f"{folder}/{key}", url=f"memory://bench/{folder}/{key}",
                           size=100_000, stem=stem, modified=0.0)
        works.append(WorkItem(item=item, stages=stages))
    return works


@functools.cache
def bench_flow():
    """The preprocess task graph with no-op shard tasks (built on first use, so a worker loading
    `noop_child` from this file imports no more than Prefect)."""
    from prefect import get_run_logger, task, unmapped
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.runtime import flow_run
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.runs import collect_shards
    from tasks.engine.shard import ShardRun
    from tasks.infra.runtime import TASK_OPTIONS
    from tasks.stages.model_cache import Weights
    from tasks.stages.registry import PreprocessConfig, stages_for

    @task(name="shard", task_run_name="{shard}", **TASK_OPTIONS)
    def shard_task(config, run, shard, works):
        return [{"run_id": run.run_id, "shard": shard, "kind": work.kind, "key": work.item.key, "stem": work.stem,
                 "stage": stage, "status": "ok", "model": "bench", "outputs": [f"{work.stem}.out"], "ms": 0.0}
                for work in works for stage in stages_for(work.kind)]

    @flow(name="orchestration-bench", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
    def orchestration_bench(person_shards: int, garment_shards: int, shard_size: int) -> dict[str, Any]:
        started = time.perf_counter()
        config = PreprocessConfig(catalog="memory://bench", out="memory://bench-out", shard_size=shard_size)
        fingerprints = {kind: dict.fromkeys(stages_for(kind), "0" * 16) for kind in ("person", "garment")}
        run = ShardRun(f"bench-{flow_run.get_id()}", fingerprints, Weights())
        shards = [(f"person-{i:05d}", placeholder_works("person", i, shard_size)) for i in range(person_shards)]
        shards += [(f"garment-{i:05d}", placeholder_works("garment", i, shard_size)) for i in range(garment_shards)]
        # As flows/preprocess.py:process.
        futures = shard_task.map(unmapped(config), unmapped(run), [name for name, _ in shards],
                                 [works for _, works in shards])
        rows, failed = collect_shards(dict(zip(futures, (name for name, _ in shards))), get_run_logger())
        # As flows/preprocess.py:publish: a table and a markdown artifact per run.
        create_table_artifact([{"stage": "bench", "items": len(rows), "mean_ms": 0.0}], key="bench-stages")
        create_markdown_artifact(f"# orchestration bench {run.run_id}\n\n- rows: {len(rows)}\n", key="bench-summary")
        return {"flow_run_id": str(flow_run.get_id()), "rows": len(rows), "failed": len(failed),
                "body_s": time.perf_counter() - started}

    return orchestration_bench


# ---- Processes: the API server and the worker ----------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_command() -> list[str]:
    script = Path(sys.executable).parent / "prefect"
    return [str(script)] if script.exists() else [sys.executable, "-m", "prefect.cli"]


def base_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    return env


def spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A child in its own process group (so stop() reaches whatever it starts), output to a log file."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop(process: subprocess.Popen | None, what: str) -> None:
    """SIGTERM to the process group, wait, SIGKILL the group if it is still there; then SIGKILL any
    descendant that left the group (the process worker starts each flow run in a session of its own)."""
    if process is None:
        return
    descendants = descendants_of(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log(f"{what} ignored SIGTERM for {STOP_GRACE_S} s: SIGKILL")
    # The leader may be gone while its children linger: make sure of the whole group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    for child in descendants:
        with contextlib.suppress(Exception):
            if child.is_running():
                log(f"{what}: SIGKILL to a leftover child, pid {child.pid}")
                child.kill()


def descendants_of(pid: int) -> list:
    try:
        import psutil
    except ImportError:
        return []
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def wait_healthy(url: str, server: subprocess.Popen, log_path: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < SERVER_STARTUP_TIMEOUT_S:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}:\n{tail(log_path)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            if response.status == 200:
                return time.perf_counter() - started
        time.sleep(0.25)
    raise RuntimeError(f"no answer from {url}/health in {SERVER_STARTUP_TIMEOUT_S} s:\n{tail(log_path)}")


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by a process and its living children; None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def prefect_server(work: Path) -> Iterator[dict[str, Any]]:
    """A local API server on a free port; this process's Prefect settings point at it while inside."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = work / "prefect-home"
    home.mkdir()
    port = free_port()
    env = base_env(home)
    env.update(PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{work / 'prefect.db'}",
               PREFECT_UI_ENABLED="false")
    log_path = work / "server.log"
    log(f"starting prefect server on 127.0.0.1:{port}")
    server = spawn(prefect_command() + ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log_path)
    url = f"http://127.0.0.1:{port}/api"
    info: dict[str, Any] = {"url": url, "home": home, "log": log_path, "cpu_s": lambda: tree_cpu_s(server.pid)}
    previous = os.environ.get("PREFECT_API_URL")
    try:
        info["startup_s"] = wait_healthy(url, server, log_path)
        log(f"server healthy after {info['startup_s']:.1f} s")
        os.environ["PREFECT_API_URL"] = url  # for anything that reads the environment afresh
        # Prefect read its settings at import: override them in this process as well.
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
            try:
                yield info
            finally:
                flush_client()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        log("stopping prefect server")
        stop(server, "prefect server")


def flush_client(timeout: float = 60.0) -> float:
    """Send what this process still queues for the API (events, logs); seconds it took."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    started = time.perf_counter()
    for service in (EventsWorker, APILogWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=timeout)
    return time.perf_counter() - started


def api_post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def completed_task_runs(api: str, flow_run_id: str) -> int:
    return int(api_post(f"{api}/task_runs/count", {
        "flow_runs": {"id": {"any_": [flow_run_id]}},
        "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }))


# ---- 1. and 2.: the preprocess task graph over S shards --------------------------------------------


def shard_split(shards: int, kinds: str) -> tuple[int, int]:
    if kinds == "person":
        return shards, 0
    return math.ceil(shards / 2), shards // 2


def run_graph(server: dict[str, Any], shards: int, kinds: str, shard_size: int, workers: int) -> dict[str, Any]:
    from prefect.task_runners import ThreadPoolTaskRunner

    from tasks.stages.registry import stages_for

    persons, garments = shard_split(shards, kinds)
    expected = PERSON_TASKS * persons + GARMENT_TASKS * garments
    bench = bench_flow().with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    flush_client()  # start with nothing queued from an earlier run
    api, server_cpu = server["url"], server["cpu_s"]
    server_cpu_start, bench_cpu_start = server_cpu(), time.process_time()
    started = time.perf_counter()
    result = bench(person_shards=persons, garment_shards=garments, shard_size=shard_size)
    wall = time.perf_counter() - started
    bench_cpu = time.process_time() - bench_cpu_start
    flush_client()
    flushed = time.perf_counter() - started
    recorded = None
    while time.perf_counter() - started < RECORD_TIMEOUT_S + wall:
        if completed_task_runs(api, result["flow_run_id"]) >= expected:
            recorded = time.perf_counter() - started
            break
        time.sleep(0.1)
    server_cpu_end = server_cpu()
    if result["rows"] != shard_size * (len(stages_for("person")) * persons + len(stages_for("garment")) * garments):
        raise RuntimeError(f"S={shards}: {result['rows']} rows collected, the graph is not what it should be")
    return {"shards": shards, "person_shards": persons, "garment_shards": garments, "task_runs": expected,
            "wall_s": wall, "body_s": result["body_s"], "flushed_s": flushed, "recorded_s": recorded,
            "bench_cpu_s": bench_cpu,
            "server_cpu_s": None if server_cpu_end is None else server_cpu_end - server_cpu_start,
            "ms_per_task_run": 1000 * wall / expected, "ms_per_shard": 1000 * wall / shards,
            "flow_run_id": result["flow_run_id"]}


def least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """(intercept, slope) of the least-squares line, or None with fewer than two distinct xs."""
    if len(set(xs)) < 2:
        return None
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
             / sum((x - mean_x) ** 2 for x in xs))
    return mean_y - slope * mean_x, slope


def summarise_graph(runs: list[dict[str, Any]], shard_size: int, cpu_s_per_image: float) -> dict[str, Any]:
    by_shards = least_squares([r["shards"] for r in runs], [r["wall_s"] for r in runs])
    by_tasks = least_squares([r["task_runs"] for r in runs], [r["wall_s"] for r in runs])
    single = next((r for r in runs if r["shards"] == 1), None)
    fit: dict[str, Any] = {
        "fixed_s_intercept": by_shards[0] if by_shards else None,
        "ms_per_shard_slope": 1000 * by_shards[1] if by_shards else None,
        "fixed_s_intercept_over_task_runs": by_tasks[0] if by_tasks else None,
        "ms_per_task_run_slope": 1000 * by_tasks[1] if by_tasks else None,
        "s1_wall_s": single["wall_s"] if single else None,
        "s1_outside_body_s": single["wall_s"] - single["body_s"] if single else None,
    }
    per_task = fit["ms_per_task_run_slope"]
    if per_task is None:  # one S only: all of the wall, fixed cost included
        biggest = max(runs, key=lambda r: r["task_runs"])
        per_task = biggest["ms_per_task_run"]
    per_image = []
    for label, tasks_per_shard in (("person shard", PERSON_TASKS),
                                   ("garment shard", GARMENT_TASKS),
                                   ("average shard, 1:1 persons:garments", (PERSON_TASKS + GARMENT_TASKS) / 2)):
        ms_shard = per_task * tasks_per_shard
        ms_image = ms_shard / shard_size
        per_image.append({"shard": label, "task_runs": tasks_per_shard, "ms_per_shard": ms_shard,
                          "ms_per_image": ms_image, "percent_of_cpu": 100 * ms_image / (1000 * cpu_s_per_image)})
    return {"fit": fit, "per_image": per_image}


# ---- 3.: one child flow run through a process worker --------------------------------------------


def cli(args: list[str], env: dict[str, str], log_path: Path) -> None:
    with open(log_path, "ab") as out:
        subprocess.run(prefect_command() + args, env=env, stdout=out, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, check=True, timeout=120)


def wait_for_worker(timeout: float, worker: subprocess.Popen, log_path: Path) -> float:
    from prefect.client.orchestration import get_client

    started = time.perf_counter()
    with get_client(sync_client=True) as client:
        while time.perf_counter() - started < timeout:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}:\n{tail(log_path)}")
            if client.read_workers_for_work_pool(POOL):
                return time.perf_counter() - started
            time.sleep(0.25)
    raise RuntimeError(f"no worker on {POOL} after {timeout:.0f} s:\n{tail(log_path)}")


def child_timings(client, flow_run_id) -> dict[str, Any]:
    run = client.read_flow_run(flow_run_id)
    states = client.read_flow_run_states(flow_run_id)

    def first(kind: str):
        return next((s.timestamp for s in sorted(states, key=lambda s: s.timestamp) if s.type.value == kind), None)

    def seconds(start, end) -> float | None:
        return (end - start).total_seconds() if start and end else None

    pending, running, completed = first("PENDING"), first("RUNNING"), first("COMPLETED")
    return {"flow_run_id": str(flow_run_id), "state": run.state.type.value if run.state else None,
            "total_s": seconds(run.created, completed), "pickup_s": seconds(run.created, pending),
            "start_s": seconds(pending, running), "run_s": seconds(running, completed)}


def run_children(deployment: str, count: int, together: bool) -> list[dict[str, Any]]:
    """`count` runs of the deployment, all at once or each after the last finished; server timings."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    def wait(ids: list, started: float) -> None:
        with get_client(sync_client=True) as client:
            pending = set(ids)
            while pending:
                if time.perf_counter() - started > CHILD_TIMEOUT_S:
                    raise RuntimeError(f"child flow runs not finished after {CHILD_TIMEOUT_S} s")
                for flow_run_id in list(pending):
                    state = client.read_flow_run(flow_run_id).state
                    if state is not None and state.is_final():
                        pending.discard(flow_run_id)
                time.sleep(0.2)

    results = []
    batches = [list(range(count))] if together else [[i] for i in range(count)]
    for batch in batches:
        started = time.perf_counter()
        ids = [run_deployment(deployment, timeout=0, as_subflow=False).id for _ in batch]
        wait(ids, started)
        observed = time.perf_counter() - started
        with get_client(sync_client=True) as client:
            for flow_run_id in ids:
                results.append({**child_timings(client, flow_run_id), "observed_s": observed})
    return results


def bench_worker(server: dict[str, Any], work: Path, child_runs: int) -> dict[str, Any]:
    from prefect import Flow

    env = base_env(server["home"])
    env.update(PREFECT_API_URL=server["url"], PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1")
    log_path = work / "worker.log"
    log(f"creating the process work pool {POOL}")
    cli(["work-pool", "create", POOL, "--type", "process"], env, work / "cli.log")
    with contextlib.redirect_stdout(sys.stderr):
        child = Flow.from_source(source=str(BENCH_DIR), entrypoint="orchestration.py:noop_child")
        child.deploy(name="bench", work_pool_name=POOL, print_next_steps=False, build=False, push=False,
                     ignore_warnings=True)
    deployment = "noop-child/bench"
    log(f"deployed {deployment}; starting a process worker (limit {WORKER_LIMIT})")
    worker = spawn(prefect_command() + ["worker", "start", "--pool", POOL, "--limit", str(WORKER_LIMIT)],
                   env, log_path)
    try:
        ready = wait_for_worker(120, worker, log_path)
        log(f"worker online after {ready:.1f} s; one warm-up child run")
        warmup = run_children(deployment, 1, together=False)
        log(f"{child_runs} child runs one after the other")
        sequential = run_children(deployment, child_runs, together=False)
        log(f"{child_runs} child runs at once")
        together = run_children(deployment, child_runs, together=True)
    finally:
        log("stopping the worker")
        stop(worker, "worker")
    return {"worker_ready_s": ready, "warmup": warmup, "sequential": sequential, "together": together,
            "log": str(log_path)}


def child_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    stats: dict[str, Any] = {"runs": len(runs), "completed": sum(r["state"] == "COMPLETED" for r in runs)}
    for field in ("total_s", "pickup_s", "start_s", "run_s"):
        values = [r[field] for r in runs if r[field] is not None]
        stats[field] = ({"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
                        if values else None)
    return stats


# ---- Report ----------------------------------------------------------------------------------------


def count_locked(*paths: Path) -> dict[str, Any]:
    """How often SQLite's 'database is locked' shows in each log, and the first few lines that say it."""
    counts: dict[str, Any] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if LOCKED in line]
            counts[path.name] = {"count": len(lines), "lines": lines[:3]}
    return counts




def print_tables(report: dict[str, Any]) -> None:
    config, graph = report["config"], report["graph"]
    print(f"\nPrefect {report['prefect']} on Python {report['python']}, {report['cpus']} CPUs; local API server "
          f"(SQLite, started in {report['server_startup_s']:.1f} s) on the same machine; "
          f"ThreadPoolTaskRunner(max_workers={config['workers']}); {config['kinds']} shards of "
          f"{config['shard_size']} placeholder items; load average {report['loadavg_start']:.2f} at the start, "
          f"{report['loadavg_end']:.2f} at the end; wall {report['wall_s']:.0f} s")
    print("\n1. The preprocess task graph with no-op tasks, per flow run\n")
    print("| shards S | person / garment | task runs | flow call s | flow body s | flushed s | recorded s "
          "| bench CPU s (in the call) | server CPU s (to recorded) | ms / task run | ms / shard |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in graph["runs"]:
        print(f"| {r['shards']} | {r['person_shards']} / {r['garment_shards']} | {r['task_runs']} "
              f"| {r['wall_s']:.2f} | {r['body_s']:.2f} | {r['flushed_s']:.2f} | {fmt(r['recorded_s'], '.2f')} "
              f"| {r['bench_cpu_s']:.2f} | {fmt(r['server_cpu_s'], '.2f')} | {r['ms_per_task_run']:.1f} | {r['ms_per_shard']:.1f} |")
    fit = graph["fit"]
    print("\n| fixed and marginal cost (flow call wall) | value |")
    print("|---|---:|")
    print(f"| one flow run, S=1 | {fmt(fit['s1_wall_s'], '.2f')} s |")
    print(f"| of which outside the flow body (create, start, finish the flow run), S=1 "
          f"| {fmt(fit['s1_outside_body_s'], '.2f')} s |")
    print(f"| fixed per flow run (intercept, line over S) | {fmt(fit['fixed_s_intercept'], '.2f')} s |")
    print(f"| marginal per shard (slope over S) | {fmt(fit['ms_per_shard_slope'], '.1f')} ms |")
    print(f"| marginal per task run (slope over task runs) | {fmt(fit['ms_per_task_run_slope'], '.1f')} ms |")
    print(f"\n2. Per image at shard size {config['shard_size']} (marginal ms per task run x task runs per shard "
          f"/ {config['shard_size']}), against {config['cpu_s_per_image']:g} s/image of CPU preprocessing\n")
    print("| shard | task runs | ms / shard | ms / image | % of preprocess time |")
    print("|---|---:|---:|---:|---:|")
    for row in graph["per_image"]:
        print(f"| {row['shard']} | {row['task_runs']:g} | {row['ms_per_shard']:.1f} | {row['ms_per_image']:.2f} "
              f"| {row['percent_of_cpu']:.2f} % |")
    worker = report.get("worker")
    if worker is not None:
        print("\n3. One no-op child flow run through a process worker (creation -> Completed, server timestamps)\n")
        if "error" in worker:
            print(f"failed: {worker['error']}")
        else:
            print("| runs | completed | total s mean (min-max) | pickup (-> Pending) s | process start + load "
                  "(-> Running) s | run (-> Completed) s |")
            print("|---|---:|---:|---:|---:|---:|")
            for label, key in (("warm-up, alone", "warmup"), ("one after the other", "sequential"),
                               ("all at once", "together")):
                s = worker["stats"][key]

                def cell(field: str, stats: dict = s) -> str:
                    v = stats[field]
                    return "-" if v is None else f"{v['mean']:.2f} ({v['min']:.2f}-{v['max']:.2f})"

                print(f"| {s['runs']} {label} | {s['completed']} | {cell('total_s')} | {cell('pickup_s')} "
                      f"| {cell('start_s')} | {cell('run_s')} |")
            print(f"\nworker online {worker['worker_ready_s']:.1f} s after start; query and prefetch every 1 s, "
                  f"limit {WORKER_LIMIT}")
    locked = report["database_locked"]
    print(f"\n'{LOCKED}' in the logs: "
          + (", ".join(f"{name} {found['count']}" for name, found in locked.items()) or "none"))
    for name, found in locked.items():
        for line in found["lines"]:
            print(f"- {name}: `{line[:200]}`")


# ---- Main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tasks.records.config import DEFAULT_SHARD_SIZE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=list(DEFAULT_SHARDS),
                        help="shard counts S, one flow run each (default 1 8 32 128)")
    parser.add_argument("--kinds", choices=KINDS, default="mixed",
                        help="mixed: ceil(S/2) person and floor(S/2) garment shards (default); person: all person")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"placeholder items per shard, and images per shard for the per-image table "
                             f"(default {DEFAULT_SHARD_SIZE}, tasks.records.config.DEFAULT_SHARD_SIZE)")
    parser.add_argument("--workers", type=int, default=2, help="ThreadPoolTaskRunner max_workers (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="flow runs per S; the median wall is kept (default 1)")
    parser.add_argument("--cpu-s-per-image", type=float, default=1.0,
                        help="CPU preprocess seconds per image to compare with (default 1.0)")
    parser.add_argument("--worker", action=argparse.BooleanOptionalAction, default=True,
                        help="also time no-op child flow runs through a process worker (default on)")
    parser.add_argument("--child-runs", type=int, default=4,
                        help="child flow runs one after the other, then as many at once (default 4)")
    parser.add_argument("--verbose", action="store_true", help="keep Prefect's INFO logs on the console")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (database, logs)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    args = parser.parse_args(argv)
    if min(args.shards) < 1 or args.shard_size < 1 or args.workers < 1 or args.repeats < 1 or args.child_runs < 1:
        parser.error("--shards, --shard-size, --workers, --repeats and --child-runs must be positive")
    if args.cpu_s_per_image <= 0:
        parser.error("--cpu-s-per-image must be positive")
    return args


def quiet_console() -> None:
    """Prefect's per-task-run INFO lines still go to the API; only the console shows warnings and up."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.setLevel(logging.WARNING)


def raise_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    import prefect

    args = parse_args(argv)
    if not args.verbose:
        quiet_console()
    signal.signal(signal.SIGTERM, raise_on_sigterm)  # so the finally blocks stop the server and the worker
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="vitonprep-bench-orchestration-"))
    report: dict[str, Any] = {"prefect": prefect.__version__, "python": platform.python_version(),
                              "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0],
                              "config": {k: v for k, v in vars(args).items() if k not in ("json", "keep", "verbose")}}
    try:
        with prefect_server(work) as server:
            report["server_startup_s"] = server["startup_s"]
            log("warm-up flow run, S=1")
            run_graph(server, 1, args.kinds, args.shard_size, args.workers)
            runs = []
            for shards in args.shards:
                repeats = []
                for _ in range(args.repeats):
                    result = run_graph(server, shards, args.kinds, args.shard_size, args.workers)
                    log(f"S={shards} ({result['task_runs']} task runs): flow call {result['wall_s']:.2f} s, "
                        f"recorded after {fmt(result['recorded_s'], '.2f')} s")
                    repeats.append(result)
                repeats.sort(key=lambda r: r["wall_s"])
                runs.append({**repeats[len(repeats) // 2], "repeat_walls_s": [r["wall_s"] for r in repeats]})
            report["graph"] = {"runs": runs, **summarise_graph(runs, args.shard_size, args.cpu_s_per_image)}
            if args.worker:
                try:
                    worker = bench_worker(server, work, args.child_runs)
                    worker["stats"] = {key: child_stats(worker[key]) for key in ("warmup", "sequential", "together")}
                    report["worker"] = worker
                except Exception as error:  # noqa: BLE001 - the optional part: report it, keep the rest
                    log(f"worker part failed: {error}")
                    report["worker"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
        report["database_locked"] = count_locked(work / "server.log", work / "worker.log")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = time.perf_counter() - started
    report["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_tables(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; the server and the worker are stopped")
        sys.exit(130)
