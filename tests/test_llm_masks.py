"""Pruned LLMs have masks: PruneResult, sn.report on a pruned tiny Llama, save_pruned → load_pruned_masks."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from test_llm_adapters import tiny_model, tokens  # noqa: E402

import sparsenets  # noqa: E402
from sparsenets.errors import SparsenetsError  # noqa: E402
from sparsenets.io import load_tensors, save_tensors  # noqa: E402
from sparsenets.llm import (  # noqa: E402
    NM,
    PruneResult,
    Unstructured,
    get_adapter,
    load_pruned_masks,
    prune,
    save_pruned,
)
from sparsenets.llm.export import MASK_FILE  # noqa: E402
from sparsenets.masks import MaskStore  # noqa: E402
from sparsenets.select import check_structure, keep_count  # noqa: E402


def _weights(model) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": layer.weight for n, layer in get_adapter(model).prunable_linears(model).items()}


def _assert_masks_match(model, result: PruneResult, structure: str) -> None:
    weights = _weights(model)
    assert isinstance(result.masks, MaskStore) and list(result.masks) == list(weights)
    for name, weight in weights.items():
        mask = result.masks[name]
        assert torch.equal(mask, weight != 0), name  # exactly weight == 0's complement
        if structure == "unstructured":
            check_structure(mask, Unstructured(), k=keep_count(weight.shape[1], 0.5), group="row", name=name)
        else:
            check_structure(mask, NM(*(int(x) for x in structure.split(":"))), name=name)
        assert result.masks.itop_rate(name) == result.masks.density(name)  # ever-active = the mask


@pytest.mark.parametrize("method", ("magnitude", "wanda", "sparsegpt"))
@pytest.mark.parametrize("structure", ("unstructured", "2:4", "4:8"))
def test_prune_returns_masks_equal_to_nonzero_weights_with_the_structure(method, structure):
    model = tiny_model("llama")
    result = prune(model, tokens(4, 8), method=method, structure=structure, batch_size=2, progress=False)
    _assert_masks_match(model, result, structure)
    assert str(result.structure) == structure
    assert set(result.targets) == {"model.layers.0", "model.layers.1"} and set(result.targets.values()) == {0.5}


def test_prune_result_reads_as_the_sparsity_mapping():
    model = tiny_model("opt")
    result = prune(model, tokens(4, 8), method="wanda", sparsity=0.25, progress=False)
    linears = get_adapter(model).prunable_linears(model)
    assert isinstance(result, PruneResult) and isinstance(result.sparsity, dict)
    assert len(result) == len(linears) and list(result) == list(result.sparsity) == list(linears)
    assert dict(result) == result.sparsity and result == result.sparsity
    assert all(result[n] == pytest.approx(0.25) for n in linears) and list(result.values()) == list(result.sparsity.values())
    with pytest.raises(TypeError):
        result["x"] = 1.0  # read-only
    assert set(result.masks) == {f"{n}.weight" for n in linears}
    assert result.masks.nnz() == sum(int((layer.weight != 0).sum()) for layer in linears.values())


def test_owl_result_masks_and_targets():
    model = tiny_model("llama")
    result = prune(model, tokens(4, 8), method="wanda", sparsity=0.6, allocation="owl", owl_m=2.0, owl_lambda=0.1,
                   batch_size=2, progress=False)
    assert len(set(result.targets.values())) == 2
    assert sum(result.targets.values()) / 2 == pytest.approx(0.6)
    for name, weight in _weights(model).items():
        mask = result.masks[name]
        assert torch.equal(mask, weight != 0)
        block = name.rsplit(".", 3)[0]  # model.layers.<i>
        check_structure(mask, Unstructured(), k=keep_count(weight.shape[1], result.targets[block]), name=name)


def test_report_lists_every_pruned_layer_of_a_tiny_llama():
    model = tiny_model("llama")
    result = prune(model, tokens(4, 8), method="wanda", structure="2:4", progress=False)
    report = sparsenets.report(model, masks=result.masks)
    rows = {layer.name: layer for layer in report.layers}
    assert set(rows) == set(result.masks)
    for name, weight in _weights(model).items():
        assert rows[name].density == 0.5 and rows[name].nnz == int((weight != 0).sum())
        assert rows[name].shape == tuple(weight.shape)
    assert report.totals["density"] == 0.5
    assert all(name in str(report) for name in rows)


def _pruned_directory(tmp_path, structure="2:4", *, with_masks=True):
    model = tiny_model("llama")
    result = prune(model, tokens(4, 8), method="sparsegpt", structure=structure, batch_size=2, progress=False)
    out = save_pruned(model, tmp_path / "pruned", {"method": "sparsegpt"}, masks=result.masks if with_masks else None,
                      structure=result.structure)
    return model, result, out


@pytest.mark.parametrize("structure", ("unstructured", "2:4"))
def test_save_pruned_writes_masks_and_structure_that_load_back(tmp_path, structure):
    model, result, out = _pruned_directory(tmp_path, structure)
    info = json.loads((out / "sparsity.json").read_text())
    assert info["structure"] == structure and info["mask_file"] == MASK_FILE
    saved = load_tensors(out / MASK_FILE)
    assert set(saved) == {f"mask/{n}" for n in result.masks}  # ever-active equals the masks: not stored
    assert all(t.dtype == torch.bool for t in saved.values())
    loaded = load_pruned_masks(out)
    assert list(loaded) == list(result.masks)
    for name in result.masks:
        assert torch.equal(loaded[name], result.masks[name])
        assert torch.equal(loaded.ever_active(name), result.masks[name])
    import transformers

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)  # plain transformers still loads it
    assert all(torch.equal(loaded[n], w != 0) for n, w in _weights(reloaded).items())


def test_saved_ever_active_record_round_trips(tmp_path):
    model = tiny_model("llama")
    result = prune(model, None, method="magnitude", progress=False)
    store = MaskStore(result.masks.shapes)  # ever-active: all ones until reset
    for name in result.masks:
        store.set(name, result.masks[name])
    out = save_pruned(model, tmp_path / "m", {}, masks=store, structure="unstructured")
    loaded = load_pruned_masks(out)
    assert all(bool(loaded.ever_active(n).all()) and torch.equal(loaded[n], store[n]) for n in store)


def test_load_pruned_masks_falls_back_to_nonzero_weights(tmp_path):
    model, result, out = _pruned_directory(tmp_path, "2:4", with_masks=False)
    assert not (out / MASK_FILE).exists()
    loaded = load_pruned_masks(out)
    assert list(loaded) == list(result.masks)
    assert all(torch.equal(loaded[n], w != 0) for n, w in _weights(model).items())


def test_load_pruned_masks_rejects_a_broken_structure(tmp_path):
    model, result, out = _pruned_directory(tmp_path, "2:4")
    name = "model.layers.1.mlp.down_proj.weight"
    state = load_tensors(out / MASK_FILE)
    mask = state[f"mask/{name}"].clone()
    mask[0, (~mask[0, :4]).nonzero()[0]] = True  # the first group keeps 3 of 4 (the weight there is 0)
    state[f"mask/{name}"] = mask
    save_tensors(out / MASK_FILE, state)
    with pytest.raises(SparsenetsError, match=rf"^{name}: 1 of .* groups of 4 break structure 2:4: group 0 keeps 3, expected exactly 2$"):
        load_pruned_masks(out)
    (out / MASK_FILE).unlink()  # fallback: weight != 0 may keep fewer than N (a kept 0), never more
    weights = load_tensors(out / "model.safetensors")
    weights[name][0, :4] = 1.0  # 4 nonzeros in a group of 4
    save_tensors(out / "model.safetensors", weights)
    with pytest.raises(SparsenetsError, match=rf"^{name}: 1 of .* groups of 4 break structure 2:4: group 0 keeps 4, expected at most 2$"):
        load_pruned_masks(out)


def test_load_pruned_masks_checks_per_row_counts_and_masks_against_weights(tmp_path):
    model, result, out = _pruned_directory(tmp_path, "unstructured")
    name = "model.layers.0.self_attn.q_proj.weight"
    weights = load_tensors(out / "model.safetensors")
    row = weights[name][2]
    row[row == 0] = 0.5  # a pruned weight came back: nonzero outside the mask
    save_tensors(out / "model.safetensors", weights)
    with pytest.raises(SparsenetsError, match=rf"^{name} has 16 nonzero saved weights where its mask is False"):
        load_pruned_masks(out)
    (out / MASK_FILE).unlink()
    with pytest.raises(SparsenetsError, match=rf"^{name}: 1 of 32 rows break structure unstructured: row 2 keeps 32, expected at most 16$"):
        load_pruned_masks(out)


def test_mask_and_directory_errors_are_one_line(tmp_path):
    model = tiny_model("llama")
    result = prune(model, None, method="magnitude", progress=False)
    head = MaskStore({"lm_head.weight": tuple(model.lm_head.weight.shape)})
    with pytest.raises(SparsenetsError, match=r"masks must name prunable layers .*unexpected: \['lm_head.weight'\]"):
        save_pruned(model, tmp_path / "a", {}, masks=head)
    with pytest.raises(SparsenetsError, match="nonzero weights where its mask is False; apply the masks first"):
        save_pruned(tiny_model("llama"), tmp_path / "b", {}, masks=result.masks)  # an unpruned model
    with pytest.raises(SparsenetsError, match="unknown structure '3:2'"):
        save_pruned(model, tmp_path / "c", {}, structure="3:2")
    with pytest.raises(SparsenetsError, match="no sparsity.json with the pruned layers"):
        load_pruned_masks(tmp_path)
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))


def test_a_kept_weight_that_is_zero_stays_in_the_mask(tmp_path):
    """A 2:4 group with three zero weights must keep one zero: the mask keeps it, weight != 0 does not."""
    model = tiny_model("llama")
    name = "model.layers.0.mlp.up_proj.weight"
    weight = dict(model.named_parameters())[name]
    with torch.no_grad():
        weight[5, 8:11] = 0.0  # group 2 of row 5: three zeros and one nonzero
    result = prune(model, None, method="magnitude", structure="2:4", progress=False)
    mask = result.masks[name]
    assert mask[5, 8:12].tolist() == [True, False, False, True]  # ties kept by position
    assert int((mask & (weight == 0)).sum()) == 1 and not bool((weight[~mask] != 0).any())
    check_structure(mask, NM(2, 4), name=name)
    assert result[name.removesuffix(".weight")] == pytest.approx(0.5 + 1 / weight.numel())  # measured zeros
    with_file = save_pruned(model, tmp_path / "with", {}, masks=result.masks, structure=result.structure)
    assert torch.equal(load_pruned_masks(with_file)[name], mask)
    without = save_pruned(model, tmp_path / "without", {}, structure=result.structure)
    assert torch.equal(load_pruned_masks(without)[name], weight != 0)  # 1 of 4 kept there: at most 2 passes


def test_report_of_a_pruned_llm_counts_flops_and_bytes_from_the_masks():
    model = tiny_model("llama")
    result = prune(model, tokens(4, 8), method="wanda", sparsity=0.5, progress=False)
    report = sparsenets.report(model, masks=result.masks, example_input=tokens(1, 8))
    weights = _weights(model)
    for layer in report.layers:
        numel = weights[layer.name].numel()
        # one sample of 8 tokens: 8 positions per Linear, 2 FLOPs per multiply-accumulate
        assert layer.flops_dense == 2 * numel * 8 and layer.flops_sparse == 2 * layer.nnz * 8
        # float32 values + int32 column indices per kept weight + int32 row pointers; no bias.
        # At 50% CSR is no smaller than dense: the report says so rather than hiding it.
        rows = layer.shape[0]
        assert layer.bytes_dense == 4 * numel and layer.bytes_sparse == 8 * layer.nnz + 4 * (rows + 1)
        assert layer.backend == "masked"
    # lm_head (tied, never pruned) counts dense in the FLOPs total but is no row
    assert "lm_head.weight" not in {layer.name for layer in report.layers}
    assert report.totals["flops_dense"] > sum(layer.flops_dense for layer in report.layers)
