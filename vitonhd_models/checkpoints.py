"""Build the three networks and load their weights: the official files or ours, from any `Files` (a `tasks.infra.store.Store`).

A checkpoint folder holds `seg_final.pth`, `gmm_final.pth` and `alias_final.pth` (contract §1.10: bare
state dicts, the names `test.py` expects). The `train` flow writes the same three names, so its output
loads here and in the official `test.py` alike; next to each it writes `<name>_final.json` with the
architecture it trained (load size, widths), which the official files do not have and do not need.

A file that is absent leaves its network randomly initialised; the caller is told through
`checkpoint_ids` (`RANDOM_INIT`), and the tryon flow says so in its manifest and log.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, fields, replace

import torch

from vitonhd_models import contract
from vitonhd_models.files import Files
from vitonhd_models.networks import ALIAS_NORM_HIDDEN, GMM, ALIASGenerator, SegGenerator, init_weights
from vitonhd_models.pipeline import TryOnNetworks

log = logging.getLogger(__name__)

STAGES = ("seg", "gmm", "alias")
RANDOM_INIT = "random-init"
CHECKPOINT_ID_CHARS = 16  # sha256 prefix shown in manifests


def checkpoint_name(stage: str) -> str:
    """Contract §1.10: `seg_final.pth`, `gmm_final.pth`, `alias_final.pth`."""
    return f"{stage}_final.pth"


def arch_name(stage: str) -> str:
    return f"{stage}_final.json"


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the networks. The defaults are the official `test.py` options (§1.9)."""

    load_height: int = contract.IMAGE_HEIGHT
    load_width: int = contract.IMAGE_WIDTH
    seg_ngf: int = 64
    gmm_ngf: int = 64
    grid_size: int = 5
    alias_ngf: int = 64
    alias_norm_hidden: int = ALIAS_NORM_HIDDEN
    num_upsampling_layers: str = "most"

    @property
    def load_hw(self) -> tuple[int, int]:
        return self.load_height, self.load_width

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        return cls(**data)


def build_network(stage: str, arch: Architecture) -> torch.nn.Module:
    """One randomly initialised network (official init: xavier, gain 0.02, §1.9)."""
    if stage == "seg":
        net: torch.nn.Module = SegGenerator(input_nc=21, output_nc=13, ngf=arch.seg_ngf)
    elif stage == "gmm":
        net = GMM(7, 3, arch.load_height, arch.load_width, arch.grid_size, ngf=arch.gmm_ngf)
    elif stage == "alias":
        net = ALIASGenerator(
            input_nc=9,
            semantic_nc=7,
            ngf=arch.alias_ngf,
            num_upsampling_layers=arch.num_upsampling_layers,
            load_height=arch.load_height,
            load_width=arch.load_width,
            norm_hidden=arch.alias_norm_hidden,
        )
    else:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    init_weights(net)
    return net


def state_dict_from_bytes(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """A bare state dict (official) or our training checkpoint's `model`; always on the CPU (§1.10)."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle and zip errors of many types
        raise ValueError(f"{source} is not a PyTorch checkpoint: {exc}") from exc
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise ValueError(f"{source} holds no state dict")
    return loaded


def load_state(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """strict=True, with a message that names the file and the first differences."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:4]
        raise ValueError(f"{source} does not fit {type(net).__name__}: {' '.join(first)}") from exc


def load_weights(net: torch.nn.Module, store: Files | None, stage: str) -> str:
    """Load `<stage>_final.pth` from `store` into `net`; its checkpoint id, or RANDOM_INIT (with a warning)
    when the folder or the file is absent."""
    name = checkpoint_name(stage)
    if store is None or not store.exists(name):
        where = store.url_of(name) if store is not None else "(no checkpoint folder)"
        log.warning("%s network is randomly initialised: %s not found", stage, where)
        return RANDOM_INIT
    data = store.read_bytes(name)
    load_state(net, state_dict_from_bytes(data, store.url_of(name)), store.url_of(name))
    return hashlib.sha256(data).hexdigest()[:CHECKPOINT_ID_CHARS]


def read_architecture(store: Files | None) -> Architecture:
    """The architecture the folder's sidecars describe; official defaults where there are none."""
    found: dict[str, dict] = {}
    if store is not None:
        for stage in STAGES:
            if store.exists(arch_name(stage)):
                found[stage] = json.loads(store.read_text(arch_name(stage)))["architecture"]
    if not found:
        return Architecture()
    sizes = {(a["load_height"], a["load_width"]) for a in found.values()}
    if len(sizes) > 1:
        raise ValueError(f"checkpoints in {store.url} were trained at different sizes: {sorted(sizes)}")
    merged = dict(next(iter(found.values())))
    own_fields = {"seg": ("seg_ngf",), "gmm": ("gmm_ngf", "grid_size"),
                  "alias": ("alias_ngf", "alias_norm_hidden", "num_upsampling_layers")}  # fmt: skip
    for stage, names in own_fields.items():
        if stage in found:
            merged.update({name: found[stage][name] for name in names})
    return Architecture.from_dict(merged)


def load_networks(
    store: Files | None, device: str | torch.device = "cpu", seed: int = 0, arch: Architecture | None = None
) -> tuple[TryOnNetworks, Architecture, dict[str, str]]:
    """(networks in eval mode on `device`, their architecture, {stage: checkpoint id or RANDOM_INIT}).

    `store` is the checkpoint folder (None: no checkpoints at all). Random initialisation is seeded.
    """
    arch = arch or read_architecture(store)
    torch.manual_seed(seed)
    nets, ids = {}, {}
    for stage in STAGES:
        nets[stage] = build_network(stage, arch)
        ids[stage] = load_weights(nets[stage], store, stage)
    return TryOnNetworks(**nets).to(device).eval(), arch, ids


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in state.items()}, buffer)
    return buffer.getvalue()


def save_final(store: Files, stage: str, net: torch.nn.Module, arch: Architecture, info: dict | None = None) -> str:
    """Write `<stage>_final.pth` (a bare state dict, loadable by the official test.py when `arch` is the
    default) and then its `<stage>_final.json` sidecar; returns the checkpoint id."""
    data = state_dict_bytes(net.state_dict())
    store.write_bytes(checkpoint_name(stage), data)
    checkpoint_id = hashlib.sha256(data).hexdigest()[:CHECKPOINT_ID_CHARS]
    sidecar = {"stage": stage, "checkpoint_id": checkpoint_id, "architecture": arch.to_dict(), **(info or {})}
    store.write_text(arch_name(stage), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return checkpoint_id


def checkpoint_label(ids: dict[str, str]) -> str:
    """One string naming the weights of a run, e.g. `seg:1a2b...,gmm:...,alias:random-init`."""
    return ",".join(f"{stage}:{ids[stage]}" for stage in STAGES)


def with_load_size(arch: Architecture, height: int, width: int) -> Architecture:
    return replace(arch, load_height=height, load_width=width)
