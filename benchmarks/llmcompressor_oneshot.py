"""Run llm-compressor's one-shot SparseGPT / Wanda on given calibration token ids (peer baseline).

Runs inside llm-compressor's own virtualenv (it pins its own transformers), started by
``benchmarks/llm_prune.py``; it imports nothing from sparsenets. The calibration windows come
from a safetensors file written by the benchmark, so both systems see identical tokens. The
pruned weights are written to a safetensors file; the benchmark loads them into the model in the
sparsenets environment and evaluates perplexity with the same code for every system.

Usage (inside the llm-compressor venv)::

    python benchmarks/llmcompressor_oneshot.py --model-dir DIR --calib calib.safetensors \
        --method sparsegpt --sparsity 0.5 [--nm 2:4] --out weights.safetensors --result r.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from safetensors.torch import load_file, save_file


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would carry the launching process's peak across exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--calib", required=True, help="safetensors file with 'input_ids' (n, seq_len)")
    parser.add_argument("--method", choices=("sparsegpt", "wanda"), required=True)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nm", default=None, help="N:M structure, e.g. 2:4")
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = load_file(args.calib)["input_ids"]
    n_samples, seq_len = ids.shape
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, local_files_only=True)
    common = dict(sparsity=args.sparsity, mask_structure=args.nm or "0:0", targets=["Linear"],
                  ignore=["re:.*lm_head"])  # lm_head is tied to the embeddings: protect it
    if args.method == "sparsegpt":
        recipe = SparseGPTModifier(block_size=128, dampening_frac=0.01, **common)
    else:
        recipe = WandaPruningModifier(**common)
    start = time.perf_counter()
    oneshot(model=model, processor=tokenizer, dataset=dataset, recipe=recipe,
            num_calibration_samples=n_samples, max_seq_length=seq_len, shuffle_calibration_samples=False,
            pipeline="sequential")
    seconds = time.perf_counter() - start
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, args.out)
    import llmcompressor

    with open(args.result, "w") as handle:
        json.dump({"seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                   "version": llmcompressor.__version__, "n_samples": n_samples, "seq_len": seq_len}, handle)


if __name__ == "__main__":
    main()
