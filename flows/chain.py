"""Chaining: what a finished preprocess run starts downstream.

- `tryon_deployment` runs for exactly the garments this run added or changed, on the person roster.
- `train_deployment` runs once `train_min_new_pairs` pairs arrived since it was last started.

Both are started with `run_deployment(timeout=0, as_subflow=False)`: they outlive the preprocess
run and queue on the pool like any other run. Their idempotency keys are derived from this flow
run's id and what they cover, so a retried preprocess run never starts the same try-on or training twice.
What they are given goes over the deployment's own `config` (its output, checkpoints, stage, ...):
Prefect lays a run's parameters over its deployment's one name deep, so a group passed alone would
drop the deployment's values.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from tasks.infra.redaction import redact
from tasks.infra.store import Store
from tasks.records.config import RunPolicy
from tasks.stages.registry import PreprocessConfig
from vitonhd_models import contract

TRAIN_MARKER = "train-started.json"  # under _work/<split>/: the pair count when training last started


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def deployment_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The `config` parameter of a run of deployment `name`: the deployment's own, `overrides` on top."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
    return {**(deployment.parameters or {}).get("config", {}), **overrides}


def start_tryon(
    policy: RunPolicy, config: PreprocessConfig, garments: list[str], persons: list[str], logger: Any
) -> dict[str, Any] | None:
    """Start the try-on deployment for `garments` on the roster (or `persons`, the dataset's); None if nothing to do."""
    if policy.tryon_deployment is None or not garments:
        return None
    roster = policy.tryon_persons or persons
    if not roster:
        logger.info("no persons to render the %d new garments on; try-on not started", len(garments))
        return None
    key = "tryon:" + digest(flow_run.get_id(), sorted(garments), sorted(roster))
    run = run_deployment(
        policy.tryon_deployment,
        parameters={"config": deployment_config(
            policy.tryon_deployment, dataset=config.out, split=config.split, pairs=None, persons=sorted(roster),
            garments=sorted(garments), storage_options=config.storage_options,
            storage_secret_block=config.storage_secret_block,
        )},
        timeout=0,
        as_subflow=False,
        idempotency_key=key,
        tags=["chained"],
    )
    logger.info("started %s (run %s) for %d new garments on %d persons",
                policy.tryon_deployment, run.name, len(garments), len(roster))
    return {"deployment": policy.tryon_deployment, "flow_run_id": str(run.id), "flow_run_name": run.name,
            "garments": len(garments), "persons": len(roster)}


def start_train(policy: RunPolicy, config: PreprocessConfig, pairs: int, logger: Any) -> dict[str, Any] | None:
    """Start the train deployment when `pairs` is at least `train_min_new_pairs` above the last start's count."""
    if policy.train_deployment is None:
        return None
    if config.split != "train":
        logger.warning("train_deployment is set but this run writes the %s split; training reads train pairs",
                       config.split)
        return None
    out = Store(config.out, config.storage_options)
    marker = posixpath.join(contract.WORK_DIR, config.split, TRAIN_MARKER)
    last = json.loads(out.read_text(marker))["pairs"] if out.exists(marker) else 0
    if pairs - last < policy.train_min_new_pairs:
        logger.info("%d new pairs since training last started (%d needed); training not started",
                    pairs - last, policy.train_min_new_pairs)
        return None
    run = run_deployment(
        policy.train_deployment,
        parameters={"config": deployment_config(
            policy.train_deployment, dataset=config.out, split=config.split, storage_options=config.storage_options,
            storage_secret_block=config.storage_secret_block,
        )},
        timeout=0,
        as_subflow=False,
        idempotency_key="train:" + digest(redact(config.out), config.split, pairs),
        tags=["chained"],
    )
    out.write_text(marker, json.dumps({"pairs": pairs, "flow_run_id": str(run.id)}) + "\n")
    logger.info("started %s (run %s): %d new pairs", policy.train_deployment, run.name, pairs - last)
    return {"deployment": policy.train_deployment, "flow_run_id": str(run.id), "flow_run_name": run.name,
            "new_pairs": pairs - last}
