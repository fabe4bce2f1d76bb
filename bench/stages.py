"""Benchmark: each stage's cost per image as a ratio to one bare MediaPipe Pose pass, in one process on one core.

    .venv/bin/python bench/stages.py [--samples ../shared/samples/vitonhd] [--repeat 3] [--json]

The photos (the sample persons and garments, each also mirrored) are decoded and fitted onto the
768x1024 canvas before the clock starts, and the models are built and warmed. The process is pinned to
one core and OpenCV to one thread. Then, per photo and repeat:

- `mediapipe`: MediaPipe Pose's solutions graph on the canvas (full model, segmentation on,
  static images), the model the pose stage runs, alone: the unit of the ratios;
- `face_mesh`: MediaPipe Face Mesh alone (the geometric parser runs it once), for reference;
- every stage of the registry that runs on that kind of photo, its compute (`run`) and the encoding
  of its outputs (`encode`) timed apart, each on the results of the stages before it in memory.

Prints ms/image (median over photos and repeats) and each figure's ratio to `mediapipe`. Nothing is
asserted about time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, log  # noqa: E402

DEFAULT_SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples" / "vitonhd"


def load_canvases(samples: Path) -> dict[str, list]:
    """kind -> [(name, Ingested)]: the sample photos and their mirror images, fitted as ingest fits them."""
    import numpy as np

    from tasks.stages.normalize import Ingested, decode_image, decode_rgb, encode_jpeg, fit_to_canvas

    found: dict[str, list] = {"person": [], "garment": []}
    for folder, kind in (("image", "person"), ("cloth", "garment")):
        for path in sorted((samples / folder).glob("*.jpg")):
            array = np.asarray(decode_image(path.read_bytes()))
            for name, variant in ((path.stem, array), (f"{path.stem}-mirrored", array[:, ::-1])):
                canvas, fit = fit_to_canvas(np.ascontiguousarray(variant))
                jpeg = encode_jpeg(canvas)
                found[kind].append((name, Ingested(decode_rgb(jpeg), fit, jpeg)))
    return found


def measure(samples: Path, repeat: int) -> dict:
    import cv2
    import mediapipe as mp

    from tasks.engine.workers import prepare_models
    from tasks.records.catalog import CatalogItem, WorkItem
    from tasks.stages.model_cache import Weights
    from tasks.stages.registry import PreprocessConfig, StageEnv, StageInput, active_stages

    cv2.setNumThreads(1)
    canvases = load_canvases(samples)
    config = PreprocessConfig(catalog="-", out="-")
    env = StageEnv(config, Weights())
    prepare_models(config)
    bare_pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True)
    bare_mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)
    times: dict[str, list[float]] = {}

    def timed(name: str, call, *args):
        started = time.perf_counter()
        value = call(*args)
        times.setdefault(name, []).append(1000 * (time.perf_counter() - started))
        return value

    for warm in (True, False):  # one untimed round builds every graph and cache
        for _ in range(1 if warm else repeat):
            for kind, photos in canvases.items():
                for name, ingested in photos:
                    if kind == "person":
                        timed("mediapipe", bare_pose.process, ingested.image)
                        timed("face_mesh", bare_mesh.process, ingested.image)
                    item = WorkItem(CatalogItem(kind, f"{name}.jpg", f"{name}.jpg", "-", 0, name), frozenset())
                    values = {"ingest": ingested}
                    for stage in [s for s in active_stages(config, kind) if s.name != "ingest"]:  # ingested above
                        inputs = [StageInput(item, {read: values[read] for read in stage.reads})]
                        [value] = timed(f"{stage.name} run", stage.run, env, inputs)
                        if isinstance(value, BaseException):
                            raise RuntimeError(f"{stage.name} failed on {name}: {value}") from value
                        timed(f"{stage.name} encode", stage.encode, value)
                        values[stage.name] = value
        if warm:
            times.clear()
    bare_pose.close()
    bare_mesh.close()
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds over every photo (default 3)")
    parser.add_argument("--cpu", type=int, default=None, help="the core to pin to (default: the first allowed)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    core = args.cpu if args.cpu is not None else allowed[0]
    os.sched_setaffinity(0, {core})
    log(f"pinned to core {core}; {args.repeat} rounds over the samples in {args.samples}")
    medians = measure(args.samples, args.repeat)
    unit = medians["mediapipe"]
    rows = [{"what": name, "ms": ms, "ratio": ms / unit} for name, ms in medians.items()]
    if args.json:
        print(json.dumps({"cpu": cpu_model(), "core": core, "repeat": args.repeat, "rows": rows}, indent=2))
        return 0
    print(f"{cpu_model()}, one core (#{core}), median of {args.repeat} rounds, 768x1024 canvases\n")
    print("| what | ms/image | x MediaPipe pass |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['what']} | {row['ms']:.1f} | {row['ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
