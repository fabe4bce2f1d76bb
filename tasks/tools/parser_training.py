"""Train and evaluate the YOLOv8-seg human parser with Ultralytics, offline. No Prefect here.

Training runs in a local working folder (the output folder itself when it is local) with
Ultralytics' own checkpoints (`run/weights/last.pt`, `best.pt` by validation fitness, `results.csv`);
an interrupted training resumes from `last.pt`. Nothing is downloaded and no host is looked up: the
model is built from an architecture file shipped inside Ultralytics or loaded from a configured URL
(a bare official name such as `yolov8n-seg.pt`, which Ultralytics would download, is refused), plots
are off and we draw the curves ourselves, Ultralytics' font check (which fetches Arial) is given
matplotlib's bundled font, and the AMP check (which fetches a nano model) is replaced by a check on
the model being trained. Every `.pt` is loaded without running code (`tasks.stages.parse_yolo.weights_loading`)
unless the user trusts it.

Evaluation has two halves: Ultralytics' per-class box and mask precision, recall, mAP50 and
mAP50-95 on the val split, and the pixel-level IoU of the CIHP maps that preprocess would write
(predictions composited the way the parse stage does), against the ground-truth maps.
"""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # read once at import by Ultralytics
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
# Ultralytics sets OMP_NUM_THREADS=1 when it is unset, pinning torch (and DataLoader workers) to one thread.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import copy
import hashlib
import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tasks.infra.store import Store
from tasks.infra.weight_cache import local_file
from tasks.records.config import ParserTrainConfig
from tasks.stages.parse_yolo import weights_loading

RUN_DIR = "run"  # Ultralytics' save dir inside the working folder
CACHE_DIR = Path(os.environ.get("VITONPREP_CACHE", Path.home() / ".cache" / "vitonprep"))
EXPORTED = ("weights/best.pt", "weights/last.pt", "results.csv")
AMP_RELATIVE_TOLERANCE = 0.05  # fp16 autocast head outputs within 5 % of fp32: AMP is safe on this GPU


# ---------------------------------------------------------------------------------------------
# Where things are


def working_dir(config: ParserTrainConfig) -> Path:
    """The local folder Ultralytics trains in: the output folder itself when local, else a cache folder."""
    out = Store(config.out, config.storage_options)
    if out.is_local:
        return Path(out.root)
    digest = hashlib.sha256(config.out.encode()).hexdigest()[:16]
    return CACHE_DIR / "parser-train" / digest


def dataset_spec(config: ParserTrainConfig) -> dict[str, Any]:
    """The parser dataset's data.yaml: Ultralytics' keys plus classes, class_to_cihp, source, fingerprint."""
    return yaml.safe_load(Store(config.data, config.storage_options).read_text("data.yaml"))


def local_dataset(config: ParserTrainConfig) -> tuple[Path, dict[str, Any]]:
    """(a local data.yaml whose `path` is a local copy of the dataset, its contents)."""
    store = Store(config.data, config.storage_options)
    spec = dataset_spec(config)
    if store.is_local:
        root = Path(store.root)
    else:
        root = CACHE_DIR / "parser-data" / hashlib.sha256(config.data.encode()).hexdigest()[:16]
        for info in store.list_files():
            target = root / info.key
            if not target.exists() or target.stat().st_size != info.size:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(store.read_bytes(info.key))
    local_spec = {**spec, "path": str(root)}
    work = working_dir(config)
    work.mkdir(parents=True, exist_ok=True)
    data_yaml = work / "data.local.yaml"
    data_yaml.write_text(yaml.safe_dump(local_spec, sort_keys=False))
    return data_yaml, spec


def resolve_model(config: ParserTrainConfig) -> str:
    """An architecture file name as Ultralytics resolves it, or a local copy of the weights to fine-tune."""
    if config.model.endswith((".yaml", ".yml")) and "://" not in config.model and not Path(config.model).exists():
        return config.model  # shipped inside the ultralytics package: e.g. yolov8x-seg.yaml
    if "/" not in config.model and not Path(config.model).exists():
        raise ValueError(
            f"--model {config.model} is a bare name, which Ultralytics would download: give the URL or the path of "
            f"the weights file (s3://models/{config.model}, /models/{config.model}), or an architecture file "
            "(yolov8x-seg.yaml) to train from scratch")
    return local_file(config.model, config.storage_options)


def device_argument(device: str) -> str | int:
    from vitonhd_models.pipeline import resolve_device

    return 0 if resolve_device(device) == "cuda" else "cpu"


# ---------------------------------------------------------------------------------------------
# Offline AMP check


def amp_is_safe(model: Any) -> bool:
    """Does fp16 autocast keep the model's head outputs close to fp32 (on the GPU it trains on)?

    Ultralytics' own check runs a downloaded nano model on a downloaded image; this one runs the
    model being trained on a fixed random image.
    """
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    probe = copy.deepcopy(model).eval()
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        full = first_tensor(probe(image)).float()
        with torch.autocast("cuda", dtype=torch.float16):
            half = first_tensor(probe(image)).float()
    if not torch.isfinite(half).all():
        return False
    scale = full.abs().max().clamp_min(1e-6)
    return bool(((full - half).abs().max() / scale) < AMP_RELATIVE_TOLERANCE)


def first_tensor(output: Any):
    while isinstance(output, (list, tuple)):
        output = output[0]
    return output


def bundled_font(font: str = "Arial.ttf") -> Path:
    """What Ultralytics' `check_font` gets instead of a download: matplotlib's bundled DejaVu Sans."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


@contextmanager
def offline_ultralytics() -> Iterator[None]:
    """Ultralytics as training uses it, with the two checks that reach the network replaced: AMP (a
    downloaded nano model) and fonts (Arial, fetched for the dataset check and plots)."""
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_module
    import ultralytics.utils.checks as checks

    patched = [(trainer_module, "check_amp", amp_is_safe), (data_utils, "check_font", bundled_font),
               (checks, "check_font", bundled_font)]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patched]
    for module, name, replacement in patched:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


# ---------------------------------------------------------------------------------------------
# Training


def checkpoint_epoch(path: Path, trust: bool = False) -> int | None:
    """The epoch a checkpoint was saved after (0-based), or None when training finished (Ultralytics: -1)."""
    from ultralytics.nn.tasks import torch_safe_load

    with weights_loading(str(path), trust):
        checkpoint, _ = torch_safe_load(str(path), safe_only=not trust)
    epoch = checkpoint.get("epoch", -1)
    return None if epoch == -1 else int(epoch)


def train(config: ParserTrainConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) in the working folder; returns what happened. Does not export."""
    from ultralytics import YOLO

    work = working_dir(config)
    save_dir = work / RUN_DIR
    last = save_dir / "weights" / "last.pt"
    out = Store(config.out, config.storage_options)
    if not last.exists() and not out.is_local and out.exists(f"{RUN_DIR}/weights/last.pt"):
        last.parent.mkdir(parents=True, exist_ok=True)  # resume on another machine from the exported checkpoint
        last.write_bytes(out.read_bytes(f"{RUN_DIR}/weights/last.pt"))
    data_yaml, spec = local_dataset(config)
    trust = config.trust_weights
    with offline_ultralytics():
        if last.exists():
            epoch = checkpoint_epoch(last, trust)
            if epoch is None:
                log(f"training in {save_dir} already finished; evaluating its best.pt")
                return {"resumed_from_epoch": None, "trained": False, "save_dir": str(save_dir)}
            log(f"resuming the training in {save_dir} after epoch {epoch + 1}")
            with weights_loading(str(last), trust):
                YOLO(str(last)).train(resume=True)
            return {"resumed_from_epoch": epoch + 1, "trained": True, "save_dir": str(save_dir)}
        source = resolve_model(config)
        with weights_loading(source, trust):
            model = YOLO(source, task="segment")
            log(f"training {config.model} on {config.data} ({len(spec['names'])} classes) in {save_dir}")
            model.train(
                data=str(data_yaml), epochs=config.epochs, imgsz=config.imgsz, batch=config.batch,
                device=device_argument(config.device), workers=config.workers, patience=config.patience,
                seed=config.seed, deterministic=True, project=str(work), name=RUN_DIR, exist_ok=True,
                plots=False, verbose=False, val=True,
            )  # fmt: skip
    return {"resumed_from_epoch": 0, "trained": True, "save_dir": str(save_dir)}


def read_results(save_dir: Path) -> list[dict[str, float]]:
    """Ultralytics' results.csv (one row per epoch) as dicts with stripped column names."""
    import csv

    path = save_dir / "results.csv"
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [{key.strip(): float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def best_epoch(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The epoch Ultralytics keeps as best.pt: highest fitness, 0.1 x mAP50 + 0.9 x mAP50-95 of box plus mask."""

    def fitness(row: dict[str, float]) -> float:
        return sum(0.1 * row.get(f"metrics/mAP50({k})", 0.0) + 0.9 * row.get(f"metrics/mAP50-95({k})", 0.0)
                   for k in ("B", "M"))

    return max(rows, key=fitness) if rows else None


def curves_png(rows: list[dict[str, float]]) -> bytes:
    """Losses and validation mAPs per epoch (matplotlib's bundled font: nothing to download)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    figure, (losses, maps) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("train/box_loss", "train/seg_loss", "train/cls_loss", "val/box_loss", "val/seg_loss"):
        if rows and name in rows[0]:
            losses.plot(epochs, [row[name] for row in rows], label=name)
    for name in ("metrics/mAP50(B)", "metrics/mAP50-95(B)", "metrics/mAP50(M)", "metrics/mAP50-95(M)"):
        if rows and name in rows[0]:
            maps.plot(epochs, [row[name] for row in rows], label=name)
    losses.set(xlabel="epoch", title="losses")
    maps.set(xlabel="epoch", title="validation mAP", ylim=(0, 1))
    for axes in (losses, maps):
        axes.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def export(config: ParserTrainConfig, save_dir: Path) -> dict[str, str]:
    """Copy the weights and results to the output URL (when it is not the working folder) and draw curves.png."""
    out = Store(config.out, config.storage_options)
    written = {}
    if not out.is_local or Path(out.root).resolve() != save_dir.parent.resolve():
        for rel in EXPORTED:
            if (save_dir / rel).exists():
                written[rel] = out.write_bytes(f"{RUN_DIR}/{rel}", (save_dir / rel).read_bytes())
    written["curves.png"] = out.write_bytes("curves.png", curves_png(read_results(save_dir)))
    return written


def weights_url(config: ParserTrainConfig) -> str:
    """Where the trained parser's weights end up: give it to preprocess as `--parser yolo:<this>`."""
    return Store(config.out, config.storage_options).url_of(f"{RUN_DIR}/weights/best.pt")


# ---------------------------------------------------------------------------------------------
# Evaluation: Ultralytics' per-class table


def class_table(metrics: Any, names: Mapping[int, str], images: int) -> list[dict[str, Any]]:
    """Per class and overall: images, instances, box and mask precision, recall, mAP50, mAP50-95."""
    columns = ("box_p", "box_r", "box_map50", "box_map50_95", "mask_p", "mask_r", "mask_map50", "mask_map50_95")
    rows = []
    for index, class_id in enumerate(metrics.ap_class_index):
        values = [float(v) for v in metrics.class_result(index)]
        rows.append({"class": names[int(class_id)], "images": int(metrics.nt_per_image[class_id]),
                     "instances": int(metrics.nt_per_class[class_id]), **dict(zip(columns, values))})
    overall = [float(v) for v in metrics.mean_results()]
    rows.append({"class": "all", "images": images,
                 "instances": int(np.sum(metrics.nt_per_class)), **dict(zip(columns, overall))})
    return rows


def evaluate_classes(config: ParserTrainConfig, weights: Path, data_yaml: Path) -> list[dict[str, Any]]:
    from ultralytics import YOLO

    with weights_loading(str(weights), config.trust_weights), offline_ultralytics():
        model = YOLO(str(weights))
        metrics = model.val(data=str(data_yaml), split="val", imgsz=config.imgsz, batch=config.batch,
                            device=device_argument(config.device), plots=False, verbose=False,
                            project=str(working_dir(config)), name="val", exist_ok=True)
    return class_table(metrics, model.names, images=len(val_items(data_yaml)))


# ---------------------------------------------------------------------------------------------
# Evaluation: pixel IoU of the CIHP maps preprocess writes


def expressible(labels: np.ndarray, class_to_cihp: Mapping[int, int], cihp_to_class: Mapping[int, int]) -> np.ndarray:
    """A CIHP map reduced to what the class set can say: each label through its class and back, else 0."""
    lookup = np.zeros(256, dtype=np.uint8)
    for cihp, cls in cihp_to_class.items():
        lookup[cihp] = class_to_cihp[cls]
    return lookup[labels]


class IouAccumulator:
    """Per-label intersection and union summed over a split (the dataset-level IoU)."""

    def __init__(self, labels: Iterable[int]):
        self.labels = sorted(set(labels))
        self.intersection = dict.fromkeys(self.labels, 0)
        self.union = dict.fromkeys(self.labels, 0)
        self.images = 0

    def add(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        if predicted.shape != truth.shape:
            raise ValueError(f"prediction {predicted.shape} and ground truth {truth.shape} differ in size")
        for label in self.labels:
            p, t = predicted == label, truth == label
            self.intersection[label] += int(np.count_nonzero(p & t))
            self.union[label] += int(np.count_nonzero(p | t))
        self.images += 1

    def rows(self, parser: str, label_names: Mapping[int, str]) -> list[dict[str, Any]]:
        rows = [{"parser": parser, "label": label_names.get(label, str(label)), "cihp_id": label,
                 "iou": self.intersection[label] / self.union[label] if self.union[label] else None,
                 "images": self.images}
                for label in self.labels]
        present = [row["iou"] for row in rows if row["iou"] is not None]
        rows.append({"parser": parser, "label": "mean", "cihp_id": -1,
                     "iou": float(np.mean(present)) if present else None, "images": self.images})
        return rows


def val_items(data_yaml: Path) -> list[tuple[str, Path]]:
    """(stem, image path) of the val split of a local parser dataset."""
    spec = yaml.safe_load(data_yaml.read_text())
    folder = Path(spec["path"]) / spec["val"]
    return sorted((path.stem, path) for path in folder.iterdir() if path.suffix.lower() in (".jpg", ".jpeg", ".png"))


def label_tables(spec: Mapping[str, Any]) -> tuple[dict[int, int], dict[int, int]]:
    """(class -> CIHP id, CIHP id -> class) of a parser dataset's class set (seed8 or cihp20)."""
    from tasks.tools.parser_dataset import class_table

    table = class_table(spec.get("classes", "seed8"))
    return dict(table.class_to_cihp), dict(table.cihp_to_class)


def ground_truth(spec: Mapping[str, Any], data_yaml: Path, stem: str, shape: tuple[int, int],
                 class_to_cihp: Mapping[int, int], storage_options: Mapping[str, Any]) -> np.ndarray:
    """The val image's ground-truth CIHP map: the source dataset's label map when readable, else the
    polygons of its label file painted back (holes are bridged, so they come back empty)."""
    from tasks.tools.parser_dataset import parse_label_lines, rasterise_polygons
    from vitonhd_models.contract import DIR_PARSE, DIR_PARSE_VITONHD, parse_name
    from vitonhd_models.parse_maps import decode_parse_png

    if spec.get("source"):
        source = Store(str(spec["source"]), dict(storage_options))
        for folder in (DIR_PARSE, DIR_PARSE_VITONHD):
            if source.exists(folder, parse_name(stem)):
                return decode_parse_png(source.read_bytes(f"{folder}/{parse_name(stem)}"))
    local = yaml.safe_load(data_yaml.read_text())
    label_path = Path(local["path"]) / "labels" / "val" / f"{stem}.txt"
    height, width = shape
    text = label_path.read_text() if label_path.exists() else ""
    classes = rasterise_polygons(parse_label_lines(text, width, height), shape)
    lookup = np.zeros(256, dtype=np.uint8)
    for cls, cihp in class_to_cihp.items():
        lookup[cls] = cihp
    return lookup[classes]


def evaluate_pixels(config: ParserTrainConfig, weights: Path, data_yaml: Path, spec: Mapping[str, Any]) -> list[dict]:
    """Per-label and mean IoU, over the val split, of the CIHP maps the parse stage would write with the
    trained weights (and with the geometric parser), both reduced to the labels the class set can express."""
    from PIL import Image

    from tasks.stages.parse_yolo import YoloParser
    from vitonhd_models.contract import Cihp

    class_to_cihp, cihp_to_class = label_tables(spec)
    names = {int(label): label.name.lower() for label in Cihp}
    labels = sorted(set(class_to_cihp.values()))
    device = parser_training_device(config)
    trained = IouAccumulator(labels)
    geometric = IouAccumulator(labels) if config.compare_geometric else None
    yolo = YoloParser(str(weights), class_to_cihp=class_to_cihp, device=device, imgsz=config.imgsz)
    with geometric_parser(config.compare_geometric) as parse_geometric:
        for stem, path in val_items(data_yaml):
            with Image.open(path) as opened:
                image = np.asarray(opened.convert("RGB"))
            truth = expressible(
                ground_truth(spec, data_yaml, stem, image.shape[:2], class_to_cihp, config.storage_options),
                class_to_cihp, cihp_to_class,
            )
            trained.add(yolo.parse(image), truth)
            if geometric is not None:
                geometric.add(expressible(parse_geometric(image), class_to_cihp, cihp_to_class), truth)
    rows = trained.rows("yolo", names)
    if geometric is not None:
        rows += geometric.rows("geometric", names)
    return rows


def parser_training_device(config: ParserTrainConfig) -> str:
    return "cpu" if device_argument(config.device) == "cpu" else "cuda:0"


@contextmanager
def geometric_parser(enabled: bool) -> Iterator[Callable[[np.ndarray], np.ndarray] | None]:
    """The bundled parser as preprocess runs it: MediaPipe pose, then the geometric parse."""
    if not enabled:
        yield None
        return
    from tasks.stages.parse_geometric import GeometricParser
    from tasks.stages.pose import PoseEstimator
    from vitonhd_models.errors import ItemError

    with PoseEstimator() as estimator, GeometricParser() as parser:

        def parse(image: np.ndarray) -> np.ndarray:
            try:
                return parser.parse(image, estimator.estimate(image))
            except ItemError:  # no person found, etc.: an empty map, scored as a miss
                return np.zeros(image.shape[:2], dtype=np.uint8)

        yield parse
