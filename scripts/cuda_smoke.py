"""CUDA smoke check: every capability runs unchanged on a GPU and agrees with the CPU.

Not part of the test suite (CI has no GPU). Run on a machine with CUDA:

    PYTHONPATH=src python scripts/cuda_smoke.py            # compares cuda with cpu
    PYTHONPATH=src python scripts/cuda_smoke.py --device cpu   # the script itself, on CPU only

Each check prints one line ``ok``/``FAIL`` with what it compared; the exit status is the number of
failed checks.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import torch

import sparsenets as sn

CHECKS = []
DEVICE = "cuda"


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def sparse_linear_matches_masked_dense():
    from sparsenets.sparse import SparseLinear

    torch.manual_seed(0)
    dense = torch.nn.Linear(96, 64).to(DEVICE)
    mask = torch.rand(64, 96, device=DEVICE) < 0.1
    layer = SparseLinear.from_dense(dense, mask)
    x = torch.randn(32, 96, device=DEVICE, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    ref_w = (dense.weight * mask).detach().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y2 = torch.nn.functional.linear(x2, ref_w, dense.bias)
    y2.square().sum().backward()
    assert y.device.type == DEVICE.split(":")[0]
    torch.testing.assert_close(y, y2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.values.grad, ref_w.grad[mask], rtol=1e-4, atol=1e-4)
    return "SparseLinear forward, grad-input, grad-values equal masked dense on " + DEVICE


def _train(backend: str, method: str, device: str, steps: int = 30):
    from sparsenets.models import MLP

    torch.manual_seed(0)
    model = MLP(64, hidden=(128, 64), num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = sn.DynamicSparsity(model, opt, density=0.1, method=method, total_steps=steps, update_every=5,
                                    backend=backend, seed=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(steps, 32, 64, generator=g), torch.randint(0, 10, (steps, 32), generator=g)
    nnz = []
    for i in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i].to(device)), y[i].to(device)).backward()
        sparsifier.step()
        nnz.append({name: int(m.sum()) for name, m in sparsifier.masks.items()})
    return model, sparsifier, nnz


@check
def dynamic_sparsity_on_cuda():
    lines = []
    for backend in ("masked", "sparse"):
        for method in ("set", "rigl"):
            _, cpu_sp, cpu_nnz = _train(backend, method, "cpu")
            model, sp, nnz = _train(backend, method, DEVICE)
            assert nnz == cpu_nnz, f"{backend}/{method}: nnz differ between CPU and CUDA"
            assert all(p.device.type == DEVICE.split(":")[0] for p in model.parameters())
            same = sum(int(torch.equal(sp.masks[n].cpu(), cpu_sp.masks[n].cpu())) for n in sp.masks)
            lines.append(f"{backend}/{method}: exact nnz every step, {same}/{len(sp.masks)} final masks equal to CPU")
    return "; ".join(lines)


@check
def cli_train_on_cuda():
    import tempfile
    from pathlib import Path

    from sparsenets.cli import main

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("masked", "sparse"):
            code = main(["train", str(root / "recipes" / "digits_cnn_rigl.yaml") if backend == "masked"
                         else str(root / "recipes" / "fashion_mnist_mlp_set.yaml"),
                         "--set", "epochs=1", "--set", f"backend={backend}", "--set", "dataset=digits",
                         "--device", DEVICE, "--out", f"{tmp}/{backend}", "--quiet"])
            assert code == 0, f"train exited {code}"
    return f"sparsenets train --device {DEVICE} (digits, masked CNN and sparse-backend MLP) ran"


@check
def llm_prune_on_cuda():
    import transformers

    from sparsenets.llm import perplexity, prune

    def tiny():
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()

    ids = torch.randint(0, 96, (8, 32), generator=torch.Generator().manual_seed(0))
    lines = []
    for method, structure, allocation in (("wanda", "unstructured", "uniform"), ("sparsegpt", "2:4", "uniform"),
                                          ("sparsegpt", "unstructured", "owl"), ("magnitude", "4:8", "uniform")):
        cpu, gpu = tiny(), tiny().to(DEVICE)
        kwargs = dict(method=method, sparsity=None if structure != "unstructured" else 0.5, structure=structure,
                      allocation=allocation, progress=False, batch_size=4)
        r_cpu, r_gpu = prune(cpu, ids, **kwargs), prune(gpu, ids, **kwargs)
        assert r_cpu.keys() == r_gpu.keys()
        assert all(abs(r_cpu[k] - r_gpu[k]) < 1e-9 for k in r_cpu), "per-layer sparsity differs"
        agree = sum(
            float(((a.weight == 0) == (b.weight.cpu() == 0)).float().mean())
            for (_, a), (_, b) in zip(sorted(cpu.named_modules(), key=lambda t: t[0]),
                                      sorted(gpu.named_modules(), key=lambda t: t[0]), strict=True)
            if isinstance(a, torch.nn.Linear) and "layers" in _
        ) / len(r_cpu)
        ppl_cpu, ppl_gpu = perplexity(cpu, ids, progress=False), perplexity(gpu, ids, progress=False)
        assert abs(ppl_cpu - ppl_gpu) / ppl_cpu < 0.02, (ppl_cpu, ppl_gpu)
        lines.append(f"{method}/{structure}/{allocation}: masks {100 * agree:.2f}% equal to CPU, "
                     f"ppl {ppl_gpu:.2f} vs {ppl_cpu:.2f}")
    return "; ".join(lines)


def main() -> int:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="device compared with the CPU (default cuda)")
    DEVICE = parser.parse_args().device
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available")
        return 1
    name = torch.cuda.get_device_name() if DEVICE.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, {name}, sparsenets {sn.__version__}")
    failed = 0
    for fn in CHECKS:
        try:
            print(f"ok    {fn.__name__}: {fn()}")
        except Exception as error:  # report every check, then fail
            failed += 1
            print(f"FAIL  {fn.__name__}: {error!r}")
            traceback.print_exc()
    return failed


if __name__ == "__main__":
    sys.exit(main())
