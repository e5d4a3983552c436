"""`jitnet` command line: one entry point, one registry of subcommands.

COMMANDS names the module of each subcommand (it has add_arguments(parser) and
run(args) -> int).  A side's own command lives in that side (export/cli.py,
teacher_server/cli.py); the SDK's in sdk/ (run_cli.py, demo.py, doctor.py); the
evaluations' and the benchmarks' in evaluation/cli.py and bench/cli.py (which
has its own registry, BENCHES); `pretrain`, which draws on export/ and on
evaluation/ (teacher-distilled frames), sits here in cli/pretrain.py, the one
layer above both.  Only the chosen command's module is imported, so
`jitnet teacher` never imports the edge runtime, and `jitnet run` imports torch
only to export artifacts the cache does not hold yet.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from bench.cli import BENCHES  # a plain dict: importing it imports no benchmark

# name -> (module with add_arguments(parser) and run(args) -> int, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("sdk.doctor", "check that this environment can run each side"),
    "export": ("export.cli", "write ONNX Runtime training artifacts for JITNet"),
    "teacher": ("teacher_server.cli", "serve a teacher model over gRPC"),
    "run": ("sdk.run_cli", "segment a stream with online distillation"),
    "demo": ("sdk.demo", "the whole system on a real clip, with an embedded teacher"),
    "eval": ("evaluation.cli", "the paper's evaluations on real video"),
    "pretrain": ("cli.pretrain", "pre-train the student offline (COCO, YOLO-seg, label PNGs, teacher-distilled)"),
    "bench": ("bench.cli", f"benchmarks ({' | '.join(BENCHES)})"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jitnet", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen command's module is imported
            importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except _USER_ERRORS as exc:
        # Bad input the user can fix (a missing file, a broken artifact directory, a dead
        # teacher, a malformed option): one line that says what is wrong, no traceback.
        if args.verbose:
            raise
        print(f"jitnet {args.command}: error: {exc} (jitnet -v {args.command} ... shows the traceback)", file=sys.stderr)
        return 2


# Errors that describe the user's input or environment, not a bug (ValueError covers the
# project's FrameError, GroupError, DavisLayoutError, CocoLayoutError and option checks;
# RuntimeError its ArtifactError, StreamError, RuntimeEnvironmentError, BackendUnavailable).
_USER_ERRORS = (OSError, ValueError, RuntimeError)  # OSError includes ConnectionError


if __name__ == "__main__":
    sys.exit(main())
