"""`jitnet bench ...`: the benchmarks, one module each, in this one home (bench/)."""
from __future__ import annotations

import argparse
import importlib

BENCHES: dict[str, tuple[str, str]] = {
    "train": ("bench.train", "ORT vs PyTorch eager: inference and train step"),
    "teacher": ("bench.teacher", "teacher server throughput and latency, batching on/off"),
    "agent": ("bench.agent", "agent vs teacher-on-every-frame: compute, IoU, teacher share"),
    "fleet": ("bench.fleet", "cameras sharing one teacher in video time: fair turns vs need-aware scheduling"),
    "accuracy": ("bench.accuracy", "fused vs unfused student vs the flow baselines on clips and a long stream"),
    "soak": ("bench.soak", "a clip looped live through the agent for N minutes: RSS, latency p50/p99, drops per minute"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    sub.required = True
    for name, (module_name, help_text) in BENCHES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_bench_module=module_name)
        try:
            importlib.import_module(module_name).add_arguments(p)
        except ImportError:  # a side that is not installed cannot be benchmarked
            p.set_defaults(_bench_missing=True)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_bench_missing", False):
        raise SystemExit(f"jitnet bench {args.bench}: its dependencies are not installed here")
    return int(importlib.import_module(args._bench_module).run(args) or 0)
