"""Recovering pruned SmolLM2-135M without losing sparsity: DSnoT, SEFT, fixed-mask fine-tuning,
dense fine-tuning + re-pruning and LoRA (merged), side by side on the same budget.

For Wanda and SparseGPT at 50%, 2:4 and 70%, each in a fresh process:

* ``pruned``: one-shot pruning (the masks every fine-tuning run starts from, saved to ``--work``);
* ``dsnot``: the same pruning with DSnoT's training-free repair (library default options), and
  ``dsnot-all`` with every layer processed (no MLP skip; at 70% only unless
  ``--dsnot-all-everywhere``);
* ``seft``, ``masked``: :func:`sparsenets.llm.finetune` of the pruned model (LeanAdamW);
* ``dense-reprune``: dense fine-tuning (AdamW, the model re-densifies) and the same pruning again;
* ``lora``: LoRA (peft, rank 16 on every Linear of the blocks) trained, merged into the weights,
  and measured as it is then (merging re-densifies): only when ``peft`` is installed.

Every fine-tuning run uses the same steps, windows (drawn from *Mansfield Park*, used neither for
calibration nor for evaluation), learning rate schedule (linear warm-up over 10%, cosine to 0),
batch and bf16 autocast (on CPUs with bf16 units). Reported per run: held-out perplexity (the
first ``--eval-windows`` × 512 tokens of *Emma*, float32), measured sparsity of the pruned layers
and whether every row (N:M: every group) has exactly its count, optimizer-state bytes, SEFT's
accumulator bytes, peak RSS of the process, wall time of the training steps, and for SEFT the
share of the mask that changed.

Budget: fine-tuning on a 2-core CPU is slow, so the default is 24 steps of 4 × 256 tokens
(~25k tokens, ~3 s a step with bf16 autocast on an AMX CPU), SEFT updating every 4 steps; the
whole benchmark then takes under an hour. It is a recovery *signal*, not a converged fine-tune.
Pruning uses the library's default calibration precision (bf16 forwards on CPUs with bf16 units).

    .venv/bin/python benchmarks/llm_recover.py --markdown
    .venv/bin/python benchmarks/llm_recover.py --only wanda-0.7 --variants pruned seft masked
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine  # noqa: E402

MODEL = "smollm2-135m"
SETTINGS = {"0.5": {"sparsity": 0.5, "structure": "unstructured"}, "2:4": {"sparsity": None, "structure": "2:4"},
            "0.7": {"sparsity": 0.7, "structure": "unstructured"}}
METHODS = ("wanda", "sparsegpt")
VARIANTS = ("pruned", "dsnot", "dsnot-all", "seft", "masked", "dense-reprune", "lora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------- child processes (one run each)


def load_data(work: Path):
    from sparsenets.io import load_tensors

    return load_tensors(work / "data.safetensors")


def measure_sparsity(model, masks=None) -> dict:
    """Mean sparsity of the prunable layers (zeros), and whether every row keeps its count:
    ``masks`` given (sparse fine-tuning), the weights are 0 outside them and the rows keep the
    original counts."""
    from sparsenets.llm import get_adapter
    from sparsenets.llm.export import layer_sparsity

    layers = layer_sparsity(model)
    out = {"sparsity": sum(layers.values()) / len(layers), "sparsity_min": min(layers.values()),
           "sparsity_max": max(layers.values())}
    if masks is not None:
        linears = get_adapter(model).prunable_linears(model)
        out["outside_mask_nonzeros"] = sum(int((linears[n.removesuffix(".weight")].weight[~m] != 0).sum())
                                           for n, m in masks.items())
    return out


def structure_exact(masks, reference, structure: str) -> bool:
    """Every row of every mask keeps the reference's count (and N of every M for N:M)."""
    for name, mask in masks.items():
        if not bool((mask.sum(1) == reference[name].sum(1)).all()):
            return False
        if structure != "unstructured":
            n, m = (int(x) for x in structure.split(":"))
            if not bool((mask.reshape(mask.shape[0], -1, m).sum(2) == n).all()):
                return False
    return True


def run_prune(run: dict, args, data) -> dict:
    """One-shot pruning (optionally with DSnoT) in this process; saves the masks of ``pruned``."""

    from sparsenets.llm import DSnoTOptions, load_causal_lm, perplexity, prune

    setting = SETTINGS[run["setting"]]
    model = load_causal_lm(MODEL)
    knobs = {"var_power": args.dsnot_var_power, "threshold": args.dsnot_threshold,
             "same_sign": not args.dsnot_no_same_sign}
    dsnot = {"dsnot": DSnoTOptions(**knobs),
             "dsnot-all": DSnoTOptions(skip=None, **knobs)}.get(run["variant"], None)
    recover = "dsnot" if run["variant"].startswith("dsnot") else None
    start = time.perf_counter()
    result = prune(model, data["calibration"], method=run["method"], sparsity=setting["sparsity"],
                   structure=setting["structure"], progress=False, calib_dtype=calib_dtype(args),
                   recover=recover, dsnot=dsnot)
    seconds = time.perf_counter() - start
    out = {"prune_seconds": seconds, "peak_rss_mib": peak(), **measure_sparsity(model)}
    if run["variant"] == "pruned":
        from sparsenets.io import save_tensors

        save_tensors(Path(args.work) / f"{run['config']}.masks.safetensors", dict(result.masks.items()))
        model.save_pretrained(Path(args.work) / f"{run['config']}.pruned", safe_serialization=True)
    if result.recovery is not None:
        out["dsnot_swaps"] = sum(result.recovery["swaps"].values())
    out["perplexity"] = perplexity(model, data["windows"], progress=False)
    return out


def calib_dtype(args):
    """The calibration forwards' dtype: the library's ``auto`` choice (bfloat16 on CPUs with bf16
    units) or the one asked."""
    import torch

    from sparsenets.llm.models import resolve_calib_dtype

    return resolve_calib_dtype(args.calib_dtype, torch.float32)


def finetune_options(args, **extra):
    from sparsenets.llm import FinetuneOptions

    return FinetuneOptions(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len,
                           seed=args.seed, **extra)


def run_finetune(run: dict, args, data) -> dict:
    """SEFT, fixed-mask or dense fine-tuning (+ re-pruning) of the saved pruned model."""
    import torch
    import transformers

    from sparsenets.io import load_tensors
    from sparsenets.llm import finetune, perplexity, prune
    from sparsenets.masks import MaskStore

    work = Path(args.work)
    model = transformers.AutoModelForCausalLM.from_pretrained(work / f"{run['config']}.pruned", dtype=torch.float32)
    saved = load_tensors(work / f"{run['config']}.masks.safetensors")
    masks = MaskStore({n: tuple(m.shape) for n, m in saved.items()})
    for name, mask in saved.items():
        masks.set(name, mask)
    setting = SETTINGS[run["setting"]]
    method = {"seft": "seft", "masked": "masked", "dense-reprune": "dense"}[run["variant"]]
    seft = {"update_every": args.update_every, "grow_fraction": args.grow_fraction} if method == "seft" else None
    result = finetune(model, data["train"], masks if method != "dense" else None, method,
                      options=finetune_options(args), seft=seft, structure=setting["structure"], progress=False)
    out = {"train_seconds": result.seconds, "optimizer_state_bytes": result.optimizer_state_bytes,
           "method_state_bytes": result.method_state_bytes, "final_loss": result.losses[-1][1],
           "topology_updates": len(result.topology), "mask_change": result.mask_change}
    if method == "dense":
        out["perplexity_dense_finetuned"] = perplexity(model, data["windows"], progress=False)
        out["sparsity_after_finetune"] = measure_sparsity(model)["sparsity"]
        start = time.perf_counter()
        again = prune(model, data["calibration"], method=run["method"], sparsity=setting["sparsity"],
                      structure=setting["structure"], progress=False, calib_dtype=calib_dtype(args))
        out["reprune_seconds"] = time.perf_counter() - start
        out["structure_exact"] = structure_exact(again.masks, saved, setting["structure"])
        out["perplexity"] = perplexity(model, data["windows"], progress=False)
        out.update(measure_sparsity(model))
    else:
        out["perplexity"] = perplexity(model, data["windows"], progress=False)
        out["structure_exact"] = structure_exact(result.masks, saved, setting["structure"])
        out.update(measure_sparsity(model, result.masks))
    out["peak_rss_mib"] = peak()
    return out


def run_lora(run: dict, args, data) -> dict:
    """LoRA on the pruned model, merged back: trained like the others, measured after merging."""
    import peft
    import torch
    import transformers

    from sparsenets.llm import finetune, perplexity

    model = transformers.AutoModelForCausalLM.from_pretrained(Path(args.work) / f"{run['config']}.pruned",
                                                              dtype=torch.float32)
    config = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(model, config)
    args.lr = args.lora_lr
    result = finetune(wrapped, data["train"], None, "dense", options=finetune_options(args), progress=False)
    merged = wrapped.merge_and_unload()
    out = {"train_seconds": result.seconds, "optimizer_state_bytes": result.optimizer_state_bytes,
           "final_loss": result.losses[-1][1],
           "perplexity": perplexity(merged, data["windows"], progress=False), "peft_version": peft.__version__,
           "lora_lr": args.lora_lr, **measure_sparsity(merged), "peak_rss_mib": peak()}
    return out


def peak() -> float:
    from sparsenets.memory_use import peak_rss_mib

    return peak_rss_mib()


def child(args) -> None:
    run = json.loads(args.child)
    data = load_data(Path(args.work))
    if run["variant"] in ("pruned", "dsnot", "dsnot-all"):
        result = run_prune(run, args, data)
    elif run["variant"] == "lora":
        result = run_lora(run, args, data)
    else:
        result = run_finetune(run, args, data)
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------- orchestration


def prepare_data(args) -> None:
    """Calibration ids, evaluation windows and training tokens, written once for every process."""
    from sparsenets.io import save_tensors
    from sparsenets.llm import calibration_batches, eval_windows, load_tokenizer, resolve_model_dir
    from sparsenets.llm.data import training_tokens

    resolve_model_dir(MODEL)
    tok = load_tokenizer(MODEL)
    save_tensors(Path(args.work) / "data.safetensors", {
        "calibration": calibration_batches(tok, args.calib_samples, 512, args.seed),
        "windows": eval_windows(tok, 512, args.eval_windows),
        "train": training_tokens(tok),
    })


def has_peft() -> bool:
    check = [sys.executable, "-c", "import peft"]
    return subprocess.run(check, capture_output=True).returncode == 0


def runs(args) -> list[dict]:
    chosen = []
    for method in METHODS:
        for setting in SETTINGS:
            config = f"{method}-{setting}"
            if args.only and config not in args.only:
                continue
            for variant in args.variants:
                if variant == "dsnot-all" and setting != "0.7" and not args.dsnot_all_everywhere:
                    continue
                tag = f"-{args.tag}" if args.tag else ""
                chosen.append({"id": f"{config}-{variant}{tag}", "config": config, "method": method,
                               "setting": setting, "variant": variant})
    return chosen


def run_one(run: dict, args) -> dict:
    work = Path(args.work)
    result = work / f"{run['id']}.json"
    cmd = [sys.executable, __file__, "--child", json.dumps(run), "--result", str(result), "--work", args.work,
           "--steps", str(args.steps), "--lr", str(args.lr), "--lora-lr", str(args.lora_lr),
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--seed", str(args.seed),
           "--update-every", str(args.update_every), "--grow-fraction", str(args.grow_fraction),
           "--calib-dtype", args.calib_dtype, "--dsnot-var-power", str(args.dsnot_var_power),
           "--calib-samples", str(args.calib_samples), "--dsnot-threshold", str(args.dsnot_threshold)]
    cmd += ["--dsnot-all-everywhere"] if args.dsnot_all_everywhere else []
    cmd += ["--dsnot-no-same-sign"] if args.dsnot_no_same_sign else []
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    log = work / f"{run['id']}.log"
    with open(log, "w") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"{run['id']} failed (exit {code}); see {log}")
    return {**run, **json.loads(result.read_text())}


def pruned_perplexities(rows: list[dict], work: Path) -> dict[str, float]:
    """The perplexity after pruning of every config: from this run's rows, else from the
    ``pruned`` run's result file in ``work``."""
    found = {r["config"]: r["perplexity"] for r in rows if r["variant"] == "pruned"}
    for config in {r["config"] for r in rows} - set(found):
        path = work / f"{config}-pruned.json"
        if path.is_file():
            found[config] = json.loads(path.read_text())["perplexity"]
    return found


def format_table(rows: list[dict], pruned: dict[str, float], markdown: bool = False) -> str:
    head = ["config", "variant", "ppl", "vs pruned", "sparsity", "rows exact", "optimizer MiB", "SEFT acc. MiB",
            "peak RSS MiB", "time s", "mask changed"]
    lines = []
    for r in rows:
        base = pruned.get(r["config"])
        seconds = r.get("train_seconds", r.get("prune_seconds", 0.0)) + r.get("reprune_seconds", 0.0)
        exact = r.get("structure_exact")
        lines.append([
            r["config"], r["variant"], f"{r['perplexity']:.2f}",
            f"{100 * (r['perplexity'] / base - 1):+.1f}%" if base and r["variant"] != "pruned" else "",
            f"{r['sparsity']:.4f}", "" if exact is None else ("yes" if exact else "NO"),
            f"{r['optimizer_state_bytes'] / 2**20:.0f}" if "optimizer_state_bytes" in r else "",
            f"{r['method_state_bytes'] / 2**20:.0f}" if r.get("method_state_bytes") else "",
            f"{r['peak_rss_mib']:.0f}", f"{seconds:.1f}",
            f"{100 * r['mask_change']:.2f}%" if r["variant"] == "seft" else "",
        ])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*line) for line in lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lora-lr", type=float, default=None, help="LoRA's peak lr (default: --lr)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--update-every", type=int, default=4, help="SEFT's ΔT at this budget (default 4)")
    parser.add_argument("--grow-fraction", type=float, default=0.05)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--dsnot-var-power", type=float, default=1.0,
                        help="DSnoT's variance power in its grow score (default 1, the reference's)")
    parser.add_argument("--dsnot-threshold", type=float, default=0.1, help="DSnoT's update threshold (default 0.1)")
    parser.add_argument("--dsnot-no-same-sign", action="store_true",
                        help="DSnoT without the sign condition (what the reference's unstructured path runs)")
    parser.add_argument("--dsnot-all-everywhere", action="store_true",
                        help="run DSnoT on every layer at every setting (default: at 70%% only)")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", help="configs to run, e.g. wanda-0.7 sparsegpt-2:4")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "llm_recover"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "llm_recover.json"))
    parser.add_argument("--update", action="store_true",
                        help="re-run the chosen runs and replace them in an existing --json (others kept)")
    parser.add_argument("--tag", help="suffix of the run ids (an ablation beside the main runs in the same --work)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.lora_lr = args.lr if args.lora_lr is None else args.lora_lr
    if args.child:
        child(args)
        return 0
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if "lora" in args.variants and not has_peft():
        print("peft is not installed: the LoRA runs are skipped (pip install 'peft==0.21.*')", flush=True)
        args.variants = [v for v in args.variants if v != "lora"]
    if any(v not in ("pruned", "dsnot", "dsnot-all") for v in args.variants) and "pruned" not in args.variants:
        missing = [c for c in {r["config"] for r in runs(args)} if not (Path(args.work) / f"{c}.pruned").is_dir()]
        if missing:
            sys.exit(f"fine-tuning starts from the pruned models; run the 'pruned' variant of {missing} first")
    started = time.perf_counter()
    prepare_data(args)
    rows = []
    for run in runs(args):
        began = time.perf_counter()
        rows.append(run_one(run, args))
        r = rows[-1]
        r["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{run['id']:28s} ppl {r['perplexity']:9.2f}  sparsity {r['sparsity']:.4f}  "
              f"RSS {r['peak_rss_mib']:.0f} MiB  ({time.perf_counter() - began:.0f} s)", flush=True)
    total = time.perf_counter() - started
    previous = None
    if args.update and Path(args.json).is_file():  # replace the re-run ids, keep the others
        previous = json.loads(Path(args.json).read_text())
        fresh = {r["id"]: r for r in rows}
        merged = [fresh.pop(r["id"], r) for r in previous["runs"]]
        rows = merged + list(fresh.values())
        total += previous.get("total_seconds", 0.0)
    pruned = pruned_perplexities(rows, Path(args.work))
    print()
    print(format_table(rows, pruned))
    if args.markdown:
        print()
        print(format_table(rows, pruned, markdown=True))
    import torch

    from sparsenets.io import write_json

    protocol = {"model": MODEL, "calibration": f"{args.calib_samples} x 512 tokens of Pride and Prejudice + "
                     f"Sense and Sensibility, seed {args.seed}",
                     "evaluation": f"first {args.eval_windows} x 512 tokens of Emma, float32",
                     "training": f"{args.steps} steps x {args.batch_size} windows x {args.seq_len} tokens of "
                                 f"Mansfield Park, lr {args.lr} (LoRA {args.lora_lr}), warm-up 10% then cosine",
                     "seft": {"update_every": args.update_every, "grow_fraction": args.grow_fraction},
                     "dsnot_var_power": args.dsnot_var_power,
                     "dsnot_threshold": args.dsnot_threshold, "dsnot_same_sign": not args.dsnot_no_same_sign, "tag": args.tag}
    if previous is not None:  # the first run's protocol stays; each update says what it changed
        protocol = previous["protocol"] | {"updates": previous["protocol"].get("updates", []) + [
            {**protocol, "ids": [r["id"] for r in runs(args)]}]}
    write_json(args.json, {
        "protocol": protocol,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    **machine()},
        "total_seconds": total,
        "runs": rows,
    })
    print(f"\nwrote {args.json} ({total / 60:.1f} min in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
