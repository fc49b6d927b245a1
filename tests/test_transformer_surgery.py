"""HeadPrune / MLPPrune and transformer surgery on tiny random Llama (grouped and plain KV heads),
GPT-2 (Conv1D and linearized) and BERT-classifier models built from configs (nothing
downloaded): masks, exact shrinking, config rewrite, export/load round trips, FLOPs and latency on
the shrunk model, N:M on the Linear layers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_hf import tiny_bert, tiny_gpt2, tiny_llama, tokens  # noqa: E402

from condensa import Compose, HeadPrune, MLPPrune, NMPrune, Quantize  # noqa: E402
from condensa.errors import ConfigError, LayerSelectionError  # noqa: E402
from condensa.export import load, republish, save  # noqa: E402
from condensa.metrics import count_flops  # noqa: E402
from condensa.operators.prune import is_nm_sparse  # noqa: E402
from condensa.operators.transformer import find_sites, heads_alive, neurons_alive  # noqa: E402
from condensa.outputs import logits_of  # noqa: E402
from condensa.strategies import build_strategy  # noqa: E402
from condensa.surgery import runnable, shrink_transformer  # noqa: E402

torch.set_num_threads(1)


def _gpt2_linear():
    from condensa.models.hf import linearize_conv1d

    model = tiny_gpt2()
    linearize_conv1d(model)
    return model


MODELS = {"llama-gqa": lambda: tiny_llama(kv_heads=2), "llama-mha": lambda: tiny_llama(kv_heads=4),
          "gpt2-conv1d": tiny_gpt2, "gpt2-linear": _gpt2_linear, "bert": tiny_bert}


def out(model, x):
    with torch.no_grad():
        return logits_of(model(x)).float()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("strategy", [HeadPrune(0.5), MLPPrune(0.5), Compose([HeadPrune(0.5), MLPPrune(0.25)])],
                         ids=["heads", "mlp", "both"])
def test_surgery_equals_the_masked_model(name, strategy):
    model = MODELS[name]()
    x = tokens()
    masked, _ = strategy.apply(model)
    assert (out(masked, x) - out(model, x)).abs().max() > 1e-3  # pruning did something
    again, _ = strategy.apply(masked)  # idempotent: the same masks again
    assert torch.equal(out(again, x), out(masked, x))
    shrunk, report = shrink_transformer(masked, x)
    assert report.applied and n_params(shrunk) == report.params_after < report.params_before == n_params(model)
    assert (out(masked, x) - out(shrunk, x)).abs().max() <= 1e-5
    x2 = tokens(4, 20, seed=5)  # another batch size and length than the check input
    assert (out(masked, x2) - out(shrunk, x2)).abs().max() <= 1e-5


def test_head_and_neuron_counts_and_ranking():
    model = tiny_llama(kv_heads=4)
    masked, record = Compose([HeadPrune(0.5), MLPPrune(0.25)]).apply(model)
    for site in find_sites(masked).attention:
        assert int(heads_alive(site).sum()) == 2
    for site in find_sites(masked).mlp:
        assert int(neurons_alive(site).sum()) == 16  # round(0.25 * 64)
    assert record.layers["model.layers.0.self_attn.o_proj.weight"].ops == ["head"]
    assert record.layers["model.layers.0.mlp.down_proj.weight"].ops == ["mlp"]
    # the kept heads are the ones writing most into the residual stream (||W_o[:, h]|| * ||W_v[h]||)
    attn = model.model.layers[0].self_attn
    score = (attn.o_proj.weight.reshape(32, 4, 8).pow(2).sum(dim=(0, 2)).sqrt()
             * attn.v_proj.weight.reshape(4, -1).pow(2).sum(dim=1).sqrt())
    kept = heads_alive(find_sites(masked).attention[0])
    assert set(torch.nonzero(kept).flatten().tolist()) == set(torch.topk(score, 2).indices.tolist())


def test_grouped_kv_heads_stay_balanced_and_the_config_is_rewritten():
    model = tiny_llama(kv_heads=2)  # 4 query heads in 2 KV groups
    masked, _ = HeadPrune(0.5).apply(model)
    for site in find_sites(masked).attention:
        assert heads_alive(site).reshape(2, 2).sum(dim=1).tolist() == [1, 1]  # one head per group, no group lost
    shrunk, report = shrink_transformer(masked, tokens())
    attn = shrunk.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (16, 16, 16)
    assert attn.o_proj.in_features == 16 and attn.num_key_value_groups == 1
    assert report.config == {"num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8}
    assert shrunk.config.num_attention_heads == 2 and model.config.num_attention_heads == 4  # the input is untouched


def test_uniform_widths_pad_with_dead_heads():
    model = tiny_llama(kv_heads=4)
    masked, _ = HeadPrune(0.5, layers=["model.layers.0.*"]).apply(model)
    _, report = shrink_transformer(masked, tokens())
    assert not report.applied  # layer 1 keeps 4 heads, so layer 0 keeps 4 (2 dead) and a plain config still fits
    shrunk, report = shrink_transformer(masked, tokens(), uniform=False)
    assert shrunk.model.layers[0].self_attn.q_proj.out_features == 16
    assert shrunk.model.layers[1].self_attn.q_proj.out_features == 32
    assert not report.config_expressible
    assert (out(masked, tokens()) - out(shrunk, tokens())).abs().max() <= 1e-5


@pytest.mark.parametrize("build, config_key, width", [(tiny_gpt2, "n_inner", 64), (tiny_bert, "intermediate_size", 32)],
                         ids=["gpt2", "bert"])
def test_configs_that_derive_head_dim_cannot_describe_fewer_heads(build, config_key, width):
    model = build()
    shrunk, report = shrink_transformer(MLPPrune(0.5).apply(model)[0], tokens())
    assert report.config_expressible and report.config == {config_key: width}
    assert getattr(shrunk.config, config_key) == width
    _, report = shrink_transformer(HeadPrune(0.5).apply(model)[0], tokens())
    assert report.config_expressible is False and report.config == {}


def test_a_head_count_the_config_refuses_is_not_written_as_hf(tmp_path):
    model = tiny_llama(kv_heads=4)  # hidden 32: transformers refuses 3 heads even with head_dim 8 given
    strategy = HeadPrune(0.75)
    masked, record = strategy.apply(model)
    shrunk, report = shrink_transformer(masked, tokens())
    assert report.config["num_attention_heads"] == 3 and not report.config_expressible
    assert "not a multiple of the number of attention heads" in report.config_error
    manifest = save(masked, tmp_path, strategy=strategy, record=record, example_input=tokens(), onnx=False, hf=True)
    assert "not a multiple" in manifest["files"]["hf"]["error"] and not (tmp_path / "hf").exists()
    loaded, _ = load(tmp_path, model_factory=MODELS["llama-mha"])  # the packed checkpoint still rebuilds it
    assert (out(loaded, tokens()) - out(masked, tokens())).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2-linear", "bert"])
def test_nm_2_4_on_the_linear_layers(tmp_path, name):
    model = MODELS[name]()
    strategy = NMPrune(2, 4, exclude=["lm_head"] if "gpt2" in name else [])  # GPT-2 ties lm_head to wte (refused)
    pruned, record = strategy.apply(model)
    linears = [m for n, m in pruned.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert linears and all(is_nm_sparse(m.weight.detach(), 2, 4) for m in linears)
    assert all(r.density == 0.5 for r in record.layers.values())
    assert (out(pruned, tokens()) - out(model, tokens())).abs().max() > 1e-3
    manifest = save(pruned, tmp_path, strategy=strategy, record=record, example_input=tokens(), onnx=False)
    assert not manifest["surgery"]["applied"]  # unstructured: stored at full size, nothing to shrink
    loaded, _ = load(tmp_path, model_factory=MODELS[name])
    assert torch.equal(out(loaded, tokens()), out(pruned, tokens()))


def test_operators_from_a_config_with_knobs_and_bad_input():
    strategy = build_strategy(None, None, [{"HeadPrune": {"density": {"low": 0.25, "high": 1.0}}},
                                           {"MLPPrune": {"density": {"low": 0.25, "high": 1.0}, "multiple_of": 8}}])
    assert set(strategy.knobs()) == {"head.density", "mlp.density"}
    bound = strategy.bind({"head.density": 0.5, "mlp.density": 0.3})
    masked, _ = bound.apply(tiny_llama())
    assert all(int(neurons_alive(s).sum()) == 16 for s in find_sites(masked).mlp)  # round(0.3 * 64) = 19 -> 16
    with pytest.raises(ConfigError, match=r"HeadPrune.density must be a number in \(0, 1\]"):
        build_strategy(None, None, [{"HeadPrune": {"density": 1.5}}])
    with pytest.raises(ConfigError, match="MLPPrune.multiple_of must be an integer >= 1"):
        build_strategy(None, None, [{"MLPPrune": {"multiple_of": 0}}])
    with pytest.raises(ConfigError, match="HeadPrune.layers must be globs"):
        HeadPrune(0.5, layers=[nn.Linear])
    with pytest.raises(LayerSelectionError, match="no attention/MLP block of a known layout"):
        HeadPrune(0.5).apply(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(LayerSelectionError, match="no block selected"):
        MLPPrune(0.5, layers=["nothing.*"]).apply(tiny_llama())


def test_flops_and_latency_see_the_shrunk_model(monkeypatch):
    import condensa.metrics.flops as flops_module

    def cnn_surgery(*args, **kwargs):  # Torch-Pruning's tracing did not return on this grouped-KV Llama
        raise AssertionError("CNN surgery called on a transformer")

    monkeypatch.setattr(flops_module, "shrink", cnn_surgery)
    model = tiny_llama(kv_heads=2)
    masked, _ = Compose([HeadPrune(0.5), MLPPrune(0.5)]).apply(model)
    x = tokens(1, 12)
    shrunk, _ = shrink_transformer(masked, x)
    flops = count_flops(masked, x)
    assert flops["flops_effective"] == count_flops(shrunk, x)["flops_dense"] < flops["flops_dense"]
    running = runnable(masked)
    assert n_params(running) == n_params(shrunk) and (out(running, x) - out(masked, x)).abs().max() <= 1e-5
    assert n_params(runnable(model)) == n_params(model)  # nothing to remove: a plain copy


@pytest.mark.parametrize("name, hf_folder", [("llama-gqa", True), ("gpt2-conv1d", False), ("gpt2-linear", False),
                                             ("bert", False)])
def test_export_round_trip_rebuilds_the_shrunk_model(tmp_path, name, hf_folder):
    model = MODELS[name]()
    # int8 codes of sliced layers; not lm_head: GPT-2 ties it to the embedding (baking would quantize both)
    quantize = {"gpt2-conv1d": [], "bert": [Quantize("int8", layers=["Linear"])]}.get(
        name, [Quantize("int8", layers=["Linear"], exclude=["lm_head"])])
    strategy = Compose([HeadPrune(0.5), MLPPrune(0.5), *quantize])
    masked, record = strategy.apply(model)
    x = tokens()
    manifest = save(masked, tmp_path, strategy=strategy, record=record, model_factory=MODELS[name], example_input=x,
                    onnx=False, hf=True)
    surgery = manifest["surgery"]
    assert surgery["applied"] and surgery["kind"] == "transformer" and surgery["params_after"] < surgery["params_before"]
    loaded, _ = load(tmp_path, model_factory=MODELS[name])
    assert n_params(loaded) == surgery["params_after"]
    assert (out(loaded, x) - out(masked, x)).abs().max() <= 1e-5
    assert (out(loaded, tokens(2, 20, seed=3)) - out(masked, tokens(2, 20, seed=3))).abs().max() <= 1e-5
    if hf_folder:
        from transformers import AutoModelForCausalLM

        assert manifest["files"]["hf"]["from_pretrained"]
        assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_attention_heads"] == 2
        pretrained = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
        assert (out(pretrained, x) - out(masked, x)).abs().max() <= 1e-5
        assert loaded.config.num_attention_heads == 2 and loaded.config.intermediate_size == 32
    else:
        assert "no Hugging Face config describes" in manifest["files"]["hf"]["error"] and not (tmp_path / "hf").exists()


class Logits(nn.Module):
    """A BERT classifier returning its logits tensor (per-position language-model outputs reach
    the pipeline through the text data of issue 15, part A)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return logits_of(self.inner(x))


def test_pipeline_measures_flops_and_latency_of_the_shrunk_model(monkeypatch):
    from torch.utils.data import TensorDataset

    import condensa.pipeline as pipeline
    from condensa.config import MetricsConfig
    from condensa.data.digits import Splits

    x, y = tokens(24, 12, seed=1), torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(2))
    data = TensorDataset(x, y)
    splits = Splits(data, data, data, 3, (12,))
    seen = []

    def recorder(model, example, **kwargs):
        seen.append(n_params(model))
        return {"latency_ms": 1.0, "latency_batch_size": int(example.shape[0]), "latency_threads": 1, "latency_repeats": 1}

    monkeypatch.setattr(pipeline, "measure_latency", recorder)
    reference = Logits(tiny_bert())
    workspace = pipeline.Workspace(reference, splits, recovery={"epochs": 0}, device="cpu", log=lambda _: None,
                                   metrics=MetricsConfig(latency=True, latency_batch_size=4))
    evaluation = workspace.evaluate(Compose([HeadPrune(0.5), MLPPrune(0.5)]))
    shrunk, _ = shrink_transformer(evaluation.model, x[:2])
    assert seen == [n_params(shrunk)] and n_params(shrunk) < n_params(reference)
    assert evaluation.metrics["flops_effective"] < evaluation.metrics["flops_dense"]


def test_shipped_heads_config_builds_and_applies():
    from condensa.config import load_config
    from condensa.models.registry import build_model
    from condensa.pipeline import check_strategy

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "lm-char-gpt-heads.yaml")
    strategy = build_strategy(config.strategy.scheme, config.strategy.args, config.strategy.ops)
    assert set(strategy.knobs()) == {"head.density", "mlp.density"} and config.search.objective == "flops"
    model = build_model(config.model.name, **config.model.kwargs)
    check_strategy(strategy, model, where="strategy.ops")
    masked, _ = strategy.bind({"head.density": 0.5, "mlp.density": 0.5}).apply(model)
    shrunk, report = shrink_transformer(masked)
    assert report.config == {"num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 256}
    assert report.max_abs_diff <= 1e-5


def test_export_of_a_run_folder_adds_the_hf_folder(tmp_path):
    """`condensa export` (republish of the loaded run checkpoint) writes hf/ from the model
    load rebuilt: its config must carry the rewritten head counts and MLP width."""
    from transformers import AutoModelForCausalLM

    model = tiny_llama(kv_heads=2)
    strategy = Compose([HeadPrune(0.5), MLPPrune(0.5)])
    masked, record = strategy.apply(model)
    x = tokens()
    save(masked, tmp_path / "run", strategy=strategy, record=record, model_factory=tiny_llama, example_input=x, onnx=False)
    assert not (tmp_path / "run" / "hf").exists()  # run folders keep the packed checkpoint only
    loaded, manifest = load(tmp_path / "run", model_factory=tiny_llama)
    out_manifest = republish(tmp_path / "run", tmp_path / "export", loaded, None, manifest)
    assert out_manifest["files"]["hf"]["from_pretrained"]
    pretrained = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export" / "hf"), local_files_only=True)
    assert pretrained.config.num_key_value_heads == 2 and pretrained.config.intermediate_size == 32
    assert (out(pretrained, x) - out(masked, x)).abs().max() <= 1e-5


def test_heads_compress_export_eval_through_the_commands(tmp_path):
    """hf:PATH with HeadPrune + MLPPrune + int8 end to end: compress, export (shrunk packed
    checkpoint, ONNX, hf/), eval of the export giving the same figures."""
    from condensa.models import registry

    if not hasattr(registry, "is_hf_spec"):
        pytest.skip("needs the hf: loader and per-position text data (issue 15, part A)")
    pytest.importorskip("onnxruntime")
    from transformers import AutoModelForCausalLM

    from condensa.commands import compress, evaluate_export, export
    from condensa.config import parse_config

    tiny_llama(vocab_size=97).save_pretrained(str(tmp_path / "tiny"))
    raw = {"model": {"name": f"hf:{tmp_path / 'tiny'}"}, "data": {"name": "text", "seq_len": 16, "limit": 64},
           "strategy": {"ops": [{"HeadPrune": {"density": 0.5}}, {"MLPPrune": {"density": 0.5}},
                                {"Quantize": {"dtype": "int8", "layers": ["Linear"]}}]},
           "recovery": {"epochs": 1, "max_steps": 2, "batch_size": 16, "lr": 0.001},
           "metrics": {"latency": True, "latency_repeats": 2}, "device": "cpu"}
    result = compress(parse_config(raw), out=str(tmp_path / "run"), quiet=True, log=lambda _: None)
    assert result["flops_effective"] < result["flops_dense"]
    manifest = export(tmp_path / "run", out=str(tmp_path / "export"), quiet=True)
    assert manifest["surgery"]["kind"] == "transformer" and manifest["surgery"]["config"]["num_attention_heads"] == 2
    assert "error" not in manifest["files"]["model.onnx"], manifest["files"]["model.onnx"]
    assert manifest["files"]["hf"]["from_pretrained"]
    pretrained = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export" / "hf"), local_files_only=True)
    assert n_params(pretrained) == manifest["surgery"]["params_after"]
    evaluated = evaluate_export(tmp_path / "export", quiet=True)
    for key in ("predictions", "accuracy", "perplexity", "mismatches"):
        assert evaluated[key] == pytest.approx(result[key], rel=1e-6, abs=1e-6), key
    assert evaluated["footprint_bytes"] < result["footprint_bytes"]  # the footprint of the shrunk model


def test_groupwise_int4_survives_head_and_neuron_surgery(tmp_path):
    """Group-wise scales run over live input columns, so removing dead heads' o_proj columns and
    dead neurons' down_proj columns keeps every group: the export is shrunk, not stored unshrunk."""
    model = tiny_llama(kv_heads=2)
    strategy = Compose([HeadPrune(0.5), MLPPrune(0.5), Quantize("int4", group_size=16, layers=["Linear"], exclude=["lm_head"])])
    masked, record = strategy.apply(model)
    x = tokens()
    manifest = save(masked, tmp_path, strategy=strategy, record=record, model_factory=MODELS["llama-gqa"], example_input=x,
                    onnx=False)
    assert manifest["surgery"]["applied"] and manifest["surgery"]["kind"] == "transformer", manifest["surgery"]
    loaded, _ = load(tmp_path, model_factory=MODELS["llama-gqa"])
    assert n_params(loaded) == manifest["surgery"]["params_after"] < n_params(model)
    assert (out(loaded, x) - out(masked, x)).abs().max() <= 1e-5
