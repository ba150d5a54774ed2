"""Data-parallel training on torch.distributed (gloo, 2 CPU processes): identical masks on every
rank after every update, and the same result as one process that sees the whole global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sparsenets import DynamicSparsity, SparsenetsError
from sparsenets.distributed import World, check_masks_agree, gather_rows, mask_checksums, shard

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

METHODS = ("rigl", "set", "ctre", "granet")
STEPS, BATCH, WORLD = 12, 16, 2
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def global_batches(n_in=10, n_out=4):
    gen = torch.Generator().manual_seed(123)
    return [(torch.randn(BATCH + 1, n_in, generator=gen), torch.randint(0, n_out, (BATCH + 1,), generator=gen))
            for _ in range(STEPS)]  # odd size: the shards differ by one row


def train(method: str, world: World, model_seed: int):
    """Train a tiny MLP; returns (final weights, final masks, masks after every update)."""
    torch.manual_seed(model_seed)
    model = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    options = {"update_every": 3, "end_fraction": 1.0}
    if method == "granet":
        options["initial_density"] = 0.6
    s = DynamicSparsity(model, optimizer, density=0.4, total_steps=STEPS, method=method, seed=7, **options)
    train_model = model
    if world.active:  # after the sparsifier, as the docs say
        train_model = nn.parallel.DistributedDataParallel(model)
    history = []
    for x, y in global_batches():
        part = shard(len(y), world)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(train_model(x[part]), y[part], reduction="sum") * (world.size / len(y))
        loss.backward()
        updates = len(s.history)
        s.step()
        if len(s.history) > updates:
            history.append({n: s.masks[n].clone() for n in s.masks})
            check_masks_agree(s.masks, s.step_count, world)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights, {n: s.masks[n].clone() for n in s.masks}, history


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        world = World(rank, WORLD, rank)
        results = {}
        for method in METHODS:
            # every rank starts from a different random model: DDP's broadcast and the
            # sparsifier's seeded choices must make them one
            results[method] = train(method, world, model_seed=1000 + rank)
        from sparsenets.masks import MaskStore

        store = MaskStore({"a": (3, 3), "b": (2, 4)})
        mask = torch.ones(2, 4, dtype=torch.bool)
        mask[rank, 0] = False  # the ranks disagree on layer b
        store.set("b", mask)
        try:
            check_masks_agree(store, 5, world)
            results["disagreement"] = ""
        except SparsenetsError as error:
            results["disagreement"] = str(error)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_rank_main, args=(free_port(), str(out)), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_have_identical_masks_after_every_update(method, two_ranks):
    rank0, rank1 = two_ranks[0][method], two_ranks[1][method]
    assert len(rank0[2]) >= 3  # several updates happened
    for masks0, masks1 in zip(rank0[2], rank1[2], strict=True):
        for name in masks0:
            assert torch.equal(masks0[name], masks1[name]), name
    for name, weight in rank0[0].items():
        assert torch.equal(weight, rank1[0][name]), name


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_equal_one_process_with_the_global_batch(method, two_ranks):
    weights, masks, history = train(method, World(), model_seed=1000)  # rank 0's model
    ddp_weights, ddp_masks, ddp_history = two_ranks[0][method]
    assert len(history) == len(ddp_history)
    for name in masks:
        assert torch.equal(masks[name], ddp_masks[name]), name
    for name, weight in weights.items():
        torch.testing.assert_close(ddp_weights[name], weight, atol=1e-5, rtol=1e-4)


def test_a_mask_difference_between_ranks_is_named(two_ranks):
    for rank in range(WORLD):
        message = two_ranks[rank]["disagreement"]
        assert "masks differ between ranks after the topology update at step 5: layer 'b'" in message


def test_single_process_helpers_are_the_identity():
    x = torch.arange(6.0).reshape(3, 2)
    assert gather_rows(x, World()) is x
    assert shard(10, World()) == slice(0, 10)
    assert [shard(5, World(r, 2)) for r in range(2)] == [slice(0, 2), slice(2, 5)]
    check_masks_agree({}, 1, World())  # nothing to compare


def test_mask_checksums_tell_masks_apart():
    from sparsenets.masks import MaskStore

    a, b = MaskStore({"w": (4, 5)}), MaskStore({"w": (4, 5)})
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[0, 1] = mask[2, 3] = True
    a.set("w", mask)
    moved = mask.clone()
    moved[2, 3], moved[2, 4] = False, True
    b.set("w", moved)
    assert not torch.equal(mask_checksums(a), mask_checksums(b))
    b.set("w", mask)
    assert torch.equal(mask_checksums(a), mask_checksums(b))


def test_sparse_backend_with_updates_is_refused_under_ddp(monkeypatch):
    import sparsenets.dst.sparsifier as sparsifier_module

    monkeypatch.setattr(sparsifier_module, "current_world", lambda: World(0, 2))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(SparsenetsError, match="cannot run under torch.distributed"):
        DynamicSparsity(model, optimizer, density=0.5, total_steps=10, method="set", backend="sparse")
    s = DynamicSparsity(model, optimizer, density=0.5, total_steps=10, method="set", backend="auto")
    assert set(s.backends.values()) == {"masked"}


# -- the command line ---------------------------------------------------------------------------
RECIPE = """
name: ddp_mlp
dataset: digits
model: mlp
hidden: [32]
epochs: 2
batch_size: 50
lr: 0.1
seed: 0
device: cpu
threads: 1
sparsity:
  method: {method}
  density: 0.3
  update_every: 5
"""


def sparsenets(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "sparsenets.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp_cli")
    recipe = base / "recipe.yaml"
    recipe.write_text(RECIPE.format(method="rigl"))
    one = sparsenets("train", str(recipe), "--out", str(base / "one"), "--quiet")
    two = sparsenets("train", str(recipe), "--nproc", "2", "--out", str(base / "two"))  # checks by default
    return base, one, two


def test_cli_nproc_2_equals_one_process_and_reports_the_mask_check(cli_runs):
    from sparsenets.io import load_tensors

    base, one, two = cli_runs
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "masks identical on 2 ranks" in two.stdout
    assert "Traceback" not in two.stderr and "torchrun" not in two.stderr.lower()
    summary = json.loads((base / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["mask_check"]["updates_checked"] > 0
    for part in ("model", "masks"):
        a = load_tensors(base / "one" / "checkpoint" / f"{part}.safetensors")
        b = load_tensors(base / "two" / "checkpoint" / f"{part}.safetensors")
        for key in a:
            if part == "masks":
                assert torch.equal(a[key], b[key]), key
            else:
                torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


def test_cli_resume_with_another_number_of_processes_is_refused(cli_runs):
    base, _, _ = cli_runs
    result = sparsenets("train", "--resume", str(base / "two"), "--set", "epochs=3")
    assert result.returncode != 0
    assert "epochs" in result.stderr or "number of processes" in result.stderr
    result = sparsenets("train", "--resume", str(base / "two"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot change the number of processes (2 -> 1)" in lines[0]


def test_cli_rank_errors_are_one_line_each(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(method="set") + "backend: sparse\n")
    result = sparsenets("train", str(recipe), "--nproc", "2", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("sparsenets: error:")]
    assert len(errors) == 1 and "cannot run under torch.distributed" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.parametrize("args, message", [
    (["--nproc", "0"], "must be a positive integer"),
    (["--max-restarts", "2"], "--max-restarts needs --nproc"),
])
def test_cli_bad_process_options(args, message, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(method="set"))
    result = sparsenets("train", str(recipe), "--out", str(tmp_path / "run"), *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _rank_pids(marker: str) -> dict[int, int]:
    """``{rank: pid}`` of the running ranks whose command line holds ``marker``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in b" ".join(cmdline) and b"sparsenets.cli" in b" ".join(cmdline):
            for item in environ:
                if item.startswith(b"RANK=") and b"torch.distributed.run" not in b" ".join(cmdline):
                    found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_killing_a_rank_restarts_all_from_the_checkpoint_and_finishes_like_an_uninterrupted_run(tmp_path):
    import signal
    import time

    from sparsenets.io import load_tensors

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(method="set").replace("epochs: 2", "epochs: 12"))
    whole = sparsenets("train", str(recipe), "--nproc", "2", "--out", str(tmp_path / "whole"), "--quiet")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sparsenets.cli", "train", str(recipe), "--nproc", "2",
                             "--max-restarts", "1", "--out", str(out), "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            pids = _rank_pids(str(out))
            if 1 in pids:
                os.kill(pids[1], signal.SIGKILL)
                killed = True
                break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=240)
    assert killed, "the run finished before a rank could be killed"
    assert proc.returncode == 0, stderr
    assert "restart 1 of the ranks: resuming from the last checkpoint" in stderr
    a, b = json.loads((tmp_path / "whole" / "summary.json").read_text()), json.loads((out / "summary.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"] and a["epochs"] == b["epochs"] == 12
    for part in ("model", "masks"):
        x = load_tensors(tmp_path / "whole" / "checkpoint" / f"{part}.safetensors")
        y = load_tensors(out / "checkpoint" / f"{part}.safetensors")
        assert all(torch.equal(x[k], y[k]) for k in x), part
