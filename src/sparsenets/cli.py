"""The ``sparsenets`` command line: ``train``, ``report``, ``methods``.

Bad input prints one line ``sparsenets: error: …`` to stderr and exits with status 2, without a
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import SparsenetsError

log = logging.getLogger("sparsenets")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparsenets", description="Sparse neural networks on PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model from a YAML recipe")
    train.add_argument("recipe", nargs="?", help="recipe YAML (omit with --resume)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. --set sparsity.density=0.05 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    train.add_argument("--overwrite", action="store_true", help="reuse a non-empty run directory")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    train.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    train.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")

    rep = sub.add_parser("report", help="print the summary of a finished run")
    rep.add_argument("run_dir")
    rep.add_argument("--json", action="store_true", help="print summary.json as is")

    sub.add_parser("methods", help="list the sparse training methods and their options")
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import apply_overrides, build_config, load_recipe
    from .training import resume_config, run_training

    if args.resume:
        if args.recipe:
            raise SparsenetsError("give either a recipe or --resume RUN_DIR, not both")
        run_dir = Path(args.resume)
        config = resume_config(run_dir)
        if args.overrides or args.device:
            extra = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
            config = build_config(apply_overrides(config.model_dump(mode="json"), extra))
    else:
        if not args.recipe:
            raise SparsenetsError("a recipe is required, e.g. sparsenets train recipes/fashion_mnist_mlp_rigl.yaml")
        extra = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
        config = load_recipe(args.recipe, extra)
        run_dir = Path(args.out) if args.out else Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = run_training(
        config, run_dir, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.quiet
    )
    if not args.quiet:
        print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """The human-readable end-of-run text: accuracy, per-layer density, ITOP, plots."""
    from .report import Report

    lines = [
        f"run        {summary['name']} ({summary['method']}, {summary['dataset']}, {summary['model']})",
        f"test acc   {summary['test_accuracy']:.4f} (best {summary['best_test_accuracy']:.4f}) "
        f"after {summary['epochs']} epochs",
        f"density    {summary['density']:.4f}   ITOP rate "
        + (f"{summary['itop_rate']:.4f}" if summary.get("itop_rate") is not None else "n/a"),
        f"time       {summary['train_seconds']:.1f} s training, "
        f"{100 * summary['topology_overhead']:.2f}% in {summary['topology_updates']} topology updates",
        "",
        str(Report.from_dict(summary["report"])),
        "",
        "plots      " + "\n           ".join(summary["plots"].values()),
    ]
    return "\n".join(lines)


def _cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.run_dir) / "summary.json"
    if not path.is_file():
        raise SparsenetsError(f"no summary.json in {args.run_dir!r} (is the run finished? resume it with --resume)")
    summary = json.loads(path.read_text())
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from .dst import METHODS

    for name, cls in METHODS.items():
        defaults = ", ".join(f"{k}={v!r}" for k, v in cls().options().items())
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:8s} {doc}\n         {defaults or '(no options)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s")
    commands = {"train": _cmd_train, "report": _cmd_report, "methods": _cmd_methods}
    try:
        return commands[args.command](args)
    except SparsenetsError as error:
        print(f"sparsenets: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsenets: interrupted (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
