"""The ``sparsenets`` command line: ``train``, ``report``, ``methods``, ``select``, ``prune-llm``,
``finetune-llm``, ``eval-ppl``.

Bad input prints one line ``sparsenets: error: …`` to stderr and exits with status 2, without a
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import SparsenetsError, first_line
from .io import read_json
from .launch import launched_by_torchrun, restarted_by_torchrun

log = logging.getLogger("sparsenets")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sparsenets", description="Sparse neural networks on PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
    train.add_argument("--logger", dest="loggers", action="append", metavar="NAME",
                       help="per-step logger: csv (steps.csv, the default) or tensorboard; repeatable "
                            "or comma-separated, replaces the recipe's loggers")
    train.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                       help="data-parallel processes on this machine (through torchrun; default 1)")
    train.add_argument("--max-restarts", type=_non_negative_int, default=0, metavar="R",
                       help="with --nproc: restart all ranks from the last checkpoint up to R times")
    train.add_argument("--check-masks", action=argparse.BooleanOptionalAction, default=None,
                       help="with several processes: compare the masks across ranks after every update "
                            "(default: on)")
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error")

    rep = sub.add_parser("report", help="print the summary of a finished run or a pruned LLM directory")
    rep.add_argument("run_dir", help="a training run directory, or a directory written by prune-llm")
    rep.add_argument("--json", action="store_true", help="print summary.json as is (a pruned LLM: its report as JSON)")

    sub.add_parser("methods", help="list the sparse training methods and their options")
    _add_select_command(sub)
    _add_llm_commands(sub)
    return parser


def _windows(value: str) -> int | None:
    return None if value == "all" else _positive_int(value)


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be 0 or a positive integer")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive integer")
    return number


def _add_select_command(sub) -> None:
    select = sub.add_parser(
        "select", help="select the K most important input features with a sparse network",
        description="Fit a sparse-network feature selector (sparsenets.featsel) and write selected.txt, "
                    "scores.csv, scores.png and summary.json. See docs/feature_selection.md.")
    select.add_argument("input", metavar="INPUT",
                        help="a CSV file (header row), an .npy file (X), an .npz file (X and optional y) "
                             "or a built-in dataset: fashion_mnist, digits, mnist1d (its training split)")
    select.add_argument("--method", required=True,
                        help="quickselection, wast (unsupervised), neurofs (supervised) or attribution")
    select.add_argument("--k", type=int, required=True, help="number of features to select")
    select.add_argument("--out", help="output directory (default: runs/select-<method>-<input>-<time>)")
    select.add_argument("--overwrite", action="store_true", help="reuse a non-empty output directory")
    select.add_argument("--label-column", metavar="NAME",
                        help="CSV column holding the class labels (left out of the features); supervised "
                             "methods default to a column named label, target or y")
    select.add_argument("--mode", default="auto",
                        help="attribution only: auto (default: supervised when the input has labels), "
                             "supervised or unsupervised")
    select.add_argument("--epochs", type=_positive_int, help="training epochs (default: the method's own)")
    select.add_argument("--backend", default="auto", help="auto (default), masked or sparse")
    select.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    select.add_argument("--seed", type=int, default=0, help="random_state of the selector (default 0)")
    select.add_argument("--max-samples", type=_positive_int, metavar="N",
                        help="fit on a random subset of N samples (drawn from --seed)")
    select.add_argument("--data-dir", help="directory of the Fashion-MNIST files")
    select.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a selector parameter, e.g. --set hidden=200 (repeatable)")
    select.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _add_llm_commands(sub) -> None:
    from .llm.pipeline import DEFAULT_EVAL_WINDOWS

    prune = sub.add_parser("prune-llm", help="prune a pretrained causal LM in one shot and save it",
                           description="Prune every Linear in the decoder blocks of any Hugging Face causal LM "
                                       "(embeddings and lm_head untouched) and save it with save_pretrained "
                                       "plus sparsity.json.")
    prune.add_argument("--model", required=True, help="known name (smollm2-135m) or local HF model directory")
    prune.add_argument("--method", default="wanda", help="magnitude, wanda (default) or sparsegpt")
    prune.add_argument("--sparsity", type=float, help="fraction of weights removed, in [0, 1) (default 0.5; "
                                                       "implied by --nm)")
    prune.add_argument("--nm", metavar="N:M", help="N:M semi-structured sparsity, e.g. 2:4 or 4:8")
    prune.add_argument("--allocation", default="uniform", help="uniform (default) or owl")
    prune.add_argument("--owl-m", type=float, default=5.0, help="OWL outlier threshold M (default 5)")
    prune.add_argument("--owl-lambda", type=float, default=0.08, help="OWL max deviation λ (default 0.08)")
    prune.add_argument("--calib", default="austen", metavar="TEXT",
                       help="calibration text: austen (default: Pride and Prejudice + Sense and Sensibility), "
                            "or a text / .jsonl file or a dataset saved with save_to_disk (its first 80%%)")
    prune.add_argument("--calib-samples", type=_positive_int, default=128, help="calibration windows (default 128)")
    prune.add_argument("--seq-len", type=_positive_int, default=512, help="tokens per window (default 512)")
    prune.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default 0)")
    prune.add_argument("--batch-size", type=_positive_int, default=8, help="sequences per forward call")
    prune.add_argument("--bos", default="auto", choices=("auto", "on", "off"),
                       help="start every calibration and evaluation window with the BOS token: auto (default: "
                            "where the tokenizer adds one by default), on, off (e.g. to compare with tools that don't)")
    prune.add_argument("--targets", nargs="+", metavar="REGEX",
                       help="prune only layers whose full name matches one of these (e.g. mlp)")
    prune.add_argument("--ignore", nargs="+", metavar="REGEX",
                       help="leave layers whose full name matches one of these dense (e.g. o_proj)")
    prune.add_argument("--eval", action="store_true", help="measure perplexity after pruning (recorded in sparsity.json)")
    prune.add_argument("--eval-text", default="austen", metavar="TEXT",
                       help="perplexity text: austen (default: Emma) or a text file (its last 20%%)")
    prune.add_argument("--eval-windows", type=_windows, default=DEFAULT_EVAL_WINDOWS,
                       help=f"evaluation windows, or 'all' (default {DEFAULT_EVAL_WINDOWS})")
    prune.add_argument("--out", required=True, help="output directory for the pruned model")
    prune.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    prune.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    prune.add_argument("--dtype", default="auto",
                       help="weights while pruning and when saved: auto (default: the checkpoint's own), "
                            "float32, bfloat16, float16")
    prune.add_argument("--calib-dtype", default="auto",
                       help="dtype of the calibration forwards: auto (default: bfloat16 on CPUs with bf16 units "
                            "(AMX or AVX-512 BF16) for float32 weights, else the weights' own), float32, bfloat16, "
                            "float16")
    prune.add_argument("--low-memory", action="store_true",
                       help="keep one decoder block in memory at a time (read from the checkpoint's safetensors, "
                            "written out as it is pruned): same masks, for models larger than RAM")
    prune.add_argument("--recover", choices=("dsnot",),
                       help="repair each layer's mask without training: dsnot (DSnoT, on the dense weights)")
    prune.add_argument("--dsnot-cycles", type=int, default=50, help="DSnoT: swaps per row at most (default 50)")
    prune.add_argument("--dsnot-threshold", type=float, default=0.1,
                       help="DSnoT: a row stops at this |expected error| (default 0.1)")
    prune.add_argument("--dsnot-skip", nargs="*", default=["mlp"], metavar="REGEX",
                       help="DSnoT: layers (name inside the block) that keep the initial mask (default: mlp, "
                            "as the reference; give none to process every layer)")
    prune.add_argument("--dsnot-no-sign", action="store_true",
                       help="DSnoT: allow swaps that flip the sign of a row's error (the reference's default)")
    prune.add_argument("--quiet", action="store_true", help="no progress bars")

    tune = sub.add_parser("finetune-llm", help="fine-tune a pruned causal LM, keeping its sparsity exact",
                          description="Fine-tune a directory written by prune-llm on next-token prediction while "
                                      "every pruned row (and N:M group) keeps its exact count: seft evolves the "
                                      "topology (grow by accumulated |gradient|, prune back by sensitivity), masked "
                                      "keeps the pruned mask. Saves a plain Hugging Face directory with "
                                      "sparsity.json extended by the recovery step.")
    tune.add_argument("--model", required=True, help="a pruned model directory written by prune-llm")
    tune.add_argument("--method", default="seft", choices=("seft", "masked"),
                      help="seft (default: evolving topology) or masked (fixed mask)")
    tune.add_argument("--data", default="austen", metavar="TEXT",
                      help="training text: austen (default: Mansfield Park, used neither for calibration nor for "
                           "evaluation), or a text / .jsonl file or saved dataset (its first 80%%)")
    tune.add_argument("--steps", type=_positive_int, required=True, help="optimizer steps")
    tune.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    tune.add_argument("--warmup-fraction", type=float, default=0.1,
                      help="share of the steps of linear lr warm-up, then cosine to 0 (default 0.1)")
    tune.add_argument("--batch-size", type=_positive_int, default=4, help="windows per step (default 4)")
    tune.add_argument("--seq-len", type=_positive_int, default=256, help="tokens per window (default 256)")
    tune.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    tune.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm, 0 = off (default 1)")
    tune.add_argument("--optimizer", default="lean-adamw", choices=("lean-adamw", "adamw"),
                      help="lean-adamw (default: state only for active weights) or adamw")
    tune.add_argument("--regrow-warmup", type=int, default=0,
                      help="LeanAdamW: steps over which a regrown weight's step size rises (default 0)")
    tune.add_argument("--autocast", default="auto", choices=("auto", "bfloat16", "off"),
                      help="forward precision: auto (default: bfloat16 on CPUs with bf16 units), bfloat16, off")
    tune.add_argument("--train-embeddings", action="store_true",
                      help="also train the embeddings (default: decoder blocks and final norm only)")
    tune.add_argument("--update-every", type=_positive_int, default=20, help="SEFT: steps between updates (default 20)")
    tune.add_argument("--grow-fraction", type=float, default=0.05,
                      help="SEFT: share of each row's kept weights swapped at the first update (default 0.05)")
    tune.add_argument("--grow-schedule", default="cosine", choices=("cosine", "linear", "constant"),
                      help="SEFT: annealing of the grow fraction (default cosine)")
    tune.add_argument("--end-fraction", type=float, default=0.75,
                      help="SEFT: share of the run after which the topology is frozen (default 0.75)")
    tune.add_argument("--grad-window", type=int, default=0,
                      help="SEFT: steps of |gradient| accumulated before an update, 0 = all since the last (default)")
    tune.add_argument("--prune-score", default="sensitivity", choices=("sensitivity", "magnitude"),
                      help="SEFT: prune-back score, |w|·Σ|g| (default) or |w|")
    tune.add_argument("--eval-text", default="austen", metavar="TEXT",
                      help="perplexity text: austen (default: Emma) or a text file (its last 20%%)")
    tune.add_argument("--eval-windows", type=_windows, default=DEFAULT_EVAL_WINDOWS,
                      help=f"evaluation windows, or 'all' (default {DEFAULT_EVAL_WINDOWS})")
    tune.add_argument("--eval-seq-len", type=_positive_int, default=512, help="tokens per evaluation window (default 512)")
    tune.add_argument("--eval-every", type=int, default=0, help="held-out perplexity every N steps (default: before and after only)")
    tune.add_argument("--no-eval", action="store_true", help="measure no perplexity")
    tune.add_argument("--checkpoint-every", type=int, default=0,
                      help="write <out>-checkpoint every N steps (default: none), for --resume")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted run from <out>-checkpoint")
    tune.add_argument("--bos", default="auto", choices=("auto", "on", "off"),
                      help="start training and evaluation windows with the BOS token (default: as the tokenizer does)")
    tune.add_argument("--seed", type=int, default=0, help="seed of the training windows (default 0)")
    tune.add_argument("--out", required=True, help="output directory for the fine-tuned model")
    tune.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    tune.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    tune.add_argument("--quiet", action="store_true", help="no progress bars")

    ppl = sub.add_parser("eval-ppl", help="perplexity of a causal LM on held-out text")
    ppl.add_argument("--model", required=True, help="known name (smollm2-135m) or local HF model directory")
    ppl.add_argument("--text", default="austen",
                     help="austen (default: Emma), or a text / .jsonl file or saved dataset (its last 20%%)")
    ppl.add_argument("--seq-len", type=_positive_int, default=512, help="tokens per window (default 512)")
    ppl.add_argument("--windows", type=_windows, default=DEFAULT_EVAL_WINDOWS,
                     help=f"number of windows, or 'all' (default {DEFAULT_EVAL_WINDOWS})")
    ppl.add_argument("--batch-size", type=_positive_int, default=4, help="windows per forward call")
    ppl.add_argument("--bos", default="auto", choices=("auto", "on", "off"),
                     help="start every window with the BOS token: auto (default: as the tokenizer does), on, off")
    ppl.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    ppl.add_argument("--dtype", default="auto",
                     help="weights' dtype: auto (default: the checkpoint's own), float32, bfloat16, float16")
    ppl.add_argument("--json", action="store_true", help="print the result as JSON")
    ppl.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import apply_overrides, build_config, load_recipe
    from .training import resume_config, run_training

    if args.resume:
        if args.recipe:
            raise SparsenetsError("give either a recipe or --resume RUN_DIR, not both")
        if args.out:
            raise SparsenetsError(f"--resume continues in its own directory {args.resume!r}; drop --out {args.out!r}")
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
    if args.loggers is not None:
        config = build_config({**config.model_dump(mode="json"), "loggers": args.loggers})
    if args.check_masks is not None:
        config = build_config({**config.model_dump(mode="json"), "check_masks": args.check_masks})
    if args.nproc > 1 and not launched_by_torchrun():  # this process only launches the ranks
        from .launch import run_ranks, without_option

        if config.lottery is not None:
            raise SparsenetsError("lottery (iterative magnitude pruning) runs in one process; drop --nproc")
        argv = without_option(without_option(args.argv, "--nproc"), "--max-restarts")
        if not args.resume and not args.out:  # every rank must write to the same directory
            argv += ["--out", str(run_dir)]
        return run_ranks(argv, args.nproc, args.max_restarts, debug=args.debug)
    if args.max_restarts and not launched_by_torchrun():
        raise SparsenetsError("--max-restarts needs --nproc N with N > 1")
    resume, overwrite = bool(args.resume), args.overwrite
    if restarted_by_torchrun():  # a rank died and torchrun restarted them all: continue the run
        from .io import dir_version_exists

        resume = dir_version_exists(run_dir / "checkpoint")  # run_training recovers a cut swap
        overwrite = overwrite or not resume  # died before its first checkpoint: start it again
        if os.environ.get("RANK") == "0":
            log.warning("restart %s of the ranks: %s", os.environ.get("TORCHELASTIC_RESTART_COUNT"),
                        "resuming from the last checkpoint" if resume else "starting again (no checkpoint yet)")
    summary = run_training(config, run_dir, resume=resume, overwrite=overwrite, progress=not args.quiet)
    if not args.quiet and "test_accuracy" in summary:  # rank 0 (or the single process)
        print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """The human-readable end-of-run text: accuracy, per-layer density, ITOP, plots."""
    from .report import Report

    if summary.get("method") == "lottery":
        from .lottery import format_lottery

        return format_lottery(summary)
    lines = [
        f"run        {summary['name']} ({summary['method']}, {summary['dataset']}, {summary['model']})",
        f"test acc   {summary['test_accuracy']:.4f} (best {summary['best_test_accuracy']:.4f}) "
        f"after {summary['epochs']} epochs",
        f"density    {summary['density']:.4f}   ITOP rate "
        + (f"{summary['itop_rate']:.4f}" if summary.get("itop_rate") is not None else "n/a"),
        f"time       {summary['train_seconds']:.1f} s training, "
        f"{100 * summary['topology_overhead']:.2f}% in {summary['topology_updates']} topology updates",
    ]
    if summary.get("world_size", 1) > 1:
        check = summary.get("mask_check") or {}
        lines.append(
            f"processes  {summary['world_size']} (data parallel); "
            + (f"masks identical on {summary['world_size']} ranks after all {check['updates_checked']} checked updates"
               if check.get("enabled") else "masks not compared across ranks (--check-masks compares them)")
        )
    lines += [
        "",
        str(Report.from_dict(summary["report"])),
        "",
        "plots      " + "\n           ".join(summary["plots"].values()),
    ]
    return "\n".join(lines)


def _cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.run_dir) / "summary.json"
    if not path.is_file() and (Path(args.run_dir) / "sparsity.json").is_file():
        return _report_pruned(args.run_dir, as_json=args.json)
    if not path.is_file():
        raise SparsenetsError(
            f"no summary.json (training run) or sparsity.json (pruned LLM) in {args.run_dir!r} "
            f"(is the run finished? resume it with --resume)"
        )
    summary = read_json(path, "run summary")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    try:
        text = format_summary(summary)
    except (KeyError, TypeError, ValueError) as error:
        raise SparsenetsError(
            f"run summary {str(path)!r} is not one sparsenets wrote (missing or wrong {error}); "
            f"--json prints it as it is"
        ) from None
    print(text)
    return 0


def _report_pruned(directory: str, *, as_json: bool) -> int:
    """Per-layer density, FLOPs and stored bytes of a directory written by ``prune-llm``."""
    from .llm import load_causal_lm, load_pruned_masks, read_sparsity_info
    from .report import report

    info = read_sparsity_info(directory) or {}
    model = load_causal_lm(directory, progress=False)
    result = report(model, masks=load_pruned_masks(directory))
    if as_json:
        print(json.dumps({"pruned": {k: v for k, v in info.items() if k != "layers"}, "report": result.to_dict()},
                         indent=2))
        return 0
    perplexity = (info.get("perplexity") or {}).get("value")
    lines = [
        f"model      {info.get('source_model', directory)} pruned with {info.get('method', '?')}, "
        f"structure {info.get('structure', '?')}, allocation {info.get('allocation', '?')}",
        f"sparsity   {info.get('summary', {}).get('prunable_sparsity', float('nan')):.4f} of the pruned layers"
        + (f"; perplexity {perplexity:.3f}" if perplexity is not None else ""),
    ]
    steps = [_recovery_text(step) for step in info.get("recovery") or []]
    if steps:
        lines.append("recovery   " + "; then ".join(steps))
    lines += ["FLOPs below count one token (one position per Linear)", "", str(result)]
    print("\n".join(lines))
    return 0


def _recovery_text(step: dict) -> str:
    """One recovery step of ``sparsity.json`` in words (DSnoT's swaps, or a fine-tuning run)."""
    if "swaps_total" in step:
        return f"{step['method']} ({step['swaps_total']} swaps)"
    text = f"{step.get('method', '?')} fine-tuning, {step.get('steps', '?')} steps"
    if step.get("topology_updates"):
        text += f", {100 * step.get('mask_change', 0):.2f}% of the mask changed"
    ppl = step.get("perplexity") or []
    if len(ppl) >= 2:
        text += f", perplexity {ppl[0]['value']:.2f} -> {ppl[-1]['value']:.2f}"
    return text


def _cmd_methods(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .config import LOTTERY_ALLOCATIONS, LotteryConfig
    from .dst import METHODS
    from .prune import METHODS as INIT_METHODS

    print("dynamic sparse training and gradual pruning (sparsity.method):")
    for name, cls in METHODS.items():
        defaults = ", ".join(f"{k}={v!r}" for k, v in cls().options().items())
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:9s} {doc}\n          {defaults or '(no options)'}")
    print("\npruning at initialization (sparsity.init, sparsity.init_allocation):")
    for name, cls in INIT_METHODS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        options = ", ".join(f"{f.name}={f.default!r}" for f in fields(cls))
        print(f"{name:9s} {doc}\n          {options or '(no options)'}")
    lottery = ", ".join(f"{k}={v!r}" for k, v in LotteryConfig().model_dump().items())
    print("\nlottery tickets (lottery: block, sparsity.method static):")
    print(f"lottery   iterative magnitude pruning with rewinding; allocation one of {', '.join(LOTTERY_ALLOCATIONS)}"
          f"\n          {lottery}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from .featsel.cli import format_select, run_select

    summary = run_select(
        args.input, method=args.method, k=args.k, out=args.out, overwrite=args.overwrite,
        label_column=args.label_column, mode=args.mode, epochs=args.epochs, backend=args.backend,
        device=args.device, seed=args.seed, settings=args.settings, max_samples=args.max_samples,
        data_dir=args.data_dir, progress=not args.quiet,
    )
    if not args.quiet:
        print(format_select(summary))
    return 0


def _cmd_prune_llm(args: argparse.Namespace) -> int:
    from .llm.dsnot import DSnoTOptions
    from .llm.pipeline import make_calibration, make_eval, prune_pretrained
    from .training import resolve_device

    record = prune_pretrained(
        args.model,
        args.out,
        method=args.method,
        sparsity=args.sparsity,
        structure=args.nm or "unstructured",
        allocation=args.allocation,
        owl_m=args.owl_m,
        owl_lambda=args.owl_lambda,
        targets=args.targets,
        ignore=args.ignore,
        dtype=args.dtype,
        calib_dtype=args.calib_dtype,
        low_memory=args.low_memory,
        recover=args.recover,
        dsnot=(DSnoTOptions(max_cycles=args.dsnot_cycles, threshold=args.dsnot_threshold, skip=tuple(args.dsnot_skip),
                            same_sign=not args.dsnot_no_sign) if args.recover == "dsnot" else None),
        calibration=make_calibration(args.calib, args.calib_samples, args.seq_len, args.seed, args.bos),
        evaluation=make_eval(args.eval_text, args.seq_len, args.eval_windows, args.bos) if args.eval else None,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    layers = record["layers"]
    values = list(layers.values())
    print(f"pruned     {len(layers)} layers of {args.model} with {record['method']} "
          f"({record['structure']}, {record['allocation']}) in {record['prune_seconds']:.1f} s")
    for step in record.get("recovery", []):
        print(f"recovered  with {step['method']}: {step['swaps_total']} swaps in "
              f"{len(step['swaps'])} layers ({len(step['skipped'])} kept their initial mask)")
    print(f"sparsity   target {record['sparsity']:.4f}, measured mean {sum(values) / len(values):.4f} "
          f"(min {min(values):.4f}, max {max(values):.4f})")
    if "perplexity" in record:
        print(f"perplexity {record['perplexity']['value']:.3f} ({record['perplexity']['protocol']['text']}, "
              f"{record['perplexity']['protocol']['n_windows'] or 'all'} × {args.seq_len} tokens)")
    print(f"saved      {record['out']} (loads with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def _cmd_finetune_llm(args: argparse.Namespace) -> int:
    from .llm.finetune import FinetuneOptions
    from .llm.finetune_pipeline import finetune_pretrained
    from .llm.pipeline import make_eval
    from .training import resolve_device

    options = FinetuneOptions(
        steps=args.steps, lr=args.lr, warmup_fraction=args.warmup_fraction, batch_size=args.batch_size,
        seq_len=args.seq_len, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        optimizer=args.optimizer, regrow_warmup=args.regrow_warmup, autocast=args.autocast,
        train_embeddings=args.train_embeddings, seed=args.seed, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every)
    seft = dict(update_every=args.update_every, grow_fraction=args.grow_fraction, grow_schedule=args.grow_schedule,
                end_fraction=args.end_fraction, grad_window=args.grad_window, prune_score=args.prune_score)
    evaluation = None if args.no_eval else make_eval(args.eval_text, args.eval_seq_len, args.eval_windows, args.bos)
    record = finetune_pretrained(args.model, args.out, method=args.method, data=None if args.data == "austen" else args.data,
                                 options=options, seft=seft, evaluation=evaluation, bos=args.bos,
                                 device=resolve_device(args.device), resume=args.resume, overwrite=args.overwrite,
                                 progress=not args.quiet)
    step = record["recovery"][-1]
    values = list(record["layers"].values())
    print(f"finetuned  {args.model} with {step['method']} for {step['steps']} steps in {step['seconds']:.1f} s "
          f"({step['topology_updates']} topology updates, {step['grown_total']} weights grown, "
          f"{100 * step['mask_change']:.2f}% of the mask changed)")
    print(f"sparsity   {record['structure']}, measured mean {sum(values) / len(values):.4f} "
          f"(min {min(values):.4f}, max {max(values):.4f})")
    if step["perplexity"]:
        before, after = step["perplexity"][0], step["perplexity"][-1]
        print(f"perplexity {before['value']:.3f} at step {before['step']} -> {after['value']:.3f} at step {after['step']}")
    print(f"optimizer  {step['optimizer_state_bytes'] / 2**20:.1f} MiB of state ({step['options']['optimizer']}); "
          f"peak RSS {step['peak_rss_mib']:.0f} MiB")
    print(f"saved      {record['out']} (loads with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def _cmd_eval_ppl(args: argparse.Namespace) -> int:
    from .llm.pipeline import evaluate_pretrained, make_eval
    from .training import resolve_device

    result = evaluate_pretrained(args.model, make_eval(args.text, args.seq_len, args.windows, args.bos),
                                 batch_size=args.batch_size, dtype=args.dtype, device=resolve_device(args.device),
                                 progress=not args.quiet)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    protocol = result["protocol"]
    print(f"perplexity {result['perplexity']:.3f} on {protocol['text']} "
          f"({protocol['n_windows'] or 'all'} windows × {protocol['seq_len']} tokens, {result['seconds']:.1f} s)")
    if result["saved"] is not None:
        print(f"saved run  {result['saved']:.3f} (same protocol, recorded in sparsity.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    args.debug = getattr(args, "debug", False)
    quiet = getattr(args, "quiet", False) or (launched_by_torchrun() and os.environ.get("RANK", "0") != "0")
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    commands = {"train": _cmd_train, "report": _cmd_report, "methods": _cmd_methods,
                "select": _cmd_select, "prune-llm": _cmd_prune_llm, "finetune-llm": _cmd_finetune_llm,
                "eval-ppl": _cmd_eval_ppl}
    try:
        code = commands[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return code
    except SparsenetsError as error:
        if args.debug:
            raise
        print(f"sparsenets: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `sparsenets report RUN | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:  # the file system said no: permissions, a full disk, a read-only mount
        if args.debug:
            raise
        where = f" {str(error.filename)!r}" if error.filename else ""
        print(f"sparsenets: error: cannot write or read{where}: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsenets: interrupted (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130
    except Exception as error:  # a rank whose peer died: one line, so the launcher can restart cleanly
        if args.debug or not launched_by_torchrun():
            raise
        print(f"sparsenets: error: rank {os.environ.get('RANK', '?')} stopped: {type(error).__name__}: "
              f"{first_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
