"""Non-finite steps, strict JSON and validated recipe values (issue: reliability)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from sparsenets import DynamicSparsity
from sparsenets.cli import main
from sparsenets.finite import finite_or_none, first_nonfinite
from sparsenets.io import json_text

ROOT = Path(__file__).resolve().parent.parent
RIGL = str(ROOT / "recipes" / "fashion_mnist_mlp_rigl.yaml")


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("method", ["set", "rigl", "snfs"])
def test_a_nan_step_never_reaches_inactive_weights_or_their_state(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    s = DynamicSparsity(model, opt, density=0.3, total_steps=4, method=method, update_every=100)
    x = torch.randn(5, 12)
    model(x).sum().backward()
    s.step()
    (model(x).sum() * float("nan")).backward()  # a NaN gradient everywhere
    s.step()
    for name in s.masks:
        weight = dict(model.named_parameters())[name]
        inactive = ~s.masks[name]
        assert bool((weight.detach()[inactive] == 0).all()), name
        buf = opt.state[weight]["momentum_buffer"]
        assert bool((buf[inactive] == 0).all()), name


def test_first_nonfinite_names_what_and_where():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    loss = model(torch.ones(1, 2)).sum()
    assert first_nonfinite(loss, model) is None
    loss.backward()
    model[1].weight.grad[0, 0] = float("inf")
    assert first_nonfinite(loss, model) == "gradient of '1.weight'"
    assert first_nonfinite(torch.tensor(float("nan")), model) == "loss (nan)"
    with torch.no_grad():
        model[0].bias[1] = float("nan")
    assert first_nonfinite(None, model, grads=False) == "weights of '0.bias'"


def test_json_is_strict():
    data = {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": 2}
    assert finite_or_none(data) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2}
    assert _strict(json_text(data)) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2}


def _recipe(tmp_path: Path, **extra) -> Path:
    recipe = {
        "dataset": "digits", "model": "mlp", "hidden": [16], "epochs": 1, "batch_size": 200,
        "optimizer": "sgd", "lr": 0.05, "sparsity": {"method": "set", "density": 0.5, "update_every": 2},
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_diverging_run_stops_naming_the_step(capsys, tmp_path):
    recipe = _recipe(tmp_path, lr=1e30)
    code = main(["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "non-finite" in lines[0] and "at step" in lines[0]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_skipping_nonfinite_steps_is_counted(capsys, tmp_path):
    recipe = _recipe(tmp_path, lr=1e30, nonfinite="skip")
    code = main(["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    capsys.readouterr()
    assert code == 0
    run = tmp_path / "run"
    summary = _strict((run / "summary.json").read_text())
    assert summary["skipped_steps"] >= 1
    for line in (run / "metrics.jsonl").read_text().splitlines():
        _strict(line)


@pytest.mark.parametrize("item, fragment", [
    ("lr=nan", "'lr'"), ("lr=inf", "'lr'"), ("lr=0", "'lr'"), ("weight_decay=-1", "'weight_decay'"),
    ("momentum=-1", "'momentum'"), ("momentum=1", "'momentum'"), ("threads=-1", "'threads'"),
    ("hidden=[-5]", "'hidden.0'"), ("label_smoothing=2", "'label_smoothing'"),
    ("nonfinite=maybe", "'nonfinite'"),
])
def test_recipe_values_are_validated_before_anything_is_written(capsys, tmp_path, item, fragment):
    code = main(["train", RIGL, "--set", item, "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# -- resume refusals and the checkpoint swap --------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    recipe = _recipe(tmp, epochs=2)
    assert main(["train", str(recipe), "--out", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


@pytest.mark.parametrize("item, key", [
    ("sparsity.method=rigl", "sparsity.method"), ("seed=1", "seed"), ("dataset=mnist1d", "dataset"),
    ("sparsity.density=0.05", "sparsity.density"), ("backend=sparse", "backend"), ("lr=0.1", "lr"),
    ("epochs=5", "epochs"),
])
def test_refused_resume_changes_nothing(capsys, finished_run, item, key):
    before = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()}
    code = main(["train", "--resume", str(finished_run), "--set", item, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"--resume cannot change {key!r}" in err and len(err.strip().splitlines()) == 1
    after = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()}
    assert after == before


def test_checkpoint_swap_is_recoverable_at_every_point(tmp_path):
    from sparsenets.io import recover_dir, replace_dir

    target = tmp_path / "checkpoint"

    def fill(version):
        return lambda d: (d / "state.pt").write_text(version)

    replace_dir(target, fill("v1"))
    # a crash while the new version is being written: a stale temporary directory
    stale = tmp_path / ".checkpoint.tmp-abc123"
    stale.mkdir()
    (stale / "state.pt").write_text("half")
    assert not recover_dir(target) and not stale.exists()
    assert (target / "state.pt").read_text() == "v1"
    # a crash between the two renames: only the previous version, moved aside
    target.rename(tmp_path / ".checkpoint.old")
    assert recover_dir(target)
    assert (target / "state.pt").read_text() == "v1"
    # a crash after the swap, before the old copy was deleted
    (tmp_path / ".checkpoint.old").mkdir()
    assert not recover_dir(target) and not (tmp_path / ".checkpoint.old").exists()
    # a failing fill leaves the previous version and nothing else
    with pytest.raises(RuntimeError):
        replace_dir(target, lambda d: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert (target / "state.pt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_resume_after_a_crash_between_renames(capsys, tmp_path):
    recipe = _recipe(tmp_path, epochs=2)
    run = tmp_path / "run"
    from sparsenets.config import load_recipe
    from sparsenets.training import run_training

    config = load_recipe(str(recipe), [])
    run_training(config, run, stop_after_epochs=1, progress=False)
    (run / "checkpoint").rename(run / ".checkpoint.old")  # killed between the two renames
    summary = run_training(config, run, resume=True, progress=False)
    assert summary["epochs"] == 2
    assert not (run / ".checkpoint.old").exists()


# -- no silent acceptance ---------------------------------------------------------------------
def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_a_density_that_keeps_no_weight_is_refused():
    model, opt = _mlp()
    from sparsenets.errors import SparsenetsError

    with pytest.raises(SparsenetsError, match=r"density 1e-09 keeps no weight in layer '0.weight'"):
        DynamicSparsity(model, opt, density=1e-9, total_steps=4, method="set")


def test_custom_densities_fix_or_must_match_density():
    from sparsenets.errors import SparsenetsError

    model, opt = _mlp()
    custom = {"0.weight": 0.5, "2.weight": 0.25}
    s = DynamicSparsity(model, opt, total_steps=4, method="set", distribution=custom)
    assert s.target_counts == {"0.weight": 64, "2.weight": 16} and s.density == pytest.approx(80 / 192)
    with pytest.raises(SparsenetsError, match="density=0.1 contradicts the custom per-layer densities"):
        DynamicSparsity(model, opt, density=0.1, total_steps=4, method="set", distribution=custom)


@pytest.mark.parametrize("method", ["set", "snfs", "gmp", "mest", "ctre", "rigl", "granet", "static"])
def test_step_without_gradients_is_an_error(method):
    from sparsenets.errors import SparsenetsError

    model, opt = _mlp()
    options = {"update_every": 1} if method != "static" else {}
    s = DynamicSparsity(model, opt, density=0.5, total_steps=4, method=method, **options)
    with pytest.raises(SparsenetsError, match="no sparsified weight has a gradient; call loss.backward"):
        s.step()


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"), (b"\x00\xff\xfe\x01", "is not a text file"), (b"- a\n- b\n", "must be a mapping"),
])
def test_bad_recipe_files(capsys, tmp_path, content, fragment):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    code = main(["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("item, fragment", [
    ("activation=foo", "unknown activation 'foo'"), ("name=/tmp/elsewhere", "must be a plain name"),
    ("name=../up", "must be a plain name"),
])
def test_recipe_values_checked_for_every_model(capsys, tmp_path, item, fragment):
    cnn = str(ROOT / "recipes" / "digits_cnn_rigl.yaml")
    code = main(["train", cnn, "--set", item, "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and not (tmp_path / "run").exists()


# -- corrupted files: one line naming the file ----------------------------------------------
@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    from sparsenets.config import load_recipe
    from sparsenets.training import run_training

    tmp = tmp_path_factory.mktemp("half")
    config = load_recipe(str(_recipe(tmp, epochs=2)), [])
    run_training(config, tmp / "run", stop_after_epochs=1, progress=False)
    return tmp / "run"


@pytest.mark.parametrize("name", ["model.safetensors", "masks.safetensors", "state.pt"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_is_refused_naming_the_file(capsys, tmp_path, half_run, name, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(half_run, run)
    path = run / "checkpoint" / name
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(b"\x00not a checkpoint" * 10)
    code = main(["train", "--resume", str(run), "--quiet"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert name in lines[0]


def test_a_malicious_pickle_is_never_loaded(capsys, tmp_path, half_run):
    import os
    import shutil

    run = tmp_path / "run"
    shutil.copytree(half_run, run)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, run / "checkpoint" / "state.pt")
    code = main(["train", "--resume", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "state.pt" in err and len(err.strip().splitlines()) == 1
    assert "weights_only=False" not in err
    assert not marker.exists()


def test_load_sparse_on_a_truncated_file(tmp_path):
    from sparsenets import load_sparse, save_sparse, to_sparse
    from sparsenets.errors import SparsenetsError

    model = nn.Sequential(nn.Linear(6, 4))
    sparse = to_sparse(model, {"0.weight": torch.rand(4, 6) < 0.5})
    path = tmp_path / "model.safetensors"
    save_sparse(sparse, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(SparsenetsError, match="model.safetensors' is not a valid safetensors file"):
        load_sparse(nn.Sequential(nn.Linear(6, 4)), path)


@pytest.mark.parametrize("damage", ["not-gzip", "truncated"])
def test_damaged_fashion_mnist_files(tmp_path, damage):
    import gzip

    from sparsenets.data.fashion_mnist import load_fashion_mnist
    from sparsenets.errors import SparsenetsError

    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for name in names:
        payload = gzip.compress(b"\x00" * 4000)
        (tmp_path / name).write_bytes(b"plain text, not gzip" if damage == "not-gzip" else payload[: len(payload) // 2])
    with pytest.raises(SparsenetsError, match="corrupt Fashion-MNIST file") as info:
        load_fashion_mnist(tmp_path)
    assert "\n" not in str(info.value)


def test_out_that_cannot_be_a_directory(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, fragment in [(afile, "is a file, not a directory"), (afile / "run", "is a file")]:
        code = main(["train", RIGL, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert afile.read_text() == "x"
