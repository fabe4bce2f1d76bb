"""Local weight files: read a state dict safely and check its keys and shapes, with errors that name the file."""

from __future__ import annotations

import torch


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A local state dict file as a plain dict of tensors; ValueError naming `path` when it is not one."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises pickle and zip errors of many types
        raise ValueError(f"{path} is not a PyTorch state dict file: {exc}") from exc
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in loaded.items()
    ):
        raise ValueError(f"{path} holds no state dict (a dict of tensors)")
    return dict(loaded)


def check_state(
    path: str,
    state: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    what: str,
    ignored_prefixes: tuple[str, ...] = (),
) -> None:
    """ValueError naming `path` and the first few missing, unexpected and wrongly shaped keys, if any."""
    unexpected = sorted(k for k in state if k not in expected and not k.startswith(ignored_prefixes))
    missing = sorted(k for k in expected if k not in state)
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} != {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    )
    if unexpected or missing or wrong_shape:
        found = {"missing": missing, "unexpected": unexpected, "wrong shape": wrong_shape}
        problems = [
            f"{label}: {items[:5]}{' ...' * (len(items) > 5)}" for label, items in found.items() if items
        ]
        raise ValueError(f"{path} is not {what}; " + "; ".join(problems))
