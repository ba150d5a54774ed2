"""One-shot pruning of pretrained causal language models (Hugging Face transformers).

Needs the ``llm`` extra (``pip install 'sparsenets[llm]'``). Typical use::

    from sparsenets.llm import load_causal_lm, load_tokenizer, calibration_batches, eval_windows
    from sparsenets.llm import prune, perplexity

    model, tok = load_causal_lm("smollm2-135m"), load_tokenizer("smollm2-135m")
    result = prune(model, calibration_batches(tok, 128, 512), method="wanda", sparsity=0.5)
    result.sparsity, result.masks          # {layer: measured sparsity}, MaskStore of keep masks
    print(perplexity(model, eval_windows(tok, 512)))

    # Wanda at 70% with a training-free repair of the masks (DSnoT), on a fresh dense model:
    dense = load_causal_lm("smollm2-135m")
    result = recover(dense, calibration_batches(tok, 128, 512), initial="wanda", sparsity=0.7)

    # Fine-tune the pruned model on a third novel while its topology evolves (SEFT), the
    # per-row counts exact after every step:
    from sparsenets.llm.data import training_tokens
    tuned = finetune(dense, training_tokens(tok), result.masks, "seft",
                     options=FinetuneOptions(steps=100), eval_windows=eval_windows(tok, 256, 32))
    tuned.evals                 # [(step, held-out perplexity)], before and after

Nothing is imported from transformers until a model is loaded.
"""

from ..select import NM, Structure, Unstructured, parse_structure
from .adapters import DecoderAdapter, get_adapter
from .calibrate import sequential_calibration
from .data import calibration_batches, eval_windows, load_novel
from .dsnot import DSnoTOptions, dsnot_keep_mask
from .export import (
    layer_sparsity,
    load_pruned_masks,
    read_sparsity_info,
    save_pruned,
    sparsity_summary,
)
from .finetune import FINETUNE_METHODS, FinetuneOptions, FinetuneResult, finetune
from .finetune_pipeline import finetune_pretrained
from .methods import METHODS, LayerPruner, nm_keep_mask, row_keep_mask, wanda_scores
from .models import KNOWN_MODELS, load_causal_lm, load_tokenizer, resolve_model_dir
from .perplexity import perplexity
from .pipeline import (
    CalibrationProtocol,
    EvalProtocol,
    evaluate_pretrained,
    make_calibration,
    make_eval,
    prune_pretrained,
)
from .prune import ALLOCATIONS, PruneResult, prune, recover
from .stats import GramStats, InputNormStats

__all__ = [
    "ALLOCATIONS",
    "FINETUNE_METHODS",
    "FinetuneOptions",
    "FinetuneResult",
    "finetune",
    "finetune_pretrained",
    "CalibrationProtocol",
    "EvalProtocol",
    "evaluate_pretrained",
    "layer_sparsity",
    "load_pruned_masks",
    "make_calibration",
    "make_eval",
    "prune_pretrained",
    "read_sparsity_info",
    "save_pruned",
    "sparsity_summary",
    "KNOWN_MODELS",
    "METHODS",
    "DSnoTOptions",
    "DecoderAdapter",
    "GramStats",
    "InputNormStats",
    "LayerPruner",
    "NM",
    "PruneResult",
    "Structure",
    "Unstructured",
    "calibration_batches",
    "dsnot_keep_mask",
    "eval_windows",
    "get_adapter",
    "load_causal_lm",
    "load_novel",
    "load_tokenizer",
    "nm_keep_mask",
    "parse_structure",
    "perplexity",
    "prune",
    "recover",
    "resolve_model_dir",
    "row_keep_mask",
    "sequential_calibration",
    "wanda_scores",
]
