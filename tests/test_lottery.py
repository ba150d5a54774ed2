"""Lottery tickets (IMP with rewinding) in the training tool: nested masks, exact rewinding of
weights, learning rate and data order, saved tickets, resume, and the recipe path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sparsenets.cli import main
from sparsenets.config import build_config
from sparsenets.errors import SparsenetsError
from sparsenets.io import load_tensors
from sparsenets.lottery import prune_round, run_lottery
from sparsenets.training import Trainer, run_training

ROOT = Path(__file__).resolve().parent.parent


def lottery_config(**lottery) -> dict:
    return {
        "name": "digits_lottery", "dataset": "digits", "model": "mlp", "hidden": [32, 16], "epochs": 2,
        "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "device": "cpu", "seed": 3,
        "sparsity": {"method": "static", "density": 0.3},
        "lottery": {"prune_fraction": 0.5, "rewind_step": 5, **lottery},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lottery")
    config = build_config(lottery_config())
    return config, run_dir, run_lottery(config, run_dir, progress=False)


def _ticket(run_dir, index):
    directory = run_dir / "tickets" / f"round_{index:02d}"
    masks = {k: v.bool() for k, v in load_tensors(directory / "masks.safetensors").items()}
    return masks, load_tensors(directory / "model.safetensors"), json.loads((directory / "ticket.json").read_text())


def test_rounds_reach_the_target_with_nested_masks(finished):
    config, run_dir, summary = finished
    rounds = summary["lottery"]["rounds"]
    # densities 1 -> 0.5 -> 0.3 (the last round prunes only what is left)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    total = None
    previous = None
    for index, record in enumerate(rounds):
        masks, weights, ticket = _ticket(run_dir, index)
        assert ticket == record
        total = sum(m.numel() for m in masks.values())
        nnz = sum(int(m.sum()) for m in masks.values())
        assert record["density"] == nnz / total
        for name, mask in masks.items():  # the zeros of a saved ticket are its mask's
            assert torch.equal(weights[name] != 0, mask), (index, name)
            if previous is not None:
                assert bool((mask <= previous[name]).all())  # nested: new ⊆ old
        previous = masks
    assert rounds[1]["density"] == pytest.approx(0.5, abs=1 / total)
    assert rounds[-1]["density"] == round(0.3 * total) / total
    assert (run_dir / "lottery.png").is_file() and (run_dir / "summary.json").is_file()
    assert (run_dir / "tickets" / "round_01" / "steps.csv").is_file()


def test_rewinding_restores_weights_lr_and_data_order_of_step_k(finished):
    config, run_dir, _ = finished
    k = config.lottery.rewind_step
    rewind = load_tensors(run_dir / "rewind.safetensors")
    # the rewind point is the round-0 weights after exactly k steps
    reference = Trainer.build(config, masks={n: torch.ones_like(m, dtype=torch.bool)
                                              for n, m in _ticket(run_dir, 0)[0].items()})
    for epoch in range(1, 3):
        reference.train_epoch(epoch, False, last_step=k)
        if k <= epoch * reference.steps_per_epoch:
            break
    for name, value in reference.model.state_dict().items():
        assert torch.equal(value, rewind[name]), name
    lr_at_k = reference.optimizer.param_groups[0]["lr"]
    batch_after_k = next(reference.epoch_batches(1, k + 1))

    masks = _ticket(run_dir, 1)[0]
    trainer = Trainer.build(config, masks=masks)
    trainer.model.load_state_dict(rewind)
    trainer.sparsifier.masks.apply_(trainer.model)
    trainer.advance_schedule(k)
    state = trainer.model.state_dict()
    for name, value in rewind.items():
        expected = value * masks[name] if name in masks else value
        assert torch.equal(state[name], expected), name  # survivors exactly at θ_k, the rest 0
    assert trainer.optimizer.param_groups[0]["lr"] == lr_at_k
    assert not trainer.optimizer.state  # a fresh optimizer
    step, xb, yb = next(trainer.epoch_batches(1, k + 1))
    assert step == batch_after_k[0] == k + 1
    assert torch.equal(xb, batch_after_k[1]) and torch.equal(yb, batch_after_k[2])


def test_resume_continues_after_the_last_ticket(finished, tmp_path):
    config, run_dir, summary = finished
    partial = tmp_path / "partial"
    run_lottery(config, partial, progress=False)
    # forget the last round, as an interruption during it would
    last = partial / "tickets" / f"round_{summary['rounds'] - 1:02d}"
    (last / "ticket.json").unlink()
    resumed = run_lottery(config, partial, resume=True, progress=False)
    assert [r["density"] for r in resumed["lottery"]["rounds"]] == [r["density"] for r in summary["lottery"]["rounds"]]
    a, b = _ticket(run_dir, summary["rounds"] - 1), _ticket(partial, summary["rounds"] - 1)
    for name in a[0]:
        assert torch.equal(a[0][name], b[0][name])
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("allocation", ["global", "lamp", "layer"])
def test_prune_round_counts(allocation):
    gen = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(20, 10, generator=gen), "b": torch.randn(5, 20, generator=gen)}
    masks = {"a": torch.rand(20, 10, generator=gen) < 0.8, "b": torch.ones(5, 20, dtype=torch.bool)}
    new = prune_round(weights, masks, 0.2, allocation, 0.1)
    for name in masks:
        assert bool((new[name] <= masks[name]).all())
        if allocation == "layer":
            nnz = int(masks[name].sum())
            assert int(new[name].sum()) == nnz - math.ceil(0.2 * nnz)
    nnz = sum(int(m.sum()) for m in masks.values())
    if allocation != "layer":
        assert sum(int(m.sum()) for m in new.values()) == nnz - math.ceil(0.2 * nnz)
    if allocation == "global":  # one threshold: no pruned survivor outweighs a kept one
        kept = torch.cat([weights[n].abs()[new[n]] for n in new])
        pruned = torch.cat([weights[n].abs()[masks[n] & ~new[n]] for n in new])
        assert float(pruned.max()) <= float(kept.min())
    # never below the target
    floor = prune_round(weights, masks, 0.99, allocation, 0.1)
    assert sum(int(m.sum()) for m in floor.values()) >= round(0.1 * 300) - (2 if allocation == "layer" else 0)


def test_lottery_config_errors():
    with pytest.raises(SparsenetsError, match="set sparsity.method to 'static'"):
        build_config({**lottery_config(), "sparsity": {"method": "rigl", "density": 0.3}})
    with pytest.raises(SparsenetsError, match="unknown lottery allocation 'lamp2'"):
        build_config(lottery_config(allocation="lamp2"))
    with pytest.raises(SparsenetsError, match="prune_fraction"):
        build_config(lottery_config(prune_fraction=1.5))
    with pytest.raises(SparsenetsError, match="not inside a round"):
        run_lottery(build_config(lottery_config(rewind_step=10_000)), Path("/nonexistent/never"), progress=False)


def test_the_cli_runs_a_lottery_recipe(tmp_path, capsys):
    recipe = tmp_path / "lottery.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(lottery_config(prune_fraction=0.7, rewind_step=0)))
    code = main(["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "lottery" and summary["rounds"] == 2
    code = main(["report", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and "round  1" in out
    assert run_training(build_config(lottery_config(prune_fraction=0.7, rewind_step=0)), tmp_path / "run",
                        resume=True, progress=False)["rounds"] == 2


def test_the_shipped_recipe_is_valid():
    config = build_config(__import__("yaml").safe_load((ROOT / "recipes" / "fashion_mnist_mlp_lottery.yaml").read_text()))
    assert config.lottery.prune_fraction == 0.2 and config.sparsity.method == "static"


# -- Lottery Pools -------------------------------------------------------------------------------
def test_candidate_order_and_interpolation():
    from sparsenets.lottery_pools import candidate_order, interpolate

    assert candidate_order(3, 5) == [2, 4, 1, 0]
    assert candidate_order(4, 5) == [3, 2, 1, 0]
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 1.0]), "n": torch.tensor(9)}
    mixed = interpolate(a, b, 0.25)
    assert torch.equal(mixed["w"], torch.tensor([2.5, 1.5])) and int(mixed["n"]) == 7


def test_pool_keeps_only_candidates_that_raise_validation_accuracy():
    from sparsenets.lottery_pools import lottery_pool

    tickets = [{"w": torch.tensor([4.0, 3.0, 2.0, 1.0])}, {"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}]
    # "validation" prefers weight mass at the last positions: mixing in ticket 0 only hurts
    weights, masks, steps = lottery_pool(tickets, 1, ["w"], 0.5, lambda w: float(w["w"][2:].sum() - w["w"][:2].sum()))
    assert torch.equal(masks["w"], torch.tensor([False, False, True, True]))
    assert torch.equal(weights["w"], torch.tensor([0.0, 0.0, 3.0, 4.0]))
    assert [s["round"] for s in steps] == [1, 0] and steps[1]["taken"] is False
    # a validation that likes the first positions takes ticket 0 with the smallest α
    weights, masks, steps = lottery_pool(tickets, 1, ["w"], 0.5, lambda w: float(w["w"][:2].sum()))
    assert steps[1]["taken"] and steps[1]["alpha"] == 0.05
    assert int(masks["w"].sum()) == 2  # re-pruned to the target density


def test_lottery_pools_run_on_a_validation_split_disjoint_from_train_and_test(tmp_path):
    config = build_config({**lottery_config(pools=True), "validation_size": 200})
    trainer = Trainer.build(config)
    x_val, _ = trainer.validation
    full = build_config({**lottery_config(), "validation_size": 0})
    everything = Trainer.build(full).data
    assert len(trainer.data.y_train) + len(x_val) == len(everything.y_train)

    def rows(x):
        return {tuple(r.tolist()) for r in x.reshape(len(x), -1)}

    val_rows, train_rows, test_rows = rows(x_val), rows(trainer.data.x_train), rows(trainer.data.x_test)
    assert len(val_rows) > 150  # (digits has a few duplicate images)
    assert not val_rows & train_rows and not val_rows & test_rows

    summary = run_lottery(config, tmp_path / "pools", progress=False)
    pool = summary["pool"]
    assert pool["density"] == summary["density"]
    assert pool["validation_accuracy"] >= pool["steps"][0]["validation_accuracy"]
    masks = {k: v.bool() for k, v in load_tensors(tmp_path / "pools" / "pool" / "masks.safetensors").items()}
    weights = load_tensors(tmp_path / "pools" / "pool" / "model.safetensors")
    for name, mask in masks.items():
        assert not bool(weights[name][~mask].any())
    assert all("validation_accuracy" in r for r in summary["lottery"]["rounds"])
    with pytest.raises(SparsenetsError, match="set validation_size"):
        build_config(lottery_config(pools=True))


def test_pool_candidates_can_be_limited():
    from sparsenets.lottery_pools import lottery_pool

    tickets = [{"w": torch.tensor([float(i), 1.0, 2.0, 3.0])} for i in range(4)]
    _, _, steps = lottery_pool(tickets, 3, ["w"], 0.5, lambda w: 0.0, max_candidates=2)
    assert [s["round"] for s in steps] == [3, 2, 1]
