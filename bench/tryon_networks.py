"""Try-on network speed on synthetic inputs: seg -> GMM -> ALIAS, fp32 against fp16, per batch size.

Needs only PyTorch (and OpenCV/NumPy for the full `pipeline.try_on` path, used when importable), so
it runs on a bare GPU machine without a dataset, Prefect or MediaPipe. The networks are randomly
initialised with the official widths; inputs are random tensors of the right shapes and ranges, so
the timings are real and the fp16-vs-fp32 difference shows the numerics of autocast, not the
quality of trained weights.

    python bench/tryon_networks.py --device cuda --batch 1 4 8 [--height 1024 --width 768] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitonhd_models.networks import GMM, ALIASGenerator, SegGenerator, init_weights


def networks(height: int, width: int, device: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    nets = {
        "seg": SegGenerator(input_nc=21, output_nc=13, ngf=64),
        "gmm": GMM(7, 3, height, width, 5, ngf=64),
        "alias": ALIASGenerator(input_nc=9, semantic_nc=7, ngf=64, num_upsampling_layers="most",
                                load_height=height, load_width=width),
    }
    for net in nets.values():
        init_weights(net)
        net.to(device).eval()
    return nets


def synthetic_batch(batch: int, height: int, width: int, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)

    def image(channels: int) -> torch.Tensor:
        return (torch.rand(batch, channels, height, width, generator=generator) * 2 - 1).to(device)

    parse = torch.zeros(batch, 13, height, width)
    parse[:, 0] = 1.0
    parse[:, 3, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1.0
    parse[:, 0, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 0.0
    mask = (torch.rand(batch, 1, height, width, generator=generator) > 0.5).float()
    noise = (torch.rand(batch, 1, height // 4, width // 4, generator=generator) > 0.84).float()  # as seg's ~16 %
    return {"img_agnostic": image(3), "pose": image(3), "cloth": image(3), "cloth_mask": mask.to(device),
            "parse_agnostic": parse.to(device), "noise": noise.to(device)}


def full_pipeline():
    """`pipeline.try_on` and its `TryOnNetworks`, or None where OpenCV or NumPy are missing."""
    try:
        from vitonhd_models.pipeline import TryOnNetworks, try_on
    except (ImportError, AttributeError) as error:  # a missing package, or one too new for our pins
        print(f"(pipeline.try_on unavailable: {error}; timing the networks alone)", file=sys.stderr)
        return None
    return TryOnNetworks, try_on


def networks_only(nets, batch: dict, fp16: bool) -> torch.Tensor:
    """Seg, GMM and ALIAS on synthetic inputs of the right shapes (no blur, argmax or warp)."""
    _, _, height, width = batch["cloth"].shape
    small = (height // 4, width // 4)

    def down(x):
        return torch.nn.functional.interpolate(x, size=small, mode="bilinear")

    seg_in = torch.cat([down(batch["cloth_mask"]), down(batch["cloth"] * batch["cloth_mask"]),
                        down(batch["parse_agnostic"]), down(batch["pose"]), batch["noise"]], 1)
    with torch.autocast("cuda", dtype=torch.float16, enabled=fp16 and batch["cloth"].is_cuda):
        seg = nets["seg"](seg_in)
    parse7 = torch.nn.functional.interpolate(seg.float()[:, :7], size=(height, width), mode="bilinear").softmax(1)
    _, grid = nets["gmm"](torch.cat([down(parse7[:, 2:3]), down(batch["pose"]), down(batch["img_agnostic"])], 1),
                              down(batch["cloth"]))
    warped = torch.nn.functional.grid_sample(batch["cloth"], grid, padding_mode="border", align_corners=False)
    with torch.autocast("cuda", dtype=torch.float16, enabled=fp16 and batch["cloth"].is_cuda):
        x = torch.cat((batch["img_agnostic"], batch["pose"], warped), 1)
        out = nets["alias"](x, parse7, torch.cat((parse7, parse7[:, :1]), 1), parse7[:, :1])
    return out.float()


def time_it(fn, repeats: int, device: str) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (cuDNN autotuning, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    nets = networks(args.height, args.width, args.device)
    pipeline = full_pipeline()
    rows = []
    with torch.no_grad():
        for batch_size in args.batch:
            batch = synthetic_batch(batch_size, args.height, args.width, args.device)
            outputs = {}
            for precision in ("fp32", "fp16"):
                fp16 = precision == "fp16"
                if pipeline is not None:
                    tryon_networks, try_on = pipeline
                    bundle = tryon_networks(seg=nets["seg"], gmm=nets["gmm"], alias=nets["alias"])
                    seeds = list(range(batch_size))

                    def call(bundle=bundle, batch=batch, fp16=fp16, seeds=seeds, try_on=try_on):
                        return try_on(bundle, batch, fp16=fp16, seeds=seeds)
                else:

                    def call(batch=batch, fp16=fp16):
                        return networks_only(nets, batch, fp16)

                seconds, outputs[precision] = time_it(call, args.repeats, args.device)
                rows.append({"device": args.device, "size": f"{args.width}x{args.height}", "batch": batch_size,
                             "precision": precision, "path": "try_on" if pipeline else "networks",
                             "ms_per_pair": 1000 * seconds / batch_size, "pairs_per_s": batch_size / seconds})
            diff = (outputs["fp16"] - outputs["fp32"]).abs()
            rows[-1]["max_abs_diff_vs_fp32"] = float(diff.max())
            rows[-1]["mean_abs_diff_vs_fp32"] = float(diff.mean())
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"{name}, torch {torch.__version__}, peak {peak:.1f} GiB allocated", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| device | size | batch | precision | path | ms/pair | pairs/s | max / mean abs diff vs fp32 |")
    print("|---|---|---:|---|---|---:|---:|---|")
    for row in rows:
        diff = (f"{row['max_abs_diff_vs_fp32']:.4f} / {row['mean_abs_diff_vs_fp32']:.5f}"
                if "max_abs_diff_vs_fp32" in row else "-")
        print(f"| {row['device']} | {row['size']} | {row['batch']} | {row['precision']} | {row['path']} | "
              f"{row['ms_per_pair']:.1f} | {row['pairs_per_s']:.2f} | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
