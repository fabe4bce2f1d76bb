"""Benchmark: YOLOv8-seg person-parser inference at imgsz 1024, per model size, in milliseconds per image.

    .venv/bin/python bench/parser.py [--sizes n s m x] [--device cpu|cuda] [--batch 1 8] [--repeats 3]

No weights can be downloaded, so each size is built from its Ultralytics architecture file
(`yolov8{size}-seg.yaml`) with the parser's 8 classes (`YOLO_CLASS_NAMES` of tasks/stages/parse_yolo.py) and
random weights (seeded). Speed does not depend on the weights, but what the postprocessing does does:
random weights give scores near 1e-4 and boxes that overlap, so at the parser's conf 0.25 nothing is
detected, and at conf 0 (the default here) the NMS sees every anchor (21,504 at 1024x768: an upper
bound on NMS work, a trained model at conf 0.25 sends it far fewer) and keeps only a handful of boxes
(reported as det/img; up to --max-det, 20 by default), fewer than a trained model would paint. Hence four figures per size, batch size and precision (each the median of
`--repeats` timed calls after one warm-up call):

1. forward: the model alone (Ultralytics' AutoBackend, fused, as `predict` runs it) on a batch already
   letterboxed to a tensor on the device;
2. predict: the whole `YOLO.predict(images, imgsz, retina_masks=True, conf=--conf, max_det=--max-det)`
   call on BGR uint8 photos, i.e. letterbox + forward + NMS + full-resolution masks, with Ultralytics'
   own per-image split of it into preprocess / inference / postprocess, and the detections it kept;
3. masks x max-det: `ops.process_mask_native` (the retina-mask step of the postprocessing) for
   `--max-det` synthetic instances per image on the real mask prototypes, i.e. the mask work a trained
   model finding that many instances would add;
4. parse_batch: for one size (`--parser-size`), our `tasks.stages.parse_yolo.YoloParser.parse_batch` (RGB in,
   predict, masks to the CPU, composite into a CIHP map) on a random-init checkpoint saved with
   `YOLO.save` under a temporary folder and loaded back by path, at the same conf and max_det.

Parameters (millions, unfused) and GFLOPs (fused, per image at the letterboxed input size, via thop when
Ultralytics has it) are reported per size. Each size runs in a fresh process (spawn), so its peak RSS
is its own (the process's ru_maxrss, including the torch import); on CUDA the peak allocated GPU memory
is reported per batch size and precision too.

Input: the person photos of ../shared/samples/vitonhd/image (768x1024 JPEGs), cycled (mirrored on the
second pass) to fill a batch; synthetic 768x1024 images when there are none. CPU: fp32 and batch 1 by
default; CUDA: batch sizes 1 and 8 and fp32 and fp16 by default. Only ultralytics, torch, numpy and cv2 are
needed (tasks.stages.parse_yolo only for the parse_batch row, skipped when it cannot be imported), so the file
runs on a GPU machine without the rest of the project. Progress goes to stderr, the tables (markdown) or
the JSON to stdout. Nothing is asserted about time. On a 2-core CPU the default run (n s m x, batch 1,
3 repeats) takes about 4 minutes, half of it yolov8x-seg (about 12 s per image); the default CUDA run
about a minute on an H200 plus the process starts. On a machine without the project's virtualenv, put
ultralytics (and thop, for GFLOPs) on PYTHONPATH and run `python3 bench/parser.py --device cuda`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

# Ultralytics reads these once at import; nothing here may reach the network.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cv2
import numpy as np
import torch

from bench.machine import device_info, fmt, log, peak_rss_gib, release, synchronizer

# torch's default thread count, read before Ultralytics is imported: `import ultralytics` sets OMP_NUM_THREADS=1
# when it is unset, which makes every later process (and this one, had torch come second) use one thread.
DEFAULT_THREADS = torch.get_num_threads()
# Ultralytics' logger writes to the stdout of its import; made stderr so stdout carries only the tables or JSON
# (its first import on a machine also announces a new settings file there).
with contextlib.redirect_stdout(sys.stderr):
    import ultralytics
DEFAULT_SAMPLES = REPO.parent / "shared" / "samples" / "vitonhd" / "image"
SIZES = ("n", "s", "m", "l", "x")
DEFAULT_SIZES = ("n", "s", "m", "x")
PRECISIONS = ("fp32", "fp16")
DEVICES = ("cpu", "cuda")
SEED = 0
SYNTHETIC_HW = (1024, 768)  # the VITON-HD photo size, height x width
# The parser's classes, as tasks/stages/parse_yolo.py's YOLO_CLASS_NAMES; a copy so this file runs without the project.
CLASS_NAMES = ("hair", "face", "neck", "upper_body", "lower_body", "left_hand", "right_hand", "skirt")
with contextlib.suppress(ImportError):
    from tasks.stages.parse_yolo import YOLO_CLASS_NAMES as CLASS_NAMES  # the project's own, when present




# ---- Configuration, validated once --------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    sizes: tuple[str, ...]
    device: str
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    repeats: int
    threads: int
    imgsz: int
    conf: float
    max_det: int
    parser_size: str | None
    samples: str
    isolate: bool
    json: bool
    out: str | None

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError("--threads must be positive")
        if self.repeats < 1 or self.imgsz < 32 or self.max_det < 1 or min(self.batches, default=0) < 1:
            raise ValueError("--repeats, --max-det and --batch must be positive and --imgsz at least 32")
        if not self.sizes or not self.batches or not self.precisions:
            raise ValueError("give at least one size, batch size and precision")
        if "fp16" in self.precisions and self.device != "cuda":
            raise ValueError("fp16 runs on CUDA only; this run is on the CPU")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA device")
        if not 0.0 <= self.conf <= 1.0:
            raise ValueError("--conf must lie in [0, 1]")

    def settings(self) -> list[tuple[int, str]]:
        """(batch size, precision) pairs timed for every model size."""
        return [(batch, precision) for precision in self.precisions for batch in self.batches]


def config_from_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(DEFAULT_SIZES),
                        help="YOLOv8-seg sizes (default n s m x)")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="default cpu")
    parser.add_argument("--batch", nargs="+", type=int,
                        help="batch sizes (images per predict call; default 1 on the CPU, 1 8 on CUDA)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS,
                        help="default fp32 on the CPU, fp32 fp16 on CUDA (fp16 on CUDA only)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls per measurement after one warm-up call; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch intra-op threads (default {DEFAULT_THREADS}, torch's own default here; "
                             "set explicitly because `import ultralytics` sets OMP_NUM_THREADS=1 when unset)")
    parser.add_argument("--imgsz", type=int, default=1024, help="inference size, as the parser's (default 1024)")
    parser.add_argument("--conf", type=float, default=0.0,
                        help="confidence threshold for predict (default 0: random weights score about 1e-4, so any "
                             "higher threshold leaves the NMS and mask steps nothing to do)")
    parser.add_argument("--max-det", type=int, default=20,
                        help="detections kept per image, and the synthetic instances of the masks column (default 20)")
    parser.add_argument("--parser-size", choices=[*SIZES, "none"], default="n",
                        help="size whose checkpoint also goes through YoloParser.parse_batch (default n; none skips)")
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES,
                        help="folder of person photos (*.jpg; default ../shared/samples/vitonhd/image); "
                             "synthetic images when it has none")
    parser.add_argument("--in-process", action="store_true",
                        help="time every size in this process (peak RSS is then the running maximum)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--out", type=Path, help="file to write the JSON to as well")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    try:
        return BenchConfig(
            sizes=tuple(dict.fromkeys(args.sizes)),
            device=args.device,
            batches=tuple(dict.fromkeys(args.batch or ((1, 8) if cuda else (1,)))),
            precisions=tuple(dict.fromkeys(args.precision or (PRECISIONS if cuda else ("fp32",)))),
            repeats=args.repeats,
            threads=args.threads,
            imgsz=args.imgsz,
            conf=args.conf,
            max_det=args.max_det,
            parser_size=None if args.parser_size == "none" else args.parser_size,
            samples=str(args.samples),
            isolate=not args.in_process,
            json=args.json,
            out=str(args.out) if args.out else None,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise  # parser.error exits; this keeps type checkers content


# ---- The machine ---------------------------------------------------------------------------------










# ---- Inputs and models ---------------------------------------------------------------------------


def load_images(samples: str) -> tuple[list[np.ndarray], str]:
    """BGR uint8 photos from the samples folder, or synthetic ones (a gradient plus noise) when it has none."""
    paths = sorted(Path(samples).glob("*.jpg")) if Path(samples).is_dir() else []
    images = [image for image in (cv2.imread(str(path), cv2.IMREAD_COLOR) for path in paths) if image is not None]
    if images:
        shapes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
        return images, f"{len(images)} photos ({', '.join(shapes)}) from {samples}"
    rng = np.random.default_rng(SEED)
    height, width = SYNTHETIC_HW
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    synthetic = [np.clip(ramp + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8) for _ in range(4)]
    return synthetic, f"4 synthetic {width}x{height} images (no *.jpg in {samples})"


def batch_of(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    """`size` images, cycling through the given ones and mirroring them on every other pass."""
    out = []
    for index in range(size):
        image = images[index % len(images)]
        out.append(np.ascontiguousarray(image[:, ::-1]) if (index // len(images)) % 2 else image)
    return out


def fp16_predict_args(precision: str) -> dict:
    """FP16 inference: `half=True` up to Ultralytics 8.3, `quantize=16` where `half` is deprecated (as
    tasks/stages/parse_yolo.py's `_fp16_predict_args`)."""
    if precision != "fp16":
        return {}
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


def build_model(size: str):
    """A random-init (seeded) YOLOv8-seg of the given size with the parser's classes, built offline.

    `YOLO("yolov8{size}-seg.yaml")` builds the architecture with the yaml's 80 classes and sets up the
    task; its network is then replaced by one built from the same (scaled) config with nc=8.
    """
    from ultralytics import YOLO
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(SEED)
    yolo = YOLO(f"yolov8{size}-seg.yaml", task="segment")
    cfg = {**yolo.model.yaml, "nc": len(CLASS_NAMES)}  # not nc=: that logs "Overriding model.yaml nc" to stdout
    network = SegmentationModel(cfg, verbose=False)
    network.names = dict(enumerate(CLASS_NAMES))
    network.args = getattr(yolo.model, "args", {})
    network.task = "segment"
    yolo.model = network
    return yolo


def gflops(model: torch.nn.Module, hw: tuple[int, int]) -> float | None:
    """GFLOPs for one image at hw via Ultralytics' thop helper; None when thop is missing or fails."""
    from ultralytics.utils.torch_utils import get_flops

    with contextlib.suppress(Exception):
        value = get_flops(model, list(hw))
        return value or None
    return None


# ---- Timing --------------------------------------------------------------------------------------


def timed(function: Callable[[], object], repeats: int, sync: Callable[[], None]) -> tuple[list[float], list]:
    """Seconds and results of `repeats` calls after one warm-up call."""
    function()  # warm-up
    sync()
    seconds, results = [], []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        result = function()
        sync()
        seconds.append(time.perf_counter() - started)
        results.append(result)
    return seconds, results


def median_ms_per_image(seconds: list[float], images: int) -> float:
    return 1000 * statistics.median(seconds) / images


def bench_setting(config: BenchConfig, size: str, images: list[np.ndarray], batch: int, precision: str) -> dict:
    """Forward, predict and synthetic retina masks for one size, batch size and precision (a fresh model)."""
    from ultralytics.utils import ops

    sync = synchronizer(config.device)
    if config.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    yolo = build_model(size)
    params = sum(p.numel() for p in yolo.model.parameters())
    inputs = batch_of(images, batch)
    predict_args = dict(imgsz=config.imgsz, retina_masks=True, conf=config.conf, max_det=config.max_det,
                        device=config.device, verbose=False, **fp16_predict_args(precision))  # fmt: skip
    tag = f"yolov8{size}-seg batch {batch} {precision}"

    predict_s, calls = timed(lambda: yolo.predict(inputs, **predict_args), config.repeats, sync)
    log(f"  {tag}: predict {', '.join(f'{s:.2f}' for s in predict_s)} s")
    # Ultralytics' per-image split of each call (its own timers, CUDA-synchronised), median over the calls
    speeds = {key: statistics.median(statistics.mean(r.speed[key] for r in call) for call in calls)
              for key in ("preprocess", "inference", "postprocess")}  # fmt: skip
    detections = statistics.mean(len(r.boxes) if r.boxes is not None else 0 for call in calls for r in call)
    del calls

    predictor = yolo.predictor
    with torch.inference_mode():
        tensor = predictor.preprocess(inputs)
        sync()
        forward_s, outputs = timed(lambda: predictor.inference(tensor), config.repeats, sync)
        preds = outputs[-1]
        del outputs
    log(f"  {tag}: forward {', '.join(f'{s:.2f}' for s in forward_s)} s on {tuple(tensor.shape)}")

    protos = preds[0][1] if isinstance(preds[0], tuple) else preds[1]
    generator = torch.Generator().manual_seed(SEED)
    synthetic = []
    for proto, image in zip(protos, inputs, strict=True):
        height, width = image.shape[:2]
        coeffs = torch.randn((config.max_det, proto.shape[0]), generator=generator)
        x1 = torch.rand(config.max_det, generator=generator) * width / 2
        y1 = torch.rand(config.max_det, generator=generator) * height / 2
        x2 = x1 + (0.125 + 0.375 * torch.rand(config.max_det, generator=generator)) * width
        y2 = y1 + (0.125 + 0.375 * torch.rand(config.max_det, generator=generator)) * height
        boxes = torch.stack([x1, y1, x2, y2], 1)
        # float32 like the NMS output that postprocess passes in (the prototypes are fp16 under fp16)
        synthetic.append((proto, coeffs.to(proto.device), boxes.to(proto.device), (height, width)))

    def masks() -> None:
        with torch.inference_mode():
            for proto, coeffs, boxes, shape in synthetic:
                ops.process_mask_native(proto, coeffs, boxes, shape)

    masks_s, _ = timed(masks, config.repeats, sync)
    flops = gflops(yolo.model, tuple(tensor.shape[2:])) if precision == "fp32" else None
    result = {
        "size": size, "batch": batch, "precision": precision, "parameters": params, "gflops_per_image": flops,
        "input_hw": list(tensor.shape[2:]), "forward_ms_per_image": median_ms_per_image(forward_s, batch),
        "predict_ms_per_image": median_ms_per_image(predict_s, batch),
        "predict_images_per_s": batch / statistics.median(predict_s),
        "ultralytics_ms_per_image": speeds, "detections_per_image": detections,
        "masks_ms_per_image": median_ms_per_image(masks_s, batch),
        "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if config.device == "cuda" else None,
    }  # fmt: skip
    return result  # the model and tensors go with this frame; the caller releases the memory


def bench_parser(config: BenchConfig, size: str, images: list[np.ndarray], batch: int, precision: str) -> dict:
    """YoloParser.parse_batch on a random-init checkpoint of `size`, saved and loaded back by path."""
    try:
        from tasks.stages.parse_yolo import YoloParser
    except ImportError as exc:
        return {"size": size, "batch": batch, "precision": precision, "skipped": f"tasks.stages.parse_yolo: {exc}"}
    sync = synchronizer(config.device)
    if config.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="vitonprep-bench-parser-") as work:
        path = Path(work) / f"yolov8{size}-seg-random.pt"
        build_model(size).save(path)
        parser = YoloParser(str(path), device=config.device, conf=config.conf, imgsz=config.imgsz,
                            half=precision == "fp16")
        parser.model.overrides["max_det"] = config.max_det  # YoloParser takes no max_det; predict merges overrides
        rgb = [np.ascontiguousarray(image[:, :, ::-1]) for image in batch_of(images, batch)]
        seconds, calls = timed(lambda: parser.parse_batch(rgb), config.repeats, sync)
        maps = calls[-1]
        del calls
        checkpoint_mib = path.stat().st_size / 2**20
    log(f"  yolov8{size}-seg YoloParser.parse_batch batch {batch} {precision}: "
        f"{', '.join(f'{s:.2f}' for s in seconds)} s")
    labelled = statistics.mean(float(np.count_nonzero(m)) / m.size for m in maps)
    result = {"size": size, "batch": batch, "precision": precision, "checkpoint_mib": checkpoint_mib,
              "ms_per_image": median_ms_per_image(seconds, batch), "images_per_s": batch / statistics.median(seconds),
              "labelled_fraction": labelled,
              "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if config.device == "cuda" else None}  # fmt: skip
    return result


def guarded(what: str, identity: dict, function: Callable[..., dict], config: BenchConfig, *args) -> dict:
    """function(config, *args), or identity plus the error: one setting that runs out of memory or fails
    must not lose the figures of the others."""
    try:
        result = function(config, *args)
        release(config.device)
        return result
    except (RuntimeError, MemoryError, ValueError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    log(f"  {what} failed: {error}")
    release(config.device)  # after the except block, which kept the failed frame's tensors alive
    return {**identity, "error": error}


def bench_size(config: BenchConfig, size: str) -> dict:
    """Every setting of one size (and the parser rows when it is --parser-size); run in its own process."""
    torch.set_num_threads(config.threads)
    images, _ = load_images(config.samples)
    log(f"yolov8{size}-seg ({torch.get_num_threads()} torch threads, OMP_NUM_THREADS "
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")
    started = time.perf_counter()
    settings = [guarded(f"yolov8{size}-seg batch {b} {p}", {"size": size, "batch": b, "precision": p},
                        bench_setting, config, size, images, b, p) for b, p in config.settings()]  # fmt: skip
    measured = [row["gflops_per_image"] for row in settings if row.get("gflops_per_image")]
    for row in settings:  # counted once (fp32); the same network at every batch size and precision
        if "error" not in row and measured:
            row["gflops_per_image"] = measured[0]
    parser_rows = []
    if size == config.parser_size:
        parser_rows = [guarded(f"YoloParser yolov8{size}-seg batch {b} {p}", {"size": size, "batch": b, "precision": p},
                               bench_parser, config, size, images, b, p) for b, p in config.settings()]  # fmt: skip
    return {"size": size, "threads": torch.get_num_threads(), "settings": settings, "parser": parser_rows,
            "peak_rss_gib": peak_rss_gib(),
            "wall_s": time.perf_counter() - started}  # fmt: skip


def bench_size_in_child(config: BenchConfig, size: str) -> dict:
    """bench_size in a spawned process whose stdout goes to stderr: nothing a library prints there may reach
    the tables or the JSON."""
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return bench_size(config, size)


def run_sizes(config: BenchConfig) -> list[dict]:
    sizes = list(config.sizes)
    if config.parser_size and config.parser_size not in sizes:
        sizes.append(config.parser_size)  # built for the parser rows only; its own rows are printed as well
    if not config.isolate:
        return [bench_size(config, size) for size in sizes]
    out = []
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per size: its own peak RSS, no CUDA fork
    for size in sizes:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                out.append(pool.submit(bench_size_in_child, config, size).result())
            except (BrokenProcessPool, RuntimeError, MemoryError, OSError, ValueError) as exc:  # one size lost, not all
                log(f"yolov8{size}-seg failed: {type(exc).__name__}: {exc}")
                out.append({"size": size, "error": f"{type(exc).__name__}: {exc}", "settings": [], "parser": []})
    return out


# ---- Report --------------------------------------------------------------------------------------




def print_tables(report: dict) -> None:
    info, config = report["machine"], report["config"]
    where = f"{info['gpu']} (CUDA {info['cuda']})" if info["device"] == "cuda" else f"CPU {info['cpu']}"
    print(f"\n{where}; {info['cpus']} CPUs, torch {info['torch']} with {info['threads']} threads, ultralytics "
          f"{info['ultralytics']}; load average {info['loadavg_start'][0]:.2f} at the start, "
          f"{info['loadavg_end'][0]:.2f} at the end; wall {report['wall_s']:.0f} s")
    print(f"input: {report['input']}; imgsz {config['imgsz']}, retina_masks, conf {config['conf']}, max_det "
          f"{config['max_det']}; median of {config['repeats']} timed calls after one warm-up call")
    print("random-init weights (8 classes): speed is real, detections are not (few boxes survive NMS; see the masks "
          "column for the mask work of max_det instances)\n")
    print("| size | params (M) | GFLOPs/img | batch | precision | forward ms/img | predict ms/img | predict img/s "
          "| peak RSS (GiB) | CUDA peak (GiB) |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for block in report["sizes"]:
        if "error" in block:
            print(f"| {block['size']} | failed: {block['error']} | | | | | | | | |")
            continue
        for row in block["settings"]:
            if "error" in row:
                print(f"| {row['size']} | | | {row['batch']} | {row['precision']} | failed: {row['error']} | | | | |")
                continue
            print(f"| {row['size']} | {row['parameters'] / 1e6:.1f} | {fmt(row['gflops_per_image'], '.1f')} "
                  f"| {row['batch']} | {row['precision']} | {row['forward_ms_per_image']:.0f} "
                  f"| {row['predict_ms_per_image']:.0f} | {row['predict_images_per_s']:.2f} "
                  f"| {block['peak_rss_gib']:.2f} | {fmt(row['cuda_peak_gib'], '.2f')} |")
    print(f"\nInside predict (Ultralytics' own per-image split), detections kept, and the retina-mask step for "
          f"{config['max_det']} synthetic instances per image\n")
    print("| size | batch | precision | preprocess ms | inference ms | postprocess ms | det/img "
          f"| masks x{config['max_det']} ms/img |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for block in report["sizes"]:
        for row in block["settings"]:
            if "error" in row:
                continue
            split = row["ultralytics_ms_per_image"]
            print(f"| {row['size']} | {row['batch']} | {row['precision']} | {split['preprocess']:.1f} "
                  f"| {split['inference']:.0f} | {split['postprocess']:.1f} | {row['detections_per_image']:.1f} "
                  f"| {row['masks_ms_per_image']:.1f} |")
    parser_rows = [row for block in report["sizes"] for row in block["parser"]]
    if parser_rows:
        print("\nOur YoloParser.parse_batch (RGB in, predict, masks to the CPU, composite into a CIHP map) on a "
              "random-init checkpoint saved and loaded by path\n")
        print("| size | batch | precision | ms/img | img/s | labelled pixels | CUDA peak (GiB) |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for row in parser_rows:
            if "error" in row or "skipped" in row:
                print(f"| {row['size']} | {row['batch']} | {row['precision']} "
                      f"| {row.get('error') or row['skipped']} | | | |")
                continue
            print(f"| {row['size']} | {row['batch']} | {row['precision']} | {row['ms_per_image']:.0f} "
                  f"| {row['images_per_s']:.2f} | {100 * row['labelled_fraction']:.1f}% "
                  f"| {fmt(row['cuda_peak_gib'], '.2f')} |")


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(argv)
    info = {**device_info(config.device, ultralytics=ultralytics.__version__), "threads": config.threads, "loadavg_start": os.getloadavg()}
    _, described = load_images(config.samples)
    log(f"bench parser on {info.get('gpu', info['cpu'])} ({config.device}): sizes {' '.join(config.sizes)}, "
        f"batch {' '.join(map(str, config.batches))}, {' '.join(config.precisions)}; {described}")
    started = time.perf_counter()
    sizes = run_sizes(config)
    info["loadavg_end"] = os.getloadavg()
    report = {"machine": info, "config": asdict(config), "input": described,
              "wall_s": time.perf_counter() - started, "sizes": sizes}  # fmt: skip
    text = json.dumps(report, indent=2)
    if config.out:
        Path(config.out).write_text(text + "\n")
        log(f"wrote {config.out}")
    if config.json:
        print(text)
    else:
        print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
