"""Benchmark: a first run, a rerun over the unchanged catalog, and a run after K new garments.

    .venv/bin/python bench/incremental.py [--samples ../shared/samples/vitonhd] [--repeat 4] [--new 4]

Prints, per run, the seconds inside the flow run, the whole command's seconds and what was
processed, and the ratio of the unchanged rerun to the first run (the issue's target: under 5%).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples" / "vitonhd"


def copy_samples(samples: Path, catalog: Path, repeat: int) -> None:
    for copy in range(repeat):
        for folder, kind in (("image", "persons"), ("cloth", "garments")):
            for path in sorted((samples / folder).glob("*.jpg")):
                target = catalog / kind / f"{path.stem}-{copy}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="folder with image/ and cloth/")
    parser.add_argument("--repeat", type=int, default=4, help="copies of each sample photo (default 4)")
    parser.add_argument("--new", type=int, default=4, help="garments added before the third run (default 4)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    args = parser.parse_args()
    if not (args.samples / "image").is_dir():
        print(f"no sample photos at {args.samples}", file=sys.stderr)
        return 1

    from prefect.testing.utilities import prefect_test_harness

    from flows.local import run_flow
    from tasks.stages.registry import PreprocessConfig

    work = Path(tempfile.mkdtemp(prefix="vitonprep-incremental-"))
    results = []
    try:
        catalog, out = work / "catalog", work / "dataset"
        copy_samples(args.samples, catalog, args.repeat)
        config = PreprocessConfig(catalog=str(catalog), out=str(out), shard_size=8, workers=args.workers)
        # One Prefect API for all three runs, so its start-up is not counted three times.
        with prefect_test_harness(server_startup_timeout=120):
            for label in ("first run", "unchanged rerun", f"after {args.new} new garments"):
                if label.startswith("after"):
                    cloths = sorted((args.samples / "cloth").glob("*.jpg"))
                    for index in range(args.new):
                        shutil.copy(cloths[index % len(cloths)], catalog / "garments" / f"new-{index}.jpg")
                started = time.perf_counter()
                summary = run_flow(config, show_progress=False)
                results.append((label, summary, time.perf_counter() - started))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{results[0][1]['listed']['persons']} persons + {results[0][1]['listed']['garments']} garments, "
          f"{os.cpu_count()} CPUs, workers={args.workers}\n")
    print(f"{'run':<26}{'in flow s':>10}{'call s':>9}{'persons':>9}{'garments':>10}")
    for label, summary, call_s in results:
        print(f"{label:<26}{summary['seconds']:10.2f}{call_s:9.2f}"
              f"{summary['persons']['total']:9d}{summary['garments']['total']:10d}")
    first, rerun = results[0][1]["seconds"], results[1][1]["seconds"]
    print(f"\nunchanged rerun / first run: {rerun / first:.1%} (inside the flow run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
