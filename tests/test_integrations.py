"""Sparsity inside any training loop: the two halves of a step, ``sparsifier.wrap()``, the Hugging
Face Trainer and Lightning callbacks, GradScaler overflow, gradient accumulation, autocast, clipping.

The same tiny RigL run goes through every path and must give the same masks and weights; the
invariants of ``tests/test_dst_properties.py`` (exact nnz, nothing revived through optimizer
state) are checked after every optimizer step on every path.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from sparse_checks import assert_exact_counts, assert_nothing_revived
from torch import nn

from sparsenets import DynamicSparsity, SparsenetsError, SparseOptimizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

SIZES, BATCH, STEPS = (12, 16, 10, 4), 8, 12
OPTIONS = {"density": 0.3, "method": "rigl", "update_every": 3, "seed": 1}


class Net(nn.Module):
    """An MLP behind ``forward(x, labels=None)`` (the form the HF Trainer calls)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        layers = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
            layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(SIZES) - 2 else [])
        self.net = nn.Sequential(*layers)

    def forward(self, x, labels=None):
        logits = self.net(x)
        if labels is None:
            return logits
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def data(n_batches=STEPS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * BATCH, SIZES[0], generator=gen)
    y = torch.randint(0, SIZES[-1], (n_batches * BATCH,), generator=gen)
    return x, y


def batches(x, y):
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def check_invariants(s: DynamicSparsity) -> None:
    """The property tests' invariants: exact nnz, nothing revived through optimizer state."""
    assert_exact_counts(s)
    assert_nothing_revived(s)
    assert not s.transient


def result(model, s):
    return {n: m.clone() for n, m in s.masks.items()}, {k: v.clone() for k, v in model.state_dict().items()}


# -- the four paths --------------------------------------------------------------------------
def run_plain():
    model = Net()
    optimizer = sgd(model)
    s = DynamicSparsity(model, optimizer, total_steps=STEPS, **OPTIONS)
    for x, y in batches(*data()):
        optimizer.zero_grad()
        model(x, y)["loss"].backward()
        s.step()
        check_invariants(s)
    return result(model, s), s


def run_wrapper():
    model = Net()
    s = DynamicSparsity(model, sgd(model), total_steps=STEPS, **OPTIONS)
    optimizer = s.wrap()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for x, y in batches(*data()):
        optimizer.zero_grad()
        model(x, y)["loss"].backward()
        optimizer.step()
        scheduler.step()
        check_invariants(s)
    return result(model, s), s


def hf_trainer(output_dir, model, callbacks, *, accumulation=1, n_batches=STEPS, save_steps=None):
    """A Trainer over ``model`` fed the plain loop's batches in order, SGD at a constant rate."""
    transformers = pytest.importorskip("transformers")
    from torch.utils.data import SequentialSampler

    class InOrder(transformers.Trainer):  # the plain loop's batch order
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    x, y = data(n_batches)
    optimizer = sgd(model)
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=BATCH, max_steps=n_batches // accumulation,
        gradient_accumulation_steps=accumulation, max_grad_norm=0.0, logging_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0, **saving,
    )
    return InOrder(model=model, args=args, train_dataset=[{"x": a, "labels": b} for a, b in zip(x, y)],
                   optimizers=(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)),
                   callbacks=callbacks)


def run_hf(tmp_path, accumulation=1, n_batches=STEPS):
    transformers = pytest.importorskip("transformers")

    from sparsenets.integrations.hf import SparsityCallback

    class Check(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            check_invariants(sparsity.sparsifier)

    model = Net()
    sparsity = SparsityCallback(**OPTIONS)
    hf_trainer(tmp_path / "hf", model, [sparsity, Check()], accumulation=accumulation, n_batches=n_batches).train()
    return result(model, sparsity.sparsifier), sparsity.sparsifier


def run_lightning(accumulation=1, n_batches=STEPS):
    pl = pytest.importorskip("lightning.pytorch")

    from sparsenets.integrations.lightning import SparsityCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.inner = Net()

        def training_step(self, batch, index):
            return self.inner(*batch)["loss"]

        def configure_optimizers(self):
            return sgd(self)

    class Check(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, index):
            if (index + 1) % accumulation == 0:
                check_invariants(sparsity.sparsifier)

    module = Module()
    sparsity = SparsityCallback(**OPTIONS)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data(n_batches)), batch_size=BATCH)
    trainer = pl.Trainer(max_steps=n_batches // accumulation, accumulate_grad_batches=accumulation,
                         accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[sparsity, Check()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    state = {k.removeprefix("inner."): v for k, v in module.state_dict().items()}
    masks = {k.removeprefix("inner."): v.clone() for k, v in sparsity.sparsifier.masks.items()}
    return (masks, state), sparsity.sparsifier


def test_every_path_gives_the_same_masks_and_weights(tmp_path):
    (masks, weights), s = run_plain()
    assert len(s.history) == 3 and s.step_count == STEPS
    for name, ((other_masks, other_weights), other) in {
        "wrapper": run_wrapper(), "hf": run_hf(tmp_path), "lightning": run_lightning(),
    }.items():
        assert other.step_count == STEPS and [r["step"] for r in other.history] == [3, 6, 9], name
        assert other_masks.keys() == masks.keys(), name
        for key in masks:
            assert torch.equal(other_masks[key], masks[key]), (name, key)
        for key in weights:
            assert torch.equal(other_weights[key], weights[key]), (name, key)


def test_accumulation_counts_optimizer_steps(tmp_path):
    """Four micro-batches per optimizer step: updates every update_every *optimizer* steps."""
    n_batches = 4 * STEPS
    x, y = data(n_batches)
    model = Net()
    s = DynamicSparsity(model, sgd(model), total_steps=STEPS, **OPTIONS)
    optimizer = s.wrap()
    for index, (xb, yb) in enumerate(batches(x, y), start=1):
        (model(xb, yb)["loss"] / 4).backward()
        if index % 4 == 0:
            optimizer.step()
            optimizer.zero_grad()
            check_invariants(s)
    assert s.step_count == STEPS and [r["step"] for r in s.history] == [3, 6, 9]
    _, hf = run_hf(tmp_path, accumulation=4, n_batches=n_batches)
    _, lit = run_lightning(accumulation=4, n_batches=n_batches)
    for other in (hf, lit):
        assert other.step_count == STEPS and [r["step"] for r in other.history] == [3, 6, 9]


def test_a_gradscaler_overflow_step_counts_for_nothing():
    model = Net()
    s = DynamicSparsity(model, sgd(model), total_steps=STEPS, **OPTIONS)
    optimizer = s.wrap()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for step, (x, y) in enumerate(batches(*data()), start=1):
        optimizer.zero_grad()
        scaler.scale(model(x, y)["loss"]).backward()
        overflow = step == 3  # an update step
        if overflow:
            model.net[0].weight.grad[0, 0] = float("inf")
            before = {n: m.clone() for n, m in s.masks.items()}, {k: v.clone() for k, v in model.state_dict().items()}
            count, updates, scale = s.step_count, len(s.history), scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if overflow:
            assert s.step_count == count == 2 and len(s.history) == updates == 0
            assert scaler.get_scale() < scale
            for name, mask in s.masks.items():
                assert torch.equal(mask, before[0][name])
            for key, value in model.state_dict().items():
                assert torch.equal(value, before[1][key])
        check_invariants(s)
    # the skipped batch did not count: 11 optimizer steps, updates at steps 3, 6, 9
    assert s.step_count == STEPS - 1 and [r["step"] for r in s.history] == [3, 6, 9]


def test_the_halves_around_a_skipped_step():
    model = Net()
    s = DynamicSparsity(model, sgd(model), total_steps=STEPS, **OPTIONS)
    with pytest.raises(SparsenetsError, match="needs a before_optimizer_step"):
        s.after_optimizer_step()
    (x, y), = batches(*data(1))
    model(x, y)["loss"].backward()
    s.before_optimizer_step()
    s.after_optimizer_step(skipped=True)
    assert s.step_count == 0 and not s.transient
    s.before_optimizer_step()
    s.before_optimizer_step()  # a first half left without its second: that step was skipped
    s.optimizer.step()
    s.after_optimizer_step()
    assert s.step_count == 1
    check_invariants(s)


def test_bf16_autocast_and_clipping_keep_the_invariants():
    model = Net()
    optimizer = sgd(model)
    s = DynamicSparsity(model, optimizer, total_steps=STEPS, **OPTIONS)
    for x, y in batches(*data()):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, y)["loss"]
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)
        assert float(norm) > 0
        total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        assert float(total) <= 0.05 * (1 + 1e-4)
        s.step()
        check_invariants(s)
    assert len(s.history) == 3


def test_wrapper_is_an_optimizer_with_both_states():
    model = Net()
    s = DynamicSparsity(model, sgd(model), total_steps=STEPS, **OPTIONS)
    optimizer = s.wrap()
    assert isinstance(optimizer, torch.optim.Optimizer) and isinstance(optimizer, SparseOptimizer)
    assert optimizer.param_groups is s.optimizer.param_groups and optimizer.state is s.optimizer.state
    for x, y in batches(*data())[:4]:
        optimizer.zero_grad()
        model(x, y)["loss"].backward()
        optimizer.step()
    saved = optimizer.state_dict()
    assert set(saved) == {"optimizer", "sparsifier"} and saved["sparsifier"]["step"] == 4
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    resumed_model = Net(seed=5)
    resumed_model.load_state_dict(weights)
    s2 = DynamicSparsity(resumed_model, sgd(resumed_model), total_steps=STEPS, **OPTIONS)
    s2.wrap().load_state_dict(saved)
    assert s2.step_count == 4
    for name in s.masks:
        assert torch.equal(s.masks[name], s2.masks[name])
    with pytest.raises(SparsenetsError, match="'optimizer' and 'sparsifier'"):
        s2.wrap().load_state_dict({"state": {}})
    with pytest.raises(SparsenetsError, match="the optimizer the sparsifier was built with"):
        s.wrap(sgd(model))


def test_accelerate_prepare_takes_the_wrapper():
    accelerate = pytest.importorskip("accelerate")
    (masks, weights), _ = run_plain()
    model = Net()
    s = DynamicSparsity(model, sgd(model), total_steps=STEPS, **OPTIONS)
    accelerator = accelerate.Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, s.wrap())
    for x, y in batches(*data()):
        optimizer.zero_grad()
        accelerator.backward(model(x, y)["loss"])
        optimizer.step()
        check_invariants(s)
    for name in masks:
        assert torch.equal(s.masks[name], masks[name])
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key])


def test_callbacks_need_a_density_and_the_masked_backend():
    pytest.importorskip("transformers")
    from sparsenets.integrations import build_sparsifier
    from sparsenets.integrations.hf import SparsityCallback

    with pytest.raises(SparsenetsError, match="needs density="):
        SparsityCallback(method="rigl")
    model = Net()
    with pytest.raises(SparsenetsError, match="backend 'masked'"):
        build_sparsifier(model, sgd(model), 10, {"density": 0.5, "backend": "sparse"})
    with pytest.raises(SparsenetsError, match="total_steps is taken from the trainer"):
        build_sparsifier(model, sgd(model), 10, {"density": 0.5, "total_steps": 3})


def test_hf_trainer_resumes_the_sparsifier_from_a_checkpoint(tmp_path):
    pytest.importorskip("transformers")
    from sparsenets.integrations.hf import STATE_FILE, SparsityCallback

    full_model, full = Net(), SparsityCallback(**OPTIONS)
    hf_trainer(tmp_path / "full", full_model, [full], save_steps=6).train()
    assert (tmp_path / "full" / "checkpoint-6" / STATE_FILE).is_file()

    resumed_model, resumed = Net(seed=7), SparsityCallback(**OPTIONS)  # other init: weights come from the checkpoint
    hf_trainer(tmp_path / "full", resumed_model, [resumed], save_steps=6).train(
        resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))
    assert resumed.sparsifier.step_count == STEPS
    assert [r["step"] for r in resumed.sparsifier.history] == [3, 6, 9]
    for name in full.sparsifier.masks:
        assert torch.equal(resumed.sparsifier.masks[name], full.sparsifier.masks[name])
    for key, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, rtol=0, atol=1e-6)


def test_lightning_resumes_the_sparsifier_from_a_checkpoint(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from sparsenets.integrations.lightning import SparsityCallback

    class Module(pl.LightningModule):
        def __init__(self, seed):
            super().__init__()
            self.inner = Net(seed)

        def training_step(self, batch, index):
            return self.inner(*batch)["loss"]

        def configure_optimizers(self):
            return sgd(self)

    class StopAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            trainer.should_stop = True

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data(STEPS // 2)), batch_size=BATCH)

    def fit(module, sparsity, *extra, ckpt_path=None):
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[sparsity, *extra])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, loader, ckpt_path=ckpt_path)
        return trainer

    full_module, full = Module(0), SparsityCallback(**OPTIONS)
    fit(full_module, full)
    half = fit(Module(0), SparsityCallback(**OPTIONS), StopAfterFirstEpoch())
    half.save_checkpoint(tmp_path / "half.ckpt")
    resumed_module, resumed = Module(7), SparsityCallback(**OPTIONS)
    fit(resumed_module, resumed, ckpt_path=tmp_path / "half.ckpt")
    assert full.sparsifier.step_count == resumed.sparsifier.step_count == STEPS
    assert [r["step"] for r in resumed.sparsifier.history] == [r["step"] for r in full.sparsifier.history] == [3, 6, 9]
    for name in full.sparsifier.masks:
        assert torch.equal(resumed.sparsifier.masks[name], full.sparsifier.masks[name])
    for key, value in full_module.state_dict().items():
        torch.testing.assert_close(resumed_module.state_dict()[key], value, rtol=0, atol=1e-6)
