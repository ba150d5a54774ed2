"""Fine-tuning pruned LLMs: SEFT's per-row and N:M swaps, exact sparsity after every step, the
just-grown weights surviving their prune-back, resume equal to an uninterrupted run, and
``finetune-llm`` end to end (saved model reloads in plain transformers with its structure)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from test_llm_adapters import tiny_model, tokens  # noqa: E402
from test_llm_cli import cli, model_dir, prune_args  # noqa: E402, F401

from sparsenets import SEFT, LeanAdamW  # noqa: E402
from sparsenets.dst import swap_per_group, swap_per_row  # noqa: E402
from sparsenets.errors import SparsenetsError  # noqa: E402
from sparsenets.llm import FinetuneOptions, finetune, load_pruned_masks, prune  # noqa: E402
from sparsenets.llm.finetune import training_windows  # noqa: E402
from sparsenets.select import NM  # noqa: E402

PATTERN = tokens(1, 40, seed=3)[0]  # a learnable text: one random phrase of 40 tokens, repeated
TRAIN = PATTERN.repeat(75)
EVAL = torch.stack([PATTERN.repeat(2)[s : s + 32] for s in (3, 11, 29)])  # held-out windows of it


def options(**kw):
    return FinetuneOptions(**({"steps": 12, "seq_len": 32, "batch_size": 2, "lr": 3e-3, "autocast": "off"} | kw))


def pruned(structure="unstructured", seed=0):
    model = tiny_model("llama", seed=seed)
    kw = {"sparsity": 0.5} if structure == "unstructured" else {"structure": structure}
    result = prune(model, tokens(8, 32), method="wanda", progress=False, **kw)
    return model, result.masks


def nm_mask(rows, groups, n, m, generator):
    scores = torch.rand(rows, groups, m, generator=generator)
    mask = torch.zeros(rows, groups, m, dtype=torch.bool)
    mask.scatter_(2, scores.topk(n, dim=2).indices, True)
    return mask.reshape(rows, groups * m)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(2, 24), density=st.floats(0.05, 0.95),
       fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_row_swaps_keep_every_row_count_and_follow_the_scores(rows, cols, density, fraction, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    grow, prune_score = torch.rand(rows, cols, generator=g), torch.rand(rows, cols, generator=g)
    new = swap_per_row(mask, grow, prune_score, fraction)
    assert torch.equal(new.sum(1), mask.sum(1))
    for r in range(rows):
        grown, dropped = new[r] & ~mask[r], mask[r] & ~new[r]
        expected = min(round(fraction * int(mask[r].sum())), cols - int(mask[r].sum()))
        assert int(grown.sum()) == int(dropped.sum()) == expected
        if expected:  # the best inactive grew, the worst active went
            rest_inactive = grow[r][~mask[r] & ~grown]
            rest_active = prune_score[r][mask[r] & ~dropped]
            assert not rest_inactive.numel() or grow[r][grown].min() >= rest_inactive.max()
            assert not rest_active.numel() or prune_score[r][dropped].max() <= rest_active.min()


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 5), groups=st.integers(1, 6), nm=st.sampled_from([(1, 4), (2, 4), (4, 8), (3, 4)]),
       fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_group_swaps_keep_n_of_m(rows, groups, nm, fraction, seed):
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    mask = nm_mask(rows, groups, n, m, g)
    grow, prune_score = torch.rand(rows, groups * m, generator=g), torch.rand(rows, groups * m, generator=g)
    new = swap_per_group(mask, grow, prune_score, fraction, NM(n, m))
    assert (new.reshape(rows, groups, m).sum(2) == n).all()
    changed = (new != mask).reshape(rows, groups, m).any(2).sum(1)
    assert (changed == min(round(fraction * n * groups), groups)).all()


def test_seft_rejects_bad_options():
    with pytest.raises(SparsenetsError, match="prune_score"):
        SEFT(prune_score="random")
    with pytest.raises(SparsenetsError, match="grad_window"):
        SEFT(grad_window=-1)
    with pytest.raises(SparsenetsError, match="structure"):
        SEFT(structure="5:4")


def layer(model, name):
    return model.get_submodule(name.rpartition(".")[0]).weight


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_sparsity_exact_after_every_step_and_the_mask_evolves(structure):
    model, masks = pruned(structure)
    rows = {n: masks[n].sum(1).clone() for n in masks}
    seen = []

    def check(step, loss, sparsifier):
        for name, mask in sparsifier.masks.items():
            weight = layer(model, name)
            assert int((weight[~mask] != 0).sum()) == 0, (step, name)
            assert torch.equal(mask.sum(1), rows[name]), (step, name)
            if structure == "2:4":
                assert (mask.reshape(mask.shape[0], -1, 4).sum(2) == 2).all()
        seen.append(step)

    result = finetune(model, TRAIN, masks, "seft", options=options(), seft={"update_every": 3, "grow_fraction": 0.25},
                      eval_windows=EVAL, progress=False, on_step=check)
    assert seen == list(range(1, 13))
    assert result.mask_change > 0 and len(result.topology) == 3
    assert result.evals[-1][1] < result.evals[0][1]  # fine-tuning lowers held-out perplexity
    assert sum(int(result.masks.ever_active(n).sum()) for n in masks) > sum(int(m.sum()) for m in masks.values())


def test_prune_back_keeps_what_it_just_grew():
    """A weight grows at zero (|w·g| = 0): the same update must not prune it straight back."""
    model, masks = pruned()
    grown_at, survived = {}, []

    def check(step, loss, sparsifier):
        if sparsifier.history and sparsifier.history[-1]["step"] == step:
            for name in sparsifier.masks:
                new = sparsifier.masks[name] & ~before[name]
                grown_at[name] = new
                survived.append(bool(new.any()))
                assert int(layer(model, name)[new].abs().sum()) == 0  # grown at zero, still present
        before.update({n: m.clone() for n, m in sparsifier.masks.items()})

    before = {n: m.clone() for n, m in masks.items()}
    finetune(model, TRAIN, masks, "seft", options=options(steps=6), seft={"update_every": 3, "grow_fraction": 0.25},
             progress=False, on_step=check)
    assert survived and all(survived)


def test_fixed_mask_lowers_perplexity_and_never_changes_the_mask():
    model, masks = pruned()
    result = finetune(model, TRAIN, masks, "masked", options=options(), eval_windows=EVAL, progress=False)
    assert result.mask_change == 0 and not result.topology
    assert all(torch.equal(result.masks[n], masks[n]) for n in masks)
    assert result.evals[-1][1] < result.evals[0][1]
    assert isinstance(result.optimizer_state_bytes, int) and result.optimizer_state_bytes > 0


def test_lean_state_is_smaller_than_adamw_and_dense_method_redensifies():
    model, masks = pruned()
    lean = finetune(model, TRAIN, masks, "masked", options=options(steps=2), progress=False)
    model, masks = pruned()
    plain = finetune(model, TRAIN, masks, "masked", options=options(steps=2, optimizer="adamw"), progress=False)
    assert lean.optimizer_state_bytes < plain.optimizer_state_bytes
    model, masks = pruned()
    dense = finetune(model, TRAIN, None, "dense", options=options(steps=2), progress=False)
    assert dense.masks is None
    assert all(int((layer(model, n) == 0).sum()) == 0 for n in masks)


@pytest.mark.parametrize("method", ["seft", "masked"])
def test_resume_equals_uninterrupted(tmp_path, method):
    seft = {"update_every": 3, "grow_fraction": 0.25} if method == "seft" else None
    model, masks = pruned()
    straight = finetune(model, TRAIN, masks, method, options=options(), seft=seft, progress=False)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}

    model, masks = pruned()
    interrupted = {"at": 0}

    def stop(step, loss, sparsifier):
        if step == 7:  # after the checkpoint of step 6, an update at step 6 included
            interrupted["at"] = step
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(model, TRAIN, masks, method, options=options(checkpoint_every=3), seft=seft, progress=False,
                 checkpoint_dir=tmp_path / "ckpt", on_step=stop)
    model, masks = pruned()  # a fresh process: the pruned model again, then the checkpoint
    resumed = finetune(model, TRAIN, masks, method, options=options(checkpoint_every=3), seft=seft, progress=False,
                       checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert interrupted["at"] == 7 and resumed.steps == 12
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), reference[name]), name
    assert [s for s, _ in resumed.losses] == list(range(1, 13))
    assert resumed.losses == straight.losses
    if method == "seft":
        assert all(torch.equal(resumed.masks[n], straight.masks[n]) for n in masks)


def test_training_windows_are_a_function_of_the_step():
    a = training_windows(TRAIN, 5, 3, 16, seed=1)
    assert torch.equal(a, training_windows(TRAIN, 5, 3, 16, seed=1))
    assert not torch.equal(a, training_windows(TRAIN, 6, 3, 16, seed=1))
    with_bos = training_windows(TRAIN, 5, 3, 16, seed=1, bos_token=7)
    assert with_bos.shape == (3, 16) and (with_bos[:, 0] == 7).all()


def test_bad_input_gets_one_line_errors():
    model, masks = pruned()
    with pytest.raises(SparsenetsError, match="method"):
        finetune(model, TRAIN, masks, "lora", options=options(), progress=False)
    with pytest.raises(SparsenetsError, match="not pruned"):
        finetune(tiny_model("llama"), TRAIN, None, "seft", options=options(), progress=False)
    with pytest.raises(SparsenetsError, match="seq_len"):
        finetune(model, TRAIN[:10], masks, "masked", options=options(), progress=False)
    with pytest.raises(SparsenetsError, match="no topology update"):
        finetune(model, TRAIN, masks, "seft", options=options(steps=4), seft={"update_every": 20}, progress=False)
    with pytest.raises(SparsenetsError, match="lr"):
        FinetuneOptions(lr=0)


def test_lean_optimizer_is_used_for_sparse_methods(monkeypatch):
    used = []
    original = LeanAdamW.__init__

    def spy(self, *args, **kwargs):
        used.append(True)
        original(self, *args, **kwargs)

    monkeypatch.setattr(LeanAdamW, "__init__", spy)
    model, masks = pruned()
    finetune(model, TRAIN, masks, "seft", options=options(steps=3), seft={"update_every": 2}, progress=False)
    assert used


@pytest.mark.parametrize(("prune_extra", "structure"), [(("--sparsity", "0.5"), "unstructured"), (("--nm", "2:4"), "2:4")])
def test_finetune_llm_cli_saves_a_sparse_transformers_model(capsys, tmp_path, model_dir, prune_extra, structure):  # noqa: F811
    directory, text = model_dir
    pruned_dir, out = tmp_path / "pruned", tmp_path / "tuned"
    code, _, err = cli(capsys, *prune_args(directory, text, pruned_dir, *prune_extra))
    assert code == 0, err
    code, stdout, err = cli(capsys, "finetune-llm", "--model", pruned_dir, "--data", text, "--steps", 6, "--seq-len", 16,
                            "--batch-size", 2, "--lr", "3e-3", "--update-every", 2, "--grow-fraction", "0.3",
                            "--eval-text", text, "--eval-windows", 3, "--eval-seq-len", 16, "--autocast", "off",
                            "--checkpoint-every", 3, "--out", out, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "perplexity" in stdout and "saved" in stdout
    info = json.loads((out / "sparsity.json").read_text())
    assert info["structure"] == structure
    step = info["recovery"][-1]
    assert step["method"] == "seft" and step["steps"] == 6 and step["topology_updates"] >= 1
    assert step["perplexity"][0]["step"] == 0 and step["perplexity"][-1]["step"] == 6
    assert not (tmp_path / "tuned-checkpoint").exists()  # removed once saved
    masks = load_pruned_masks(out)  # checks the recorded structure row by row
    original = load_pruned_masks(pruned_dir)
    assert any(not torch.equal(masks[n], original[n]) for n in masks)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    for name, mask in masks.items():
        weight = model.get_parameter(name)
        assert int((weight[~mask] != 0).sum()) == 0
        assert torch.equal(mask.sum(1), original[name].sum(1))


def test_finetune_llm_cli_errors(capsys, tmp_path, model_dir):  # noqa: F811
    directory, text = model_dir
    code, _, err = cli(capsys, "finetune-llm", "--model", directory, "--steps", 2, "--out", tmp_path / "x", "--quiet")
    assert code == 2 and "not a pruned model directory" in err and "Traceback" not in err
    pruned_dir = tmp_path / "pruned"
    assert cli(capsys, *prune_args(directory, text, pruned_dir))[0] == 0
    code, _, err = cli(capsys, "finetune-llm", "--model", pruned_dir, "--steps", 2, "--out", tmp_path / "y",
                       "--resume", "--data", text, "--quiet")
    assert code == 2 and "nothing to resume" in err


def test_structure_is_read_from_the_masks_when_not_given():
    from sparsenets.llm.finetune import infer_structure

    g = torch.Generator().manual_seed(0)
    assert infer_structure({"a": nm_mask(3, 4, 2, 4, g), "b": nm_mask(5, 2, 2, 4, g)}) == "2:4"
    assert infer_structure({"a": nm_mask(3, 2, 4, 8, g)}) == "4:8"
    assert infer_structure({"a": torch.rand(4, 16, generator=g) < 0.5}) == "unstructured"
    assert infer_structure({"a": nm_mask(3, 4, 2, 4, g).t().contiguous()}, transposed=("a",)) == "2:4"


def test_seft_runs_as_a_dst_method_on_any_model(make_mlp):
    """``method="seft"`` in DynamicSparsity: rows keep their counts through updates."""
    from sparsenets import DynamicSparsity

    model = make_mlp((8, 16, 4), 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = DynamicSparsity(model, optimizer, density=0.5, total_steps=8, method="seft", distribution="uniform",
                                 update_every=2, grow_fraction=0.5)
    counts = {n: m.sum(1).clone() for n, m in sparsifier.masks.items()}
    start = {n: m.clone() for n, m in sparsifier.masks.items()}
    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.randint(0, 4, (32,))
    for _ in range(8):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        sparsifier.step()
        assert all(torch.equal(m.sum(1), counts[n]) for n, m in sparsifier.masks.items())
    assert any(not torch.equal(m, start[n]) for n, m in sparsifier.masks.items())


def test_report_shows_the_recovery_steps(capsys, tmp_path, model_dir):  # noqa: F811
    directory, text = model_dir
    pruned_dir, out = tmp_path / "pruned", tmp_path / "tuned"
    assert cli(capsys, *prune_args(directory, text, pruned_dir, "--recover", "dsnot"))[0] == 0
    code, _, err = cli(capsys, "finetune-llm", "--model", pruned_dir, "--data", text, "--steps", 4, "--seq-len", 16,
                       "--method", "masked", "--eval-text", text, "--eval-windows", 2, "--eval-seq-len", 16,
                       "--out", out, "--quiet")
    assert code == 0, err
    code, stdout, err = cli(capsys, "report", out)
    assert code == 0, err
    assert "recovery   dsnot (" in stdout and "then masked fine-tuning, 4 steps, perplexity" in stdout


def test_lean_optimizer_equals_adamw_on_a_fixed_mask():
    """Fixed-mask fine-tuning of the tiny decoder: LeanAdamW's weights are AdamW's, bit for bit."""
    runs = {}
    for kind in ("lean-adamw", "adamw"):
        model, masks = pruned()
        result = finetune(model, TRAIN, masks, "masked", options=options(steps=5, optimizer=kind, weight_decay=0.01),
                          progress=False)
        runs[kind] = ({n: p.detach().clone() for n, p in model.named_parameters()}, result.optimizer_state_bytes)
    (lean, lean_bytes), (plain, plain_bytes) = runs["lean-adamw"], runs["adamw"]
    for name in plain:
        assert torch.equal(lean[name], plain[name]), name
    assert lean_bytes < plain_bytes
