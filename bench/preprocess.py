"""Benchmark: the preprocess flow against a one-image-at-a-time sequential baseline.

    .venv/bin/python bench/preprocess.py [--samples ../shared/samples/vitonhd] [--repeat 4] [--workers 2]

Builds a catalog of the sample photos (each repeated under new names), then
1. runs the `preprocess` flow on it and reads the per-stage milliseconds from its manifest;
2. runs the same models one image at a time (decode, pose, parse, mask, agnostic, write), as
   one-image scripts do, loading the models once per image ("cold") and once in all ("warm").
Prints per-stage ms/image and end-to-end images/s for each, and the flow's overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from tasks.storage import Store  # noqa: E402

DEFAULT_SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples" / "vitonhd"


def build_catalog(samples: Path, root: Path, repeat: int) -> tuple[list[Path], list[Path]]:
    persons, garments = [], []
    for copy in range(repeat):
        for path in sorted((samples / "image").glob("*.jpg")):
            target = root / "persons" / f"{path.stem}-{copy}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            persons.append(target)
        for path in sorted((samples / "cloth").glob("*.jpg")):
            target = root / "garments" / f"{path.stem}-{copy}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            garments.append(target)
    return persons, garments


def run_flow(catalog: Path, out: Path, workers: int, shard_size: int) -> tuple[float, dict, list[dict]]:
    from flows.cli import run_flow as run
    from tasks.config import PreprocessConfig
    from tasks.manifest import item_view, read_run

    config = PreprocessConfig(catalog=str(catalog), out=str(out), shard_size=shard_size)
    started = time.perf_counter()
    summary = run(config, workers=workers, show_progress=False)
    seconds = time.perf_counter() - started
    rows = item_view(read_run(Store(str(out)), "test", summary["run_id"]))
    return seconds, summary, rows


def sequential(persons: list[Path], garments: list[Path], out: Path, cold: bool) -> tuple[float, dict[str, list[float]]]:
    """One image after another, every step in line; `cold` loads the models for every image."""
    from tasks.agnostic import image_agnostic, parse_agnostic
    from tasks.cloth_mask import cloth_mask_classical, encode_cloth_mask
    from tasks.normalize import decode_image, encode_jpeg, encode_png, fit_to_canvas
    from tasks.parse import GeometricParser, encode_parse_png
    from tasks.pose import PoseEstimator, openpose_json, render_body25

    store = Store(str(out))
    times: dict[str, list[float]] = {k: [] for k in ("decode", "pose", "parse", "agnostic", "cloth_mask", "write")}
    models = None if cold else (PoseEstimator(), GeometricParser())
    started = time.perf_counter()
    for path in persons:
        t0 = time.perf_counter()
        image, _ = fit_to_canvas(np.asarray(decode_image(path.read_bytes())))
        t1 = time.perf_counter()
        estimator, parser = models or (PoseEstimator(), GeometricParser())
        pose = estimator.estimate(image)
        t2 = time.perf_counter()
        labels = parser.parse(image, pose)
        t3 = time.perf_counter()
        free_parse = parse_agnostic(labels, pose.keypoints_body25)
        free_image = image_agnostic(image, labels, pose.keypoints_body25)
        t4 = time.perf_counter()
        stem = path.stem
        store.write_bytes(f"image/{stem}.jpg", encode_jpeg(image))
        store.write_text(f"openpose_json/{stem}_keypoints.json", json.dumps(openpose_json(pose.keypoints_body25)))
        store.write_bytes(f"openpose_img/{stem}_rendered.png", encode_png(render_body25(pose.keypoints_body25)))
        store.write_bytes(f"image-parse-v3/{stem}.png", encode_parse_png(labels))
        store.write_bytes(f"image-parse-agnostic-v3.2/{stem}.png", encode_parse_png(free_parse))
        store.write_bytes(f"agnostic-v3.2/{stem}.jpg", encode_jpeg(free_image))
        t5 = time.perf_counter()
        if models is None:
            estimator.close()
            parser.close()
        for name, value in zip(("decode", "pose", "parse", "agnostic", "write"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[name].append(value * 1000)
    for path in garments:
        t0 = time.perf_counter()
        cloth, _ = fit_to_canvas(np.asarray(decode_image(path.read_bytes())))
        t1 = time.perf_counter()
        mask = cloth_mask_classical(cloth)
        t2 = time.perf_counter()
        store.write_bytes(f"cloth/{path.stem}.jpg", encode_jpeg(cloth))
        store.write_bytes(f"cloth-mask/{path.stem}.jpg", encode_cloth_mask(mask))
        t3 = time.perf_counter()
        times["decode"].append((t1 - t0) * 1000)
        times["cloth_mask"].append((t2 - t1) * 1000)
        times["write"].append((t3 - t2) * 1000)
    if models is not None:
        for model in models:
            model.close()
    return time.perf_counter() - started, times


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="folder with image/ and cloth/")
    parser.add_argument("--repeat", type=int, default=4, help="copies of each sample photo (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="flow task runs in flight (default 2)")
    parser.add_argument("--shard-size", type=int, default=8, help="flow shard size (default 8)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    if not (args.samples / "image").is_dir():
        print(f"no sample photos at {args.samples}", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="vitonprep-bench-"))
    try:
        persons, garments = build_catalog(args.samples, work / "catalog", args.repeat)
        n_images = len(persons) + len(garments)
        flow_s, summary, rows = run_flow(work / "catalog", work / "flow-out", args.workers, args.shard_size)
        warm_s, warm = sequential(persons, garments, work / "warm-out", cold=False)
        cold_s, cold = sequential(persons[: len(persons) // args.repeat], [], work / "cold-out", cold=True)
        cold_persons = len(persons) // args.repeat
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def flow_stage(stage: str) -> float:
        return mean([r[f"{stage}_ms"] for r in rows if r.get(f"{stage}_ms") is not None and r["kind"] in {
            "ingest": ("person", "garment"), "cloth_mask": ("garment",)}.get(stage, ("person",))])

    print(f"\n{len(persons)} persons + {len(garments)} garments (768x1024 samples x{args.repeat}), "
          f"{os.cpu_count()} CPUs, flow workers={args.workers}, shard size={args.shard_size}\n")
    print(f"{'stage':<12}{'flow ms/img':>14}{'sequential warm':>18}{'sequential cold':>18}")
    stages = [("decode+fit", "ingest", "decode"), ("pose", "pose", "pose"), ("parse", "parse", "parse"),
              ("agnostic", "agnostic", "agnostic"), ("cloth mask", "cloth_mask", "cloth_mask"), ("write", None, "write")]
    for label, flow_name, seq_name in stages:
        flow_value = f"{flow_stage(flow_name):14.1f}" if flow_name else f"{'(in stages)':>14}"
        print(f"{label:<12}{flow_value}{mean(warm[seq_name]):18.1f}{mean(cold[seq_name]):18.1f}")
    stage_sum_s = sum(sum(r.get(f"{s}_ms") or 0 for s in ("ingest", "pose", "parse", "cloth_mask", "agnostic")) for r in rows) / 1000
    body_s = summary["seconds"]
    print()
    print(f"{'end to end':<34}{'seconds':>10}{'images/s':>12}")
    print(f"{'flow, whole command':<34}{flow_s:10.1f}{n_images / flow_s:12.2f}")
    print(f"{'flow, inside the flow run':<34}{body_s:10.1f}{n_images / body_s:12.2f}")
    print(f"{'sequential, models loaded once':<34}{warm_s:10.1f}{n_images / warm_s:12.2f}")
    print(f"{'sequential, models per image':<34}{cold_s:10.1f}{cold_persons / cold_s:12.2f}   (persons only)")
    print(f"\noverhead: {flow_s - body_s:.1f} s Prefect start-up and shut-down (import, temporary local API server); "
          f"inside the run {body_s:.1f} s wall for {stage_sum_s:.1f} s of stage time over {args.workers} workers")
    if args.json:
        print(json.dumps({"images": n_images, "flow_s": flow_s, "warm_s": warm_s, "cold_s": cold_s,
                          "cold_persons": cold_persons, "summary_stages": summary["stages"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
