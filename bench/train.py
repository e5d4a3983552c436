"""`jitnet bench train`: ONNX Runtime training vs PyTorch eager, side by side.

Both backends run the same JITNet from the same artifact directory in one
process on the same machine, and their iterations are interleaved (ORT
inference, torch inference, ORT train step, torch train step, ...) so that
load from other processes hits both alike.  Before each timed call the
machine is left idle for a moment (``--settle-ms``): the runtime that just
ran keeps its worker threads spinning for a while, and on a small CPU that
would be charged to the other runtime's next call.

Reported per width x size: median milliseconds of inference (the trainer's
``predict`` path) and of one train step (forward, backward, SGD-momentum
update), the speedups torch/ORT, parameters, and GFLOPs per frame counted
with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products, 2 FLOPs per multiply-add) over the forward pass and over
forward + backward.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from bench.machine import cpu_model

DEFAULT_SIZES = "256x448,384x640,720x1280"
DEFAULT_WIDTHS = "0.5,1.0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="comma-separated HxW; a height that is not a multiple of 32 is padded up (720 -> 736)")
    parser.add_argument("--widths", default=DEFAULT_WIDTHS, help="comma-separated width multipliers")
    parser.add_argument("--repeats", type=int, default=10, help="timed iterations per width x size (at most)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per width x size")
    parser.add_argument("--budget-s", type=float, default=35.0,
                        help="time budget per width x size: large sizes get fewer repeats (never fewer than 3)")
    parser.add_argument("--threads", type=int, help="threads for both runtimes (default: all cores)")
    parser.add_argument("--settle-ms", type=float, default=30.0,
                        help="idle pause before each timed call so one runtime's spinning threads don't slow the other")


def parse_sizes(text: str, stride: int = 32) -> list[tuple[int, int]]:
    """'384x640,720x1280' -> [(384, 640), (736, 1280)]: padded up to the student's stride."""
    sizes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            h, w = (int(v) for v in item.split("x"))
        except ValueError:
            raise SystemExit(f"--sizes wants HxW items like 384x640, got {item!r}") from None
        if h <= 0 or w <= 0:
            raise SystemExit(f"--sizes: {item!r} is not a positive size")
        sizes.append((-(-h // stride) * stride, -(-w // stride) * stride))
    if not sizes:
        raise SystemExit("--sizes needs at least one HxW")
    return sizes


def parse_widths(text: str) -> list[float]:
    try:
        widths = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--widths wants numbers like 0.5,1.0, got {text!r}") from None
    if not widths or any(w <= 0 for w in widths):
        raise SystemExit("--widths needs positive width multipliers, e.g. 0.5,1.0")
    return widths


def machine_info(threads: int) -> dict[str, Any]:
    import importlib.metadata as md

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for dist in ("torch", "onnxruntime-training-cpu", "onnxruntime-training", "onnx", "numpy"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    info["load_average"] = _load_average()
    return info


def _load_average() -> Optional[list[float]]:
    """1/5/15-minute load: other work on the machine skews both runtimes' timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000.0, 2)


def bench_one(
    artifact_dir: Path,
    height: int,
    width_px: int,
    *,
    threads: int,
    repeats: int,
    warmup: int,
    budget_s: float,
    settle_s: float,
) -> dict[str, float]:
    """Interleaved timings of both backends at one size (fresh trainers, same initial weights)."""
    import numpy as np

    from edge_agent.torch_trainer import TorchTrainer
    from edge_agent.ort_trainer import OrtTrainer

    ort = OrtTrainer(artifact_dir, device="cpu", threads=threads)
    pt = TorchTrainer(artifact_dir, device="cpu", threads=threads)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width_px, 3), dtype=np.uint8)
    labels = np.zeros((height, width_px), np.uint8)
    labels[height // 4: 3 * height // 4, width_px // 3: 2 * width_px // 3] = 1
    weights = np.ones((height, width_px), np.float32)

    calls: dict[str, Callable[[], object]] = {
        "ort_infer": lambda: ort.predict(image),
        "torch_infer": lambda: pt.predict(image),
        "ort_train": lambda: ort.train_step(image, labels, weights),
        "torch_train": lambda: pt.train_step(image, labels, weights),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}

    def one_round(record: bool) -> float:
        spent = 0.0
        for name, call in calls.items():
            time.sleep(settle_s)
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            spent += elapsed + settle_s
            if record:
                times[name].append(elapsed)
        return spent

    for _ in range(max(warmup, 1)):  # the first call at a new size is always slow
        one_round(record=False)
    spent, n = 0.0, 0
    # At least 3 rounds (or all asked for, if fewer), then stop at the budget.
    while n < repeats and (n < min(3, repeats) or spent < budget_s):
        spent += one_round(record=True)
        n += 1
    return {k: _median_ms(v) for k, v in times.items()} | {"repeats": n}


def run(args: argparse.Namespace) -> int:
    # libgomp's default busy-wait makes torch's OpenMP threads spin at every
    # barrier; on a small CPU shared with other work that costs 10-20x (a
    # 384x640 inference took 4 s instead of 0.2 s on 2 busy cores).  ORT's
    # pool is told not to spin either (edge_agent/trainer.py), so both
    # runtimes wait the same way.  Only effective before torch is loaded.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from export.artifacts import generate
    from export.flops import count_gflops
    from export.jitnet import build_jitnet, count_parameters

    logging.getLogger("export.artifacts").setLevel(logging.WARNING)
    sizes = parse_sizes(args.sizes)
    widths = parse_widths(args.widths)
    threads = args.threads or os.cpu_count() or 1
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    rows: list[dict[str, Any]] = []
    repeats_used: list[int] = []
    load_start = _load_average()
    print(f"jitnet bench train: {len(widths)} widths x {len(sizes)} sizes, {threads} threads, "
          f"up to {args.repeats} interleaved repeats each")
    with tempfile.TemporaryDirectory(prefix="jitnet-bench-") as tmp:
        for width in widths:
            artifact_dir = Path(tmp) / f"w{width}"
            h0, w0 = sizes[0]
            generate(artifact_dir, class_names=["object"], width=width, height_px=h0, width_px=w0, seed=0)
            model = build_jitnet(width, 2, seed=0).train()
            params = count_parameters(model)
            for height, width_px in sizes:
                torch.set_num_threads(threads)
                gflops_infer, gflops_train = count_gflops(model, height, width_px)
                timing = bench_one(
                    artifact_dir, height, width_px, threads=threads, repeats=args.repeats, warmup=args.warmup,
                    budget_s=args.budget_s, settle_s=args.settle_ms / 1000.0,
                )
                repeats_used.append(int(timing.pop("repeats")))
                row = {
                    "width": width,
                    "height": height,
                    "width_px": width_px,
                    "params": params,
                    "gflops_infer": round(gflops_infer, 3),
                    "gflops_train": round(gflops_train, 3),
                    "ort_infer_ms": timing["ort_infer"],
                    "torch_infer_ms": timing["torch_infer"],
                    "ort_train_ms": timing["ort_train"],
                    "torch_train_ms": timing["torch_train"],
                    "infer_speedup": round(timing["torch_infer"] / timing["ort_infer"], 3),
                    "train_speedup": round(timing["torch_train"] / timing["ort_train"], 3),
                }
                rows.append(row)
                print(_format_row(row, repeats_used[-1]), flush=True)
    machine = machine_info(threads) | {
        "load_average_start": load_start,
        "repeats": repeats_used,
        "warmup": args.warmup,
        "settle_ms": args.settle_ms,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "ort_allow_spinning": 0,
        "timing": "median wall ms, ORT and torch iterations interleaved in one process",
    }
    result = {"rows": rows, "machine": machine}
    print()
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


HEADER = ("width", "HxW", "params", "GFLOP inf", "GFLOP train", "ORT inf ms", "torch inf ms", "inf x",
          "ORT train ms", "torch train ms", "train x")


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        f"{row['width']:g}", f"{row['height']}x{row['width_px']}", f"{row['params']:,}",
        f"{row['gflops_infer']:.2f}", f"{row['gflops_train']:.2f}",
        f"{row['ort_infer_ms']:.1f}", f"{row['torch_infer_ms']:.1f}", f"{row['infer_speedup']:.2f}",
        f"{row['ort_train_ms']:.1f}", f"{row['torch_train_ms']:.1f}", f"{row['train_speedup']:.2f}",
    ]


def _format_row(row: dict[str, Any], repeats: int) -> str:
    return "  " + "  ".join(f"{h}={c}" for h, c in zip(HEADER, _cells(row))) + f"  (n={repeats})"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table (x = torch ms / ORT ms: above 1 means ORT is faster)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="jitnet bench train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
