"""Stand the vitonprep service up on this machine, and take it down again on Ctrl-C or SIGTERM.

In order: a Prefect server (SQLite under --home), the `gpu-process` work pool from
deployments/gpu-process.json, one GPU slot limit per worker, every deployment in prefect.yaml,
the automations in deployments/automations.yaml, and --workers process workers. Then it waits; on
Ctrl-C or SIGTERM it stops the workers, then the server, and kills whatever they left behind.

    python deployments/stack.py                        # UI at http://127.0.0.1:4200
    python deployments/stack.py --workers 2 --port 4300 --home /tmp/vitonprep-stack
    PREFECT_API_URL=http://127.0.0.1:4200/api prefect deployment run preprocess/catalog

The UI is served for the stack's own port (its API URL is the stack's). The deployments' schedules
(the nightly catalog run) are paused unless --schedules is given: a local stack runs what you start.

The deployments' URLs come from --catalog, --dataset, --tryon-out, --checkpoints, --parser-data and
--parser-out (default: the VITONPREP_* environment, else folders under --home). With --ready-file,
a JSON file with the API URL and the process ids is written once everything is up. Every process started carries VITONPREP_STACK=<token> in its environment; that is
how the shutdown finds the flow-run processes the workers started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
POOL = "gpu-process"
POOL_TEMPLATE = PROJECT_ROOT / "deployments" / "gpu-process.json"
AUTOMATIONS = PROJECT_ROOT / "deployments" / "automations.yaml"
SERVER_START_TIMEOUT_S = 180.0
STOP_GRACE_S = 20.0
URL_ENV = {
    "catalog": "VITONPREP_CATALOG",
    "dataset": "VITONPREP_DATASET",
    "tryon_out": "VITONPREP_TRYON_OUT",
    "checkpoints": "VITONPREP_CHECKPOINTS",
    "parser_data": "VITONPREP_PARSER_DATA",
    "parser_out": "VITONPREP_PARSER_OUT",
}
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "YOLO_OFFLINE": "1",
               "YOLO_AUTOINSTALL": "0"}


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


class Stack:
    """The processes of one local stack, all marked with one token in their environment."""

    def __init__(self, home: Path, host: str, port: int):
        self.home, self.host, self.port = home, host, port
        self.ui_url = f"http://{host}:{port}"
        self.api_url = f"{self.ui_url}/api"
        self.token = uuid.uuid4().hex
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, **OFFLINE_ENV, "PREFECT_HOME": str(self.home), "VITONPREP_STACK": self.token}
        env.update(extra)
        return env

    def client_env(self, **extra: str) -> dict[str, str]:
        return self.env(PREFECT_API_URL=self.api_url, PREFECT_UI_URL=self.ui_url, **extra)

    def prefect(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run one `prefect` CLI command against the stack's server; its output, or an error with it."""
        command = [sys.executable, "-m", "prefect", "--no-prompt", *args]
        log("prefect " + " ".join(args))
        done = subprocess.run(
            command, cwd=PROJECT_ROOT, env=env or self.client_env(), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def start_server(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        # The UI in the browser talks to the API URL it is given, 127.0.0.1:4200 unless told: tell it ours.
        env = self.env(PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
                       PREFECT_UI_API_URL=self.api_url, PREFECT_UI_URL=self.ui_url)
        env.pop("PREFECT_API_URL", None)
        log(f"prefect server start --host {self.host} --port {self.port} (database {self.home / 'prefect.db'})")
        with open(self.home / "server.log", "ab") as out:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(self.port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"the server exited with {self.server.returncode}; see {self.home / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        log(f"server up: {self.api_url} (UI http://{self.host}:{self.port})")
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the server did not answer within {SERVER_START_TIMEOUT_S:.0f} s")

    def create_pool(self) -> None:
        self.prefect("work-pool", "create", POOL, "--type", "process", "--base-job-template", str(POOL_TEMPLATE),
                     "--overwrite")

    def create_gpu_limits(self, names: list[str], slots: int) -> None:
        """One global concurrency limit per GPU machine (tasks/infra/runtime.py holds it around model stages)."""
        existing = self.prefect("gcl", "ls")
        for name in names:
            if name in existing:
                self.prefect("gcl", "update", name, "--limit", str(slots))
            else:
                self.prefect("gcl", "create", name, "--limit", str(slots))

    def deploy(self, urls: dict[str, str]) -> None:
        env = self.client_env(**{URL_ENV[name]: url for name, url in urls.items()})
        self.prefect("deploy", "--all", "--prefect-file", str(PROJECT_ROOT / "prefect.yaml"), env=env)

    def pause_schedules(self) -> None:
        """Every deployment schedule paused, and the runs they already scheduled deleted."""
        self.prefect("deployment", "schedule", "pause", "--all")
        os.environ.update(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(self.home))
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType

        scheduled = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(flow_run_filter=scheduled):
                if run.deployment_id is not None and run.auto_scheduled:
                    client.delete_flow_run(run.id)

    def create_automations(self) -> None:
        """The automations file's automations, replacing any of the same names."""
        import yaml

        names = [automation["name"] for automation in yaml.safe_load(AUTOMATIONS.read_text())["automations"]]
        os.environ.update(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(self.home))
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            for name in names:
                for automation in client.read_automations_by_name(name):
                    client.delete_automation(automation.id)
        self.prefect("automation", "create", "--from-file", str(AUTOMATIONS))

    def start_workers(self, count: int, limit: int, gpu_limits: list[str], query_seconds: float) -> None:
        for index, gpu_limit in zip(range(count), gpu_limits):
            name = f"{socket.gethostname()}-{index + 1}"
            env = self.client_env(VITONPREP_GPU_LIMIT=gpu_limit, PREFECT_WORKER_QUERY_SECONDS=str(query_seconds),
                                  PREFECT_WORKER_PREFETCH_SECONDS=str(max(query_seconds, 1.0)))
            log(f"prefect worker start --pool {POOL} --name {name} --limit {limit} (GPU slot {gpu_limit})")
            with open(self.home / f"worker-{index + 1}.log", "ab") as out:
                self.workers.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", name,
                     "--limit", str(limit), "--type", "process"],
                    cwd=self.home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                ))

    def stop(self) -> None:
        """Workers first (they stop taking runs), then the server, then anything carrying our token."""
        for process in [*self.workers, self.server]:
            if process is not None and process.poll() is None:
                terminate_group(process)
        leftovers = marked_processes(self.token)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if leftovers:
            log(f"killed {len(leftovers)} processes left behind")
        log("stopped")


def terminate_group(process: subprocess.Popen) -> None:
    """SIGTERM the process's group, wait, then SIGKILL it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def marked_processes(token: str) -> list[int]:
    """Ids of live processes whose environment carries VITONPREP_STACK=<token> (Linux /proc)."""
    marker = f"VITONPREP_STACK={token}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone, or not ours to read
    return found


def default_urls(home: Path, args: argparse.Namespace) -> dict[str, str]:
    urls = {}
    for name, env in URL_ENV.items():
        url = getattr(args, name) or os.environ.get(env) or str(home / name.replace("_", "-"))
        if "://" not in url:
            Path(url).mkdir(parents=True, exist_ok=True)
        urls[name] = url
    return urls


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See deployments/README.md.")
    parser.add_argument("--home", type=Path, default=PROJECT_ROOT / ".stack",
                        help="PREFECT_HOME of the server (its SQLite database and logs); default .stack/")
    parser.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4200, help="server port (default 4200)")
    parser.add_argument("--workers", type=int, default=1, help="process workers to start (default 1)")
    parser.add_argument("--worker-limit", type=int, default=4, help="flow runs each worker runs at once (default 4)")
    parser.add_argument("--gpu-slots", type=int, default=1, help="model stages one GPU runs at once (default 1)")
    parser.add_argument("--shared-gpu", action="store_true",
                        help="the workers share one machine's GPU (one slot limit for all, not one each)")
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="how often workers ask for runs (default 5)")
    parser.add_argument("--catalog", help="catalog URL for the deployments (default $VITONPREP_CATALOG or <home>/catalog)")
    parser.add_argument("--dataset", help="dataset URL (default $VITONPREP_DATASET or <home>/dataset)")
    parser.add_argument("--tryon-out", help="try-on output URL (default $VITONPREP_TRYON_OUT or <home>/tryon-out)")
    parser.add_argument("--checkpoints", help="checkpoints URL (default $VITONPREP_CHECKPOINTS or <home>/checkpoints)")
    parser.add_argument("--parser-data", help="parser dataset URL (default $VITONPREP_PARSER_DATA or <home>/parser-data)")
    parser.add_argument("--parser-out", help="parser training output URL (default $VITONPREP_PARSER_OUT or <home>/parser-out)")
    parser.add_argument("--ready-file", type=Path, help="write the API URL and process ids here once up")
    parser.add_argument("--schedules", action="store_true",
                        help="keep the deployments' schedules active (default: paused, nothing starts on its own)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = args.home.resolve()
    stack = Stack(home, args.host, args.port)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start_server()
        stack.create_pool()
        host = socket.gethostname()
        gpu_limits = ([f"gpu:{host}"] * args.workers if args.shared_gpu or args.workers == 1
                      else [f"gpu:{host}-{i + 1}" for i in range(args.workers)])
        stack.create_gpu_limits(sorted(set(gpu_limits)), args.gpu_slots)
        urls = default_urls(home, args)
        stack.deploy(urls)
        if args.schedules:
            log("schedules active: the nightly catalog run will start on its own")
        else:
            stack.pause_schedules()
            log("schedules paused (--schedules to keep them): runs start when you start them")
        stack.create_automations()
        stack.start_workers(args.workers, args.worker_limit, gpu_limits, args.poll_seconds)
        if args.ready_file:
            args.ready_file.write_text(json.dumps({
                "api_url": stack.api_url, "ui_url": stack.ui_url, "token": stack.token, "urls": urls,
                "server_pid": stack.server.pid, "worker_pids": [w.pid for w in stack.workers],
            }))
        log(f"ready: UI {stack.ui_url}, PREFECT_API_URL={stack.api_url}; Ctrl-C stops everything")
        while True:
            for worker in stack.workers:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker {worker.pid} exited with {worker.returncode}; see {home}/worker-*.log")
            if stack.server.poll() is not None:
                raise RuntimeError(f"the server exited with {stack.server.returncode}; see {home}/server.log")
            time.sleep(1.0)
    except KeyboardInterrupt:
        log("stopping")
        return 0
    except RuntimeError as error:
        log(f"error: {error}")
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
