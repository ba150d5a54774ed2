"""Per-step loggers: steps.csv and TensorBoard from CLI runs on digits, resume, bad names."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_training import digits_config

import sparsenets as sn
from sparsenets.cli import main
from sparsenets.config import build_config
from sparsenets.io import load_tensors, load_torch
from sparsenets.loggers import CSVLogger, StepRecorder, make_loggers
from sparsenets.training import run_training

STEPS_PER_EPOCH = 23  # ceil(1437 digits training images / 64)
SPARSE_COLUMNS = ["step", "epoch", "loss", "lr", "density", "itop_rate", "churn", "topology_seconds"]


def _recipe(tmp_path: Path, method: str = "rigl", **extra) -> dict:
    """The digits recipe of test_training (density 0.2, topology update every 10 steps), 2 epochs."""
    recipe = digits_config(method, **{"epochs": 2, **extra})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return recipe


def _train(tmp_path: Path, *argv: str, method: str = "rigl") -> Path:
    _recipe(tmp_path, method)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "recipe.yaml"), "--out", str(run), "--quiet", *argv]) == 0
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_cli_run_writes_one_row_per_step(tmp_path):
    run = _train(tmp_path)
    rows = _rows(run / "steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [int(r["epoch"]) for r in rows] == [1] * STEPS_PER_EPOCH + [2] * STEPS_PER_EPOCH
    saved = load_tensors(run / "checkpoint" / "masks.safetensors")
    layers = {f"density/{key.removeprefix('mask/')}" for key in saved if key.startswith("mask/")}
    assert list(rows[0])[: len(SPARSE_COLUMNS)] == SPARSE_COLUMNS
    assert set(list(rows[0])[len(SPARSE_COLUMNS) :]) == layers and len(layers) == 3
    assert float(rows[0]["lr"]) == 0.01  # the rate the first step used (cosine decay after it)
    assert float(rows[-1]["lr"]) < float(rows[1]["lr"]) < 0.01
    assert all(float(r["density"]) == pytest.approx(0.2, abs=1e-3) for r in rows)
    history = load_torch(run / "checkpoint" / "state.pt")["sparsifier"]["history"]
    churn = {int(r["step"]): float(r["churn"]) for r in rows if r["churn"] != ""}
    assert churn == {h["step"]: pytest.approx(h["churn"]) for h in history}
    assert len(churn) > 1 and all(step % 10 == 0 for step in churn)
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert float(rows[-1]["itop_rate"]) == pytest.approx(summary["itop_rate"])
    assert float(rows[-1]["topology_seconds"]) == pytest.approx(summary["topology_seconds"])
    assert summary["step_logs"] == {"csv": "steps.csv"}
    assert not (run / "tensorboard").exists()


def test_dense_run_logs_loss_and_lr_only(tmp_path):
    run = _train(tmp_path, "--set", "epochs=1", method="dense")
    rows = _rows(run / "steps.csv")
    assert list(rows[0]) == ["step", "epoch", "loss", "lr"]
    assert len(rows) == STEPS_PER_EPOCH


def test_no_loggers_writes_no_step_file(tmp_path):
    run = _train(tmp_path, "--set", "epochs=1", "--set", "loggers=[]", method="dense")
    assert not (run / "steps.csv").exists()
    assert yaml.safe_load((run / "summary.json").read_text())["step_logs"] == {}


def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _write_events(directory: Path, losses: dict[int, float]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(directory)) as writer:
        for step, value in losses.items():
            writer.add_scalar("loss", value, global_step=step)


def test_tensorboard_logger_writes_readable_events(tmp_path):
    run = _train(tmp_path, "--logger", "tensorboard")
    assert not (run / "steps.csv").exists()  # --logger replaces the recipe's list
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    scalars = _scalars(run / "tensorboard")
    assert {"loss", "lr", "density", "itop_rate", "churn", "topology_seconds", "density/fc1.weight"} <= set(scalars)
    assert [step for step, _ in scalars["loss"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert all(value == pytest.approx(0.2, abs=1e-3) for _, value in scalars["density"])
    history = load_torch(run / "checkpoint" / "state.pt")["sparsifier"]["history"]
    assert [step for step, _ in scalars["churn"]] == [h["step"] for h in history]


def test_resumed_run_continues_the_same_files(tmp_path):
    config = build_config(_recipe(tmp_path, epochs=3, loggers=["csv", "tensorboard"]))
    run_training(config, tmp_path / "full", progress=False)
    resumed = tmp_path / "resumed"
    assert run_training(config, resumed, progress=False, stop_after_epochs=1)["finished"] is False
    # An interruption mid-epoch 2 leaves steps past the checkpoint (step 23), the last row cut off.
    with (resumed / "steps.csv").open("a") as file:
        file.write("24,2,9.9,0.01,,,,,,\n25,2,9.8")
    _write_events(tmp_path / "extra", {24: 9.9, 25: 9.8})
    first = next((resumed / "tensorboard").glob("events.out.tfevents.*"))
    next((tmp_path / "extra").iterdir()).rename(first.with_name(first.name + ".interrupted"))  # read after it
    run_training(config, resumed, resume=True, progress=False)

    def without_timing(rows):
        return [{k: v for k, v in r.items() if k != "topology_seconds"} for r in rows]

    full_rows, resumed_rows = _rows(tmp_path / "full" / "steps.csv"), _rows(resumed / "steps.csv")
    assert len(full_rows) == 3 * STEPS_PER_EPOCH
    assert without_timing(resumed_rows) == without_timing(full_rows)
    assert (resumed / "steps.csv").read_text().count("step,epoch") == 1
    full_tb, resumed_tb = _scalars(tmp_path / "full" / "tensorboard"), _scalars(resumed / "tensorboard")
    assert resumed_tb["loss"] == full_tb["loss"] and resumed_tb["churn"] == full_tb["churn"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--logger", "wandb"], ["'wandb'", "csv", "tensorboard"]),
        (["--logger", "csv,bogus"], ["'bogus'", "csv, tensorboard"]),
        (["--set", "loggers=[csv, foo]"], ["'foo'", "csv, tensorboard"]),
    ],
)
def test_bad_logger_name_is_one_line_error(capsys, tmp_path, argv, expected):
    _recipe(tmp_path)
    code = main(["train", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(fragment in err for fragment in expected), err
    assert not (tmp_path / "run").exists()


def test_missing_tensorboard_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if absent
    _recipe(tmp_path)
    code = main(["train", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run"), "--quiet",
                 "--logger", "csv", "--logger", "tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "pip install 'sparsenets[tensorboard]'" in err
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_csv_header_is_fixed_by_the_first_record(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), CSVLogger(tmp_path) as logger:
        logger.log_step({"step": 1, "loss": 0.5, "churn": None})
        logger.log_step({"step": 2, "loss": 0.25, "extra": 1.0})
    assert (tmp_path / "steps.csv").read_text() == "step,loss,churn\n1,0.5,\n2,0.25,\n"
    assert "extra" in caplog.text


def test_csv_resume_without_a_file_starts_one(tmp_path):
    with make_loggers(["csv"], tmp_path, resume_step=10)[0] as logger:
        logger.log_step({"step": 11, "loss": 1.0})
    assert (tmp_path / "steps.csv").read_text() == "step,loss\n11,1.0\n"


def test_layer_density_is_counted_only_when_the_topology_changes(make_mlp):
    model = make_mlp((8, 16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = sn.DynamicSparsity(model, optimizer, density=0.5, method="set", total_steps=12, update_every=4)
    counted: list[str | None] = []
    nnz = sparsifier.masks.nnz

    def counting_nnz(name=None):
        counted.append(name)
        return nnz(name)

    sparsifier.masks.nnz = counting_nnz
    recorder_counts = 0
    records: list[dict] = []

    class Collect:
        def log_step(self, record):
            records.append(dict(record))

        def flush(self):
            pass

        def close(self):
            pass

    recorder = StepRecorder([Collect()], sparsifier)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for step in range(1, 11):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        sparsifier.step()
        before = len(counted)
        recorder.record(step=step, epoch=1, loss=0.0, lr=0.1)
        recorder_counts += len(counted) - before
    updates = len(sparsifier.history)
    assert updates >= 2
    assert recorder_counts == len(sparsifier.masks) * (1 + updates)  # first step, then once per update
    assert [r["step"] for r in records if r["churn"] is not None] == [h["step"] for h in sparsifier.history]
    assert records[-1]["density"] == pytest.approx(sparsifier.masks.density())
    assert records[-1]["itop_rate"] == pytest.approx(sparsifier.masks.itop_rate())
