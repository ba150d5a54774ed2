"""The sparse backend in ``run_training`` and ``sparsenets train``: accuracy band, resume,
saved model, and the stored-bytes report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import sparsenets.dst.auto as backend_module
from sparsenets.cli import main
from sparsenets.config import build_config
from sparsenets.data import load_dataset
from sparsenets.io import load_tensors
from sparsenets.metrics import stored_bytes
from sparsenets.models import build_model
from sparsenets.report import report
from sparsenets.sparse import SparseLinear, load_sparse
from sparsenets.training import run_training

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

ROOT = Path(__file__).resolve().parent.parent
SET_RECIPE = str(ROOT / "recipes" / "fashion_mnist_mlp_set.yaml")


def digits(method="set", backend="masked", epochs=3):
    return build_config({
        "name": f"digits_{method}_{backend}", "dataset": "digits", "model": "mlp",
        "hidden": [64, 32], "epochs": epochs, "batch_size": 64, "optimizer": "adam", "lr": 0.01,
        "weight_decay": 0.0, "device": "cpu", "seed": 3, "backend": backend,
        "sparsity": {"method": method, "density": 0.2, "update_every": 10},
    })


def test_set_on_digits_sparse_reaches_the_masked_band(tmp_path):
    masked = run_training(digits("set", "masked"), tmp_path / "masked", progress=False)
    sparse = run_training(digits("set", "sparse"), tmp_path / "sparse", progress=False)
    assert masked["test_accuracy"] > 0.6 and sparse["test_accuracy"] > 0.6
    assert abs(sparse["test_accuracy"] - masked["test_accuracy"]) < 0.05
    assert sparse["backends"] == dict.fromkeys(["fc1.weight", "fc2.weight", "head.weight"], "sparse")
    assert sparse["density"] == pytest.approx(0.2, abs=1e-3)
    assert sparse["topology_updates"] == masked["topology_updates"] > 0
    layers = sparse["report"]["layers"]
    assert [layer["backend"] for layer in layers] == ["sparse"] * 3
    totals = sparse["report"]["totals"]
    assert totals["bytes_sparse"] < totals["bytes_dense"]
    assert totals["bytes_dense"] == masked["report"]["totals"]["bytes_dense"]
    # the saved model loads back (CSR parts + metadata) and predicts as the run measured
    data = load_dataset("digits")
    skeleton = build_model("mlp", data.input_shape, data.num_classes, hidden=(64, 32))
    model = load_sparse(skeleton, tmp_path / "sparse" / "checkpoint" / "model.safetensors")
    assert isinstance(model.fc1, SparseLinear) and model.fc1.nnz == layers[0]["nnz"]
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert accuracy == pytest.approx(sparse["test_accuracy"], abs=1e-6)


def test_auto_resume_keeps_the_checkpoint_layout(tmp_path, monkeypatch):
    def prefer_sparse_fc2(module, x, **_):
        return 1.0 if isinstance(module, SparseLinear) == (module.out_features == 32) else 2.0

    monkeypatch.setattr(backend_module, "time_forward_backward", prefer_sparse_fc2)
    config = digits("rigl", "auto", epochs=3)
    full = run_training(config, tmp_path / "full", progress=False)
    expected = {"fc1.weight": "masked", "fc2.weight": "sparse", "head.weight": "masked"}
    assert full["backends"] == expected
    run_training(config, tmp_path / "resumed", progress=False, stop_after_epochs=1)
    # a new measurement would pick another layout: the resumed run must keep the saved one
    monkeypatch.setattr(backend_module, "time_forward_backward", lambda module, x, **_: 1.0)
    resumed = run_training(config, tmp_path / "resumed", resume=True, progress=False)
    assert resumed["backends"] == expected
    a = load_tensors(tmp_path / "full" / "checkpoint" / "model.safetensors")
    b = load_tensors(tmp_path / "resumed" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and "fc2.values" in a and "fc1.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["test_accuracy"] == full["test_accuracy"]


def test_cli_train_with_backend_sparse_and_report(tmp_path, capsys):
    run = tmp_path / "run"
    code = main([
        "train", SET_RECIPE, "--set", "backend=sparse", "--set", "dataset=digits",
        "--set", "hidden=[32]", "--set", "epochs=1", "--set", "device=cpu",
        "--set", "sparsity.update_every=5", "--out", str(run), "--quiet",
    ])
    assert code == 0
    assert json.loads((run / "summary.json").read_text())["backend"] == "sparse"
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "bytes CSR" in out and "stored bytes of the masked weights" in out
    assert re.search(r"^fc1\.weight +sparse ", out, re.MULTILINE)
    code = main(["train", SET_RECIPE, "--set", "backend=csr", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "unknown backend 'csr' (valid: masked, sparse, auto)" in err


def test_stored_bytes_hand_computed():
    # 4x10 float32 weight, 7 nonzeros, int32 indices, bias of 4
    assert stored_bytes((4, 10), 7, torch.float32, bias=4) == {
        "dense": 4 * 10 * 4 + 16,
        "sparse": 7 * 4 + 7 * 4 + 5 * 4 + 16,
    }
    # float64 values, int64 indices, no bias; a conv weight is stored as (out, in*k*k)
    assert stored_bytes((2, 3, 3, 3), 5, torch.float64, torch.int64) == {
        "dense": 54 * 8,
        "sparse": 5 * 8 + 5 * 8 + 3 * 8,
    }


def test_report_of_a_sparse_model_uses_real_dtypes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(10, 4, dtype=torch.float64)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[0, :3] = mask[2, 5] = True
    model = torch.nn.Sequential(SparseLinear.from_dense(linear, mask))
    (layer,) = report(model).layers
    assert (layer.name, layer.backend, layer.nnz, layer.numel) == ("0.weight", "sparse", 4, 40)
    index_size = model[0].col_indices.element_size()
    assert layer.bytes_dense == (40 + 4) * 8
    assert layer.bytes_sparse == 4 * 8 + 4 * index_size + 5 * index_size + 4 * 8
    assert layer.flops_sparse == 8
