"""prefect.yaml and deployments/: every deployment points at a real flow and passes parameters it takes."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]


def by_name(name: str) -> dict:
    return next(d for d in DEPLOYMENTS if d["name"] == name)


def load_entrypoint(entrypoint: str):
    """A module-path entrypoint (`package.module.flow`): workers run the installed package, not a checkout."""
    module, _, name = entrypoint.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_is_a_flow_taking_its_parameters(deployment):
    flow = load_entrypoint(deployment["entrypoint"])
    function = deployment["entrypoint"].rsplit(".", 1)[1]
    # preprocess_part is the preprocess flow's child-run form: deployed as preprocess/shard-range
    assert flow.name == {"preprocess_part": "preprocess"}.get(function, function.replace("_", "-"))
    parameters = deployment.get("parameters", {})
    if "work_list" in inspect.signature(flow.fn).parameters:
        assert not parameters, "the shard-range deployment gets everything from the parent run"
        return
    # The flow validates them as a run would ({{ $VAR }} placeholders are strings until `prefect deploy`).
    flow.validate_parameters(parameters)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_a_deployment_restates_no_default(deployment):
    """The models hold every default: prefect.yaml writes only the values that differ."""
    flow = load_entrypoint(deployment["entrypoint"])
    signature = inspect.signature(flow.fn, eval_str=True)
    for group, values in deployment.get("parameters", {}).items():
        fields = signature.parameters[group].annotation.model_fields
        restated = {name: value for name, value in values.items()
                    if not fields[name].is_required() and fields[name].get_default(call_default_factory=True) == value}
        assert not restated, f"{deployment['name']}: {group} restates its defaults {restated}"


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_every_deployment_runs_on_the_gpu_process_pool(deployment):
    assert deployment["work_pool"]["name"] == "gpu-process"


def test_the_nightly_run_never_overlaps_itself():
    catalog = by_name("catalog")
    assert catalog["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert catalog["schedules"][0]["cron"] and catalog["schedules"][0]["timezone"]


def test_the_nightly_run_fans_out_to_the_shard_range_deployment_and_chains_tryon():
    from flows.fanout import CHILD_DEPLOYMENT

    names = {f"{load_entrypoint(d['entrypoint']).name}/{d['name']}" for d in DEPLOYMENTS}
    assert CHILD_DEPLOYMENT in names, f"child runs need the {CHILD_DEPLOYMENT} deployment"
    assert by_name("catalog")["parameters"]["policy"]["tryon_deployment"] in names


def form_fields(flow) -> dict[str, dict]:
    """Every field the UI's run form shows for `flow`: its parameters and the fields of their models."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(flow.fn)
    fields = {name: prop for name, prop in schema.properties.items()}
    for model, definition in (schema.definitions or {}).items():
        fields.update({f"{model}.{name}": prop for name, prop in definition.get("properties", {}).items()})
    return fields


def test_flow_parameters_all_have_descriptions_for_the_ui():
    """Prefect builds the UI form from the signature, the docstring's Args and the models' field
    descriptions: every parameter and every field needs one."""
    for deployment in DEPLOYMENTS:
        flow = load_entrypoint(deployment["entrypoint"])
        undocumented = [name for name, prop in form_fields(flow).items() if not prop.get("description")]
        assert not undocumented, f"{flow.name}: parameters without a description: {undocumented}"


def test_the_typed_configuration_is_the_flows_parameters():
    """One source of every default: each flow takes its models, not their fields one by one."""
    from tasks.records.config import ParserTrainConfig, RunPolicy, Selection, TrainConfig, TryOnConfig
    from tasks.stages.registry import PreprocessConfig

    expected = {
        "flows.preprocess.preprocess": {"config": PreprocessConfig, "selection": Selection, "policy": RunPolicy},
        "flows.train.train": {"config": TrainConfig},
        "flows.tryon.tryon": {"config": TryOnConfig},
        "flows.train_parser.train_parser": {"config": ParserTrainConfig},
    }
    for entrypoint, models in expected.items():
        annotations = {name: parameter.annotation for name, parameter in
                       inspect.signature(load_entrypoint(entrypoint).fn, eval_str=True).parameters.items()}
        assert annotations == models, f"{entrypoint} takes {annotations}"


def test_work_pool_template_keeps_flow_runs_offline():
    template = json.loads((PROJECT_ROOT / "deployments" / "gpu-process.json").read_text())
    env = template["variables"]["properties"]["env"]["default"]
    assert env["YOLO_OFFLINE"] == "1" and env["YOLO_AUTOINSTALL"] == "0"
    assert set(template["job_configuration"]) >= {"command", "env", "working_dir"}


def test_automations_file_is_valid_for_prefect():
    from prefect.events.schemas.automations import AutomationCore

    automations = yaml.safe_load((PROJECT_ROOT / "deployments" / "automations.yaml").read_text())["automations"]
    assert automations
    for automation in automations:
        AutomationCore.model_validate(automation)


def test_descriptions_hold_no_placeholder_the_ui_would_swallow_as_html():
    """`yolo:<out>/run/...` shows as `yolo:/run/...` in both UIs: placeholders are written {like_this}."""
    import re


    tag = re.compile(r"<[A-Za-z][^<>]*>")
    for deployment in DEPLOYMENTS:
        assert not tag.search(deployment.get("description") or ""), deployment["name"]
        flow = load_entrypoint(deployment["entrypoint"])
        for name, prop in form_fields(flow).items():
            assert not tag.search(prop.get("description") or ""), f"{flow.name}.{name}: {prop['description']}"


def test_only_the_shard_range_deployment_takes_a_work_list():
    from prefect.utilities.callables import parameter_schema

    for deployment in DEPLOYMENTS:
        names = set(parameter_schema(load_entrypoint(deployment["entrypoint"]).fn).properties)
        assert ("work_list" in names) == (deployment["name"] == "shard-range"), deployment["name"]
