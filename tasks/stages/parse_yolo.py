"""The YOLO parser backend: a YOLOv8-seg model (Ultralytics `.pt` at a local path) mapped to CIHP.

Instance masks come back at full image resolution and are composited by confidence: where two
overlap, the more confident wins. Model classes map to CIHP ids through a configurable table.
"""

from __future__ import annotations

import os

# Ultralytics reads these once at import; nothing here may reach the network (DESIGN.md "Models"),
# and no checkpoint may run code when it is loaded (see `weights_loading`).
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
# Ultralytics sets OMP_NUM_THREADS=1 when it is unset, pinning torch (and DataLoader workers) to one thread.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tasks.infra.weight_cache import file_sha256
from vitonhd_models.contract import CIHP_NUM_LABELS, Cihp

# ---------------------------------------------------------------------------------------------
# Instance compositing (YOLO-seg output -> one label map)
# ---------------------------------------------------------------------------------------------


def composite_instances_on_device(masks, class_ids, confidences, class_to_cihp: Mapping[int, int]) -> np.ndarray:
    """Paint instance masks (N, H, W) into one (H, W) uint8 CIHP map; the most confident instance wins
    overlaps, classes missing from `class_to_cihp` are ignored, background is 0. On torch tensors where
    they are (the GPU, after predict): only the (H, W) result is copied to the host, not N full-resolution
    masks."""
    import torch

    height, width = int(masks.shape[-2]), int(masks.shape[-1])
    out = torch.zeros((height, width), dtype=torch.uint8, device=masks.device)
    order = torch.argsort(confidences.float().cpu(), stable=True).tolist()  # least confident first
    classes = class_ids.cpu().tolist()
    for index in order:
        label = class_to_cihp.get(int(classes[index]))
        if label is not None:
            out[masks[index] > 0.5] = label
    return out.cpu().numpy()


# ---------------------------------------------------------------------------------------------
# YOLOv8-seg backend
# ---------------------------------------------------------------------------------------------

# The 8 classes our parser model is trained on (the `train-parser` flow writes them in this order).
YOLO_CLASS_NAMES = (
    "hair",
    "face",
    "neck",
    "upper_body",
    "lower_body",
    "left_hand",
    "right_hand",
    "skirt",
)

DEFAULT_YOLO_CLASS_TO_CIHP: Mapping[int, int] = {
    0: int(Cihp.HAIR),  # hair -> 2
    1: int(Cihp.FACE),  # face -> 13
    2: int(Cihp.TORSO_SKIN),  # neck -> 10
    3: int(Cihp.UPPER_CLOTHES),  # upper_body -> 5
    4: int(Cihp.PANTS),  # lower_body -> 9
    5: int(Cihp.LEFT_ARM),  # left_hand -> 14
    6: int(Cihp.RIGHT_ARM),  # right_hand -> 15
    7: int(Cihp.SKIRT),  # skirt -> 12
}


def class_table_for_names(names: Mapping[int, str]) -> dict[int, int]:
    """A model's class -> CIHP table from its class names: our 8 classes, or CIHP's own labels (cihp20)."""
    if [names[k] for k in sorted(names)] == list(YOLO_CLASS_NAMES):
        return dict(DEFAULT_YOLO_CLASS_TO_CIHP)
    by_name = {label.name.lower(): int(label) for label in Cihp}
    unknown = [name for name in names.values() if name.lower() not in by_name]
    if unknown:
        raise ValueError(f"YOLO classes {unknown} are neither the parser's 8 classes nor CIHP labels; "
                         "give class_to_cihp explicitly")
    return {int(k): by_name[name.lower()] for k, name in names.items()}


def _validated_class_table(class_to_cihp: Mapping[int, int]) -> dict[int, int]:
    table = {int(k): int(v) for k, v in dict(class_to_cihp).items()}
    bad = {k: v for k, v in table.items() if not 0 <= v < CIHP_NUM_LABELS}
    if bad:
        raise ValueError(f"class_to_cihp maps to ids outside 0..{CIHP_NUM_LABELS - 1}: {bad}")
    return table


def _fp16_predict_args() -> dict:
    """FP16 inference: `half=True` up to Ultralytics 8.3, `quantize=16` where `half` is deprecated."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


log = logging.getLogger("vitonprep.weights")


class UntrustedWeightsError(ValueError):
    """A weights file that would run code when loaded (or that this Ultralytics cannot load safely)."""


@contextmanager
def weights_loading(path: str, trust: bool = False) -> Iterator[None]:
    """Ultralytics `.pt` files are pickles. Within this block they load with `weights_only=True` and
    Ultralytics' allow-list of its own model classes (its ULTRALYTICS_SAFE_LOAD mode), so a crafted
    file is refused instead of running code; `trust=True` (a user's explicit opt-in) loads it as
    Ultralytics normally would, and says so in the log."""
    import ultralytics.nn.tasks as ultralytics_tasks

    if not hasattr(ultralytics_tasks, "SAFE_LOAD"):
        if not trust:
            raise UntrustedWeightsError(
                f"this Ultralytics cannot load {path} without running the code a checkpoint may hold; "
                "install ultralytics>=8.4.189, or pass --trust-weights if you trust the file")
        yield
        return
    if trust:
        log.warning("loading %s as trusted: it is unpickled as Ultralytics does, so code in it would run", path)
    previous = ultralytics_tasks.SAFE_LOAD
    ultralytics_tasks.SAFE_LOAD = not trust
    try:
        yield
    except Exception as error:
        if trust or not _refused_as_unsafe(error):
            raise
        raise UntrustedWeightsError(
            f"{path} is refused: it holds types outside an Ultralytics checkpoint, which could run code when "
            "loaded. If you trust the file, pass --trust-weights") from error
    finally:
        ultralytics_tasks.SAFE_LOAD = previous


def _refused_as_unsafe(error: BaseException) -> bool:
    """Did a weights_only load refuse a global (torch's error, or Ultralytics' wrapping of it)?"""
    import pickle

    return isinstance(error, pickle.UnpicklingError) or (
        isinstance(error, TypeError) and "outside the supported" in str(error))


def check_weights(path: str, trust: bool = False) -> None:
    """Load `path` as the parser will (refusing code), before a run processes anything."""
    from ultralytics.nn.tasks import torch_safe_load

    with weights_loading(path, trust):
        torch_safe_load(path, safe_only=not trust)


def yolo_parser_id(weights_path: str, sha256: str) -> str:
    """The parser's id in the manifest: the weights' file name and the start of their hash."""
    return f"yolo:{Path(weights_path).name}:{sha256[:12]}"


class YoloParser:
    """Parse with an Ultralytics YOLO-seg checkpoint at a local path (no download, ever)."""

    def __init__(
        self,
        weights_path: str,
        class_to_cihp: Mapping[int, int] | None = None,
        device: str | None = None,
        conf: float = 0.25,
        imgsz: int = 1024,
        half: bool = False,
        sha256: str | None = None,
        trust: bool = False,
    ):
        path = Path(weights_path)
        if not path.is_file():
            # Ultralytics would try to download a missing official name; we never let it.
            raise FileNotFoundError(f"YOLO weights not found at {weights_path} (resolve URLs to a local file first)")
        from ultralytics import YOLO

        self.weights_path = str(path)
        self.device = device
        self.conf = conf
        self.imgsz = imgsz
        self.half = half
        self._sha256 = sha256 or file_sha256(path)  # the run hashed it already, for the fingerprint
        with weights_loading(self.weights_path, trust):
            self.model = YOLO(self.weights_path)
        # Without a table, the model's own class names say which CIHP label each class paints.
        self.class_to_cihp = _validated_class_table(
            class_table_for_names(self.model.names) if class_to_cihp is None else class_to_cihp
        )

    @property
    def parser_id(self) -> str:
        return yolo_parser_id(self.weights_path, self._sha256)

    def parse_batch(self, images_rgb: list[np.ndarray]) -> list[np.ndarray]:
        """One batched predict over RGB (H, W, 3) uint8 arrays; one (H, W) uint8 CIHP map each."""
        if not images_rgb:
            return []
        # Ultralytics treats numpy inputs as BGR (OpenCV order).
        images_bgr = [np.ascontiguousarray(np.asarray(image)[:, :, ::-1]) for image in images_rgb]
        kwargs = dict(conf=self.conf, imgsz=self.imgsz, retina_masks=True, verbose=False)
        if self.device is not None:
            kwargs["device"] = self.device
        if self.half:
            kwargs.update(_fp16_predict_args())
        results = self.model.predict(images_bgr, **kwargs)
        return [self._result_to_labels(result, image.shape[:2]) for result, image in zip(results, images_bgr)]

    def parse(self, image_rgb: np.ndarray) -> np.ndarray:
        return self.parse_batch([image_rgb])[0]

    def _result_to_labels(self, result, shape: tuple[int, int]) -> np.ndarray:
        height, width = shape
        if result.masks is None or result.boxes is None or len(result.boxes) == 0:
            return np.zeros((height, width), dtype=np.uint8)
        masks = result.masks.data
        if tuple(masks.shape[1:]) != (height, width):  # retina_masks gives full size; guard other model formats
            import torch.nn.functional as F

            masks = F.interpolate(masks[None].float(), size=(height, width), mode="nearest")[0]
        return composite_instances_on_device(masks, result.boxes.cls, result.boxes.conf, self.class_to_cihp)

    def close(self) -> None:
        pass

    def __enter__(self) -> YoloParser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
