"""End to end as a service: `deployments/stack.py` (a real `prefect server start`, the process pool,
every deployment of prefect.yaml, three process workers), then `prefect deployment run preprocess/catalog`.

One nightly scenario runs once per module; each test checks one thing it must have done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.infra.store import Store

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 900.0  # only stops a hung test; no speed is asserted


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, what: str, timeout: float = HANG_GUARD_S, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what}")


def tiny_checkpoints(folder: Path) -> None:
    """Small VITON-HD weights with their sidecars, as the train flow writes them (try-on stays quick on a CPU)."""
    import torch

    from vitonhd_models.checkpoints import Architecture, build_network, save_final

    tiny = Architecture(load_height=512, load_width=384, seg_ngf=8, gmm_ngf=8, alias_ngf=8, alias_norm_hidden=16)
    torch.manual_seed(0)
    for stage in ("seg", "gmm", "alias"):
        save_final(Store(str(folder)), stage, build_network(stage, tiny), tiny)


class Stack:
    def __init__(self, root: Path, process: subprocess.Popen, info: dict):
        self.root, self.process, self.info = root, process, info
        self.api_url = info["api_url"]

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)

    def prefect(self, *args: str) -> str:
        env = {**os.environ, "PREFECT_API_URL": self.api_url, "VITONPREP_STACK": self.info["token"]}
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args], env=env, capture_output=True, text=True,
            check=False, cwd=PROJECT_ROOT,
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def run_deployment(self, name: str, **params) -> str:
        args = []
        for key, value in params.items():
            args += ["--param", f"{key}={json.dumps(value)}"]
        out = self.prefect("deployment", "run", name, *args)
        return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    def deployment_parameters(self, name: str) -> dict:
        with self.client() as client:
            return client.read_deployment_by_name(name).parameters

    def flow_run(self, run_id: str):
        with self.client() as client:
            return client.read_flow_run(run_id)

    def wait_final(self, run_id: str):
        return wait_until(lambda: (run := self.flow_run(run_id)).state.is_final() and run, f"flow run {run_id}")

    def runs_of(self, deployment: str) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

        with self.client() as client:
            dep = client.read_deployment_by_name(deployment)
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[dep.id]))
            )


@pytest.fixture(scope="module")
def stack(tmp_path_factory, samples_dir):
    root = tmp_path_factory.mktemp("service")
    catalog = root / "catalog"
    shutil.copytree(samples_dir / "image", catalog / "persons")
    shutil.copytree(samples_dir / "cloth", catalog / "garments")
    tiny_checkpoints(root / "checkpoints")
    ready = root / "ready.json"
    log = open(root / "stack.log", "wb")  # noqa: SIM115 - open for the stack's whole life, closed below
    # 3 workers of 2 flow runs each: the 3 children of the first run land on at least two of them, and
    # the parent and its children leave 2 slots free, so the second catalog run is picked up (and
    # cancelled) while the first one runs.
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "deployments" / "stack.py"), "--home", str(root / "prefect"),
         "--port", str(free_port()), "--workers", "3", "--worker-limit", "2", "--poll-seconds", "1",
         "--catalog", str(catalog), "--dataset", str(root / "dataset"), "--tryon-out", str(root / "tryon"),
         "--checkpoints", str(root / "checkpoints"), "--ready-file", str(ready)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, "the stack to come up", every=0.5)
        assert process.poll() is None, (root / "stack.log").read_text()[-5000:]
        yield Stack(root, process, json.loads(ready.read_text()))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def nightly(stack):
    """A catalog run split into child runs, a second run started while it runs, then a rerun."""
    roster = sorted(path.stem for path in (stack.root / "catalog" / "persons").iterdir())[:2]
    # A run's parameter group replaces the deployment's whole: start from the deployment's, as the UI does.
    deployed = stack.deployment_parameters("preprocess/catalog")
    first = stack.run_deployment("preprocess/catalog", config={**deployed["config"], "shard_size": 2},
                                 policy={**deployed["policy"], "items_per_child_run": 3, "tryon_persons": roster})
    wait_until(lambda: stack.flow_run(first).state.is_running(), "the first run to start")
    second = stack.run_deployment("preprocess/catalog")
    first_run, second_run = stack.wait_final(first), stack.wait_final(second)
    tryons = wait_until(lambda: stack.runs_of("tryon/bulk"), "the chained try-on run")
    tryon_runs = [stack.wait_final(str(run.id)) for run in tryons]
    rerun = stack.wait_final(stack.run_deployment("preprocess/catalog"))
    return {"first": first_run, "second": second_run, "tryon": tryon_runs, "rerun": rerun, "roster": roster}


def test_the_catalog_run_completes_and_writes_the_dataset_and_manifest(stack, nightly):
    assert nightly["first"].state.is_completed(), nightly["first"].state.message
    dataset = Store(str(stack.root / "dataset"))
    # 4 garments' masks and, under each person's name, the mask of their paired cloth
    assert len(dataset.listdir("test/image")) == 4 and len(dataset.listdir("test/cloth-mask")) == 8
    assert len(dataset.read_text("test_pairs.txt").splitlines()) == 4
    from tasks.records.manifest import ok_items, read_current

    current = read_current(dataset, "test")
    assert len(ok_items(current, "person", ("ingest", "pose", "parse", "agnostic"))) == 4
    assert len(ok_items(current, "garment", ("ingest", "cloth_mask"))) == 4


def test_the_run_is_named_after_what_it_covers(stack, nightly):
    assert nightly["first"].name == f"test <- {stack.root / 'catalog'}"


def test_child_runs_of_the_shard_range_deployment_ran_on_several_workers(stack, nightly):
    children = stack.runs_of("preprocess/shard-range")
    assert len(children) == 3, [run.name for run in children]  # 8 items, at most 3 per child
    assert all(run.state.is_completed() for run in children), [(run.name, run.state.name) for run in children]
    workers = {run.labels.get("prefect.worker.name") for run in children}
    assert len(workers) >= 2, f"children ran on {workers} only"
    parent = nightly["first"].name
    assert sorted(run.name for run in children) == [f"{parent} · part {i} of 3" for i in (1, 2, 3)], "named by the parent"


def test_a_second_catalog_run_while_one_is_running_is_cancelled(nightly):
    assert nightly["second"].state.is_cancelled(), nightly["second"].state.name


def test_tryon_was_started_once_for_the_new_garments_on_the_roster(stack, nightly):
    assert len(nightly["tryon"]) == 1, "the rerun added no garments, so it must not start another try-on"
    run = nightly["tryon"][0]
    assert run.state.is_completed(), run.state.message
    stems = sorted(Path(name).stem for name in (stack.root / "catalog" / "garments").iterdir())
    given = run.parameters["config"]
    assert given["garments"] == stems
    assert given["persons"] == nightly["roster"]
    assert given["out"] == str(stack.root / "tryon"), "the deployment's own output must survive the chaining"
    assert len(list((stack.root / "tryon" / "results").iterdir())) == 4 * 2


def test_the_rerun_finds_nothing_to_do_and_writes_nothing(stack, nightly):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    assert nightly["rerun"].state.is_completed()
    with stack.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[nightly["rerun"].id]))
        )
    report = next(a for a in artifacts if a.type == "markdown").data
    assert "0 ok of 0 processed" in report and "started" not in report, report
    runs = sorted(path.name for path in (stack.root / "dataset" / "manifests" / "test").iterdir())
    assert len(runs) == 1 + 3, f"only the first run and its 3 child runs write to the manifest: {runs}"


def test_the_run_publishes_progress_a_keyed_stage_table_and_a_contact_sheet(stack, nightly):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with stack.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[nightly["first"].id]))
        )
    by_type = {}
    for artifact in artifacts:
        by_type.setdefault(artifact.type, []).append(artifact)
    assert [a.data for a in by_type["progress"]] == [100.0]
    table = next(a for a in by_type["table"] if a.key == "preprocess-catalog-stages")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {row["stage"] for row in rows} == {"ingest", "pose", "pose_gate", "parse", "agnostic", "densepose", "cloth_mask"}
    assert sum(row["ok"] for row in rows if row["stage"] == "ingest") == 8
    report = next(a for a in by_type["markdown"] if a.key == "preprocess-catalog-summary")
    assert "data:image/jpeg;base64," in report.data and "started tryon/bulk" in report.data


def test_deployment_parameters_render_with_descriptions(stack):
    with stack.client() as client:
        deployment = client.read_deployment_by_name("preprocess/catalog")
    schema = deployment.parameter_openapi_schema
    assert {"config", "selection", "policy"} <= set(schema["properties"])
    policy = schema["definitions"]["RunPolicy"]["properties"]
    assert policy["max_failed_fraction"]["description"] and policy["tryon_deployment"]["description"]


def test_the_automations_are_installed(stack):
    with stack.client() as client:
        names = {automation.name for automation in client.read_automations()}
    assert {"vitonprep-cancel-stuck-preprocess", "vitonprep-cancel-stuck-tryon"} <= names


def test_the_ui_is_served_with_the_stacks_own_api_url(stack):
    import urllib.request

    with urllib.request.urlopen(f"{stack.info['ui_url']}/ui-settings", timeout=10) as response:
        settings = json.loads(response.read())
    assert settings["api_url"] == stack.api_url, f"the UI would talk to {settings['api_url']}"


def test_a_local_stack_starts_with_its_schedules_paused(stack):
    with stack.client() as client:
        deployment = client.read_deployment_by_name("preprocess/catalog")
        schedules = client.read_deployment_schedules(deployment.id)
    assert schedules and not any(schedule.active for schedule in schedules), schedules
    assert not [run for run in stack.runs_of("preprocess/catalog") if run.auto_scheduled], "a nightly run was scheduled"


def rendered_page(url: str) -> subprocess.CompletedProcess:
    """The DOM of a UI page after its scripts ran, from headless Chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("VITONPREP_UI_SMOKE") == "required":  # .ci/run installs it
            pytest.fail("chromium is not installed")
        pytest.skip("no chromium here (.ci/run installs Debian's package)")
    return subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", "--virtual-time-budget=30000", url],
        capture_output=True, text=True, timeout=180, check=False,
    )


def test_the_flow_run_page_renders_in_a_headless_browser(stack, nightly):
    run = nightly["first"]
    done = rendered_page(f"{stack.info['ui_url']}/runs/flow-run/{run.id}")
    import html

    shown = run.name in done.stdout or html.escape(run.name, quote=False) in done.stdout
    assert shown, f"the page shows no {run.name!r}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Unable to connect" not in done.stdout


def test_the_custom_run_form_shows_the_typed_configurations_fields(stack):
    """The UI renders the parameter groups as forms: each model's fields with their descriptions."""
    with stack.client() as client:
        deployment = client.read_deployment_by_name("preprocess/catalog")
    page = rendered_page(f"{stack.info['ui_url']}/deployments/deployment/{deployment.id}/run").stdout
    for shown in ("Shard Size", "Images per task run", "Full Refresh", "Max Failed Fraction"):
        assert shown in page, f"the custom run form shows no {shown!r}:\n{page[-2000:]}"


def test_stopping_the_stack_leaves_no_process_behind(stack, nightly):
    """Runs last in this module: stops the stack and looks for any process carrying its token."""
    sys.path.insert(0, str(PROJECT_ROOT / "deployments"))
    from stack import marked_processes

    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(timeout=120) == 0
    assert marked_processes(stack.info["token"]) == []

