"""Names vulture reports as unused that are used by reflection (`make lint` runs vulture with this file).

One line per name and why.
"""

_ = None  # vulture only counts the attribute names below as used; nothing here runs

# torch.nn.Module.__call__ runs `forward`.
_.forward
# torch attributes set for their effect: cuDNN's autotuner; torchvision Inception v3's heads we drop.
_.benchmark
_.AuxLogits
_.fc
# pydantic reads `model_config` from the class body.
_.model_config
# s3fs reads `retries` on its filesystem (tasks/infra/store.py turns its own retry loop off).
_.retries
# vitonhd_models.train.StageTrainer dispatches with getattr(self, f"_step_{stage}").
_._step_seg
_._step_gmm
_._step_alias
# Prefect runs these from their entrypoint strings: prefect.yaml's and bench/orchestration.py's.
_.preprocess_part
_.noop_child
# The CIHP label table (contract §1.3) names all 20 labels, used or not.
_.HAT
_.GLOVE
_.SOCKS
_.SCARF
# Arguments a caller's signature imposes: __exit__'s, Prefect's retry_condition_fn(task, task_run, state),
# Ultralytics' check_font(font).
_.exc_info
_.task_run
_.font
