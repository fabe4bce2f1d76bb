"""prefect.yaml: every deployment points at a real flow and passes parameters that flow takes."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]


def load_entrypoint(entrypoint: str):
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location(Path(path).stem, PROJECT_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_is_a_flow_taking_its_parameters(deployment):
    flow = load_entrypoint(deployment["entrypoint"])
    assert flow.name == deployment["entrypoint"].split(":")[1]
    accepted = set(inspect.signature(flow.fn).parameters)
    unknown = set(deployment.get("parameters", {})) - accepted
    assert not unknown, f"{deployment['name']} passes parameters the flow does not take: {unknown}"


def test_the_nightly_run_never_overlaps_itself():
    catalog = next(d for d in DEPLOYMENTS if d["name"] == "catalog")
    assert catalog["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert catalog["schedules"][0]["cron"] and catalog["schedules"][0]["timezone"]
