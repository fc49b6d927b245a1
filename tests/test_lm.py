"""Language models: per-position text data and metrics, model outputs that are ``ModelOutput``
objects, per-token recovery, and ``model.name: hf:PATH`` for tiny random Llama, GPT-2 and
BERT-classifier folders written by ``save_pretrained`` (nothing downloaded)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_hf import VOCAB, tiny_bert, tiny_gpt2, tiny_llama, tokens  # noqa: E402

from condensa import Compose, Prune, Quantize  # noqa: E402
from condensa.data.digits import IndexedTensorDataset  # noqa: E402
from condensa.errors import LayerSelectionError, ModelError  # noqa: E402
from condensa.metrics import count_flops, measure_latency, mismatches, predict  # noqa: E402
from condensa.models.registry import build_model  # noqa: E402
from condensa.outputs import flatten_positions, logits_of  # noqa: E402

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}


def out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(model(x)).float()


# -- per-position data and metrics ------------------------------------------------------------


class ToyLM(nn.Module):
    """Fixed per-position logits for window ``x[:, 0]``, returned as a Hugging Face ModelOutput."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor):
        from transformers.modeling_outputs import CausalLMOutput

        return CausalLMOutput(logits=self.table[x[:, 0]])


def test_per_token_metrics_by_hand():
    from condensa.pipeline import _likelihood

    # 2 windows x 3 positions, 3 classes; labels and both models' answers written out per position
    labels = torch.tensor([[0, 1, 2], [2, 2, 1]])
    ref = torch.tensor([[[2.0, 0, 0], [0, 2, 0], [0, 0, 2]],     # 0 1 2: right, right, right
                        [[2.0, 0, 0], [0, 0, 2], [0, 2, 0]]])    # 0 2 1: wrong, right, right
    cmp = torch.tensor([[[2.0, 0, 0], [1, 0, 0], [0, 0, 2]],     # 0 0 2: same, flip (ref right), same
                        [[0.0, 0, 2], [0, 0, 2], [0, 0, 3]]])    # 2 2 2: flip (ref wrong, now right), same, flip (ref right)
    data = IndexedTensorDataset(torch.tensor([[0, 0, 0], [1, 1, 1]]), labels, torch.tensor([10, 11]))
    r, c = predict(ToyLM(ref), data, batch_size=1), predict(ToyLM(cmp), data, batch_size=1)
    assert r.logits.shape == (6, 3) and r.labels.tolist() == [0, 1, 2, 2, 2, 1]
    assert r.indices.tolist() == [30, 31, 32, 33, 34, 35]  # window id * positions + position
    assert r.accuracy == pytest.approx(100 * 5 / 6) and c.accuracy == pytest.approx(100 * 4 / 6)
    m = mismatches(r, c, 3)
    assert m["mismatches"] == 3 and m["mismatch_rate"] == pytest.approx(50.0)
    assert m["mismatches_ref_correct"] == 2 and m["mismatches_ref_wrong"] == 1
    assert m["mismatch_rate_ref_correct"] == pytest.approx(100 * 2 / 5)
    assert m["per_class_mismatches"] == {"0": 0, "1": 2, "2": 1}  # true labels of the flips: 1, 2, 1
    assert m["per_class_mismatch_rate"] == pytest.approx({"0": 0.0, "1": 100.0, "2": 100 / 3})
    assert m["flipped_ids"] == [31, 33, 35]
    assert {e["id"] for e in m["exemplars"]} == {31, 33, 35}
    lik = _likelihood(r, c)
    nll = -torch.log_softmax(cmp.reshape(6, 3), 1)[torch.arange(6), labels.reshape(-1)].mean()
    ref_nll = -torch.log_softmax(ref.reshape(6, 3), 1)[torch.arange(6), labels.reshape(-1)].mean()
    assert lik["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-6)
    assert lik["perplexity_increase"] == pytest.approx(100 * (math.exp(float(nll - ref_nll)) - 1), rel=1e-5)


def test_predictions_without_logits_give_the_same_figures():
    """keep_logits=False (what evaluation uses unless a metrics.agreement score needs outputs):
    no [positions, vocabulary] tensor is held, and every figure is the same as from full logits."""
    from condensa.pipeline import _likelihood

    torch.manual_seed(0)
    labels = torch.randint(0, 50, (4, 5))
    data = IndexedTensorDataset(torch.arange(4).reshape(4, 1).expand(4, 5).clone(), labels, torch.arange(4))
    ref_table, cmp_table = torch.randn(4, 5, 50) * 3, torch.randn(4, 5, 50) * 3
    full = [predict(ToyLM(t), data, batch_size=3) for t in (ref_table, cmp_table)]
    lean = [predict(ToyLM(t), data, batch_size=3, keep_logits=False) for t in (ref_table, cmp_table)]
    assert lean[0].logits is None and full[0].logits.shape == (20, 50)
    for a, b in zip(full, lean):
        assert torch.equal(a.predicted, b.predicted) and torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.confidence, b.confidence)
        by_hand = nn.functional.cross_entropy(a.logits, a.labels, reduction="none")
        torch.testing.assert_close(b.nll, by_hand)
    assert _likelihood(*lean) == pytest.approx(_likelihood(*full))
    assert mismatches(*lean, 50) == mismatches(*full, 50)


def test_text_windows_label_every_position():
    from condensa.config import DataConfig
    from condensa.data.loaders import data_key
    from condensa.data.text import text_splits

    config = DataConfig(name="text")
    splits = text_splits(config)
    for part in (splits.train, splits.val, splits.test):
        assert part.labels.shape == part.inputs.shape == (len(part), 64)
        assert torch.equal(part.labels[:, :-1], part.inputs[:, 1:])    # the next character at every position
        assert torch.equal(part.labels[:-1, -1], part.inputs[1:, 0])   # non-overlapping, contiguous windows
    assert len(splits.train) == 4001  # limit = training windows
    assert torch.equal(splits.train.labels[-1, -1], splits.val.inputs[0, 0])  # blocks follow each other
    assert splits.test.labels.numel() >= 50_000
    assert data_key(config)["labels"] == "every_position"  # references cached before this are not reused
    from condensa.data.text import VOCAB

    # reports name a class by its character, whitespace made visible
    assert len(splits.class_names) == len(VOCAB) == splits.num_classes
    assert [splits.class_names[VOCAB.index(ch)] for ch in " \n\ta"] == ["␣", "\\n", "\\t", "a"]


def test_char_lstm_predicts_every_position():
    from condensa.models.text import CharLSTM

    model = CharLSTM(hidden=16)
    x = tokens(2, 7)
    logits = model(x)
    assert logits.shape == (2, 7, 97)
    assert torch.allclose(logits[:, :4], model(x[:, :4]), atol=1e-6)  # position t sees characters up to t


def test_logits_of_and_flatten_positions():
    from transformers.modeling_outputs import CausalLMOutputWithPast

    t = torch.randn(2, 3, 5)
    assert logits_of(t) is t
    assert logits_of(CausalLMOutputWithPast(logits=t)) is t
    assert logits_of({"logits": t}) is t and logits_of((t, None)) is t
    flat, labels, teacher = flatten_positions(t, torch.arange(6).reshape(2, 3), t + 1)
    assert flat.shape == (6, 5) and labels.tolist() == list(range(6)) and torch.equal(teacher, flat + 1)
    assert torch.equal(flat[4], t[1, 1])  # row b * T + t
    two_d = torch.randn(4, 5)
    assert flatten_positions(two_d, torch.zeros(4))[0] is two_d
    with pytest.raises(ValueError, match="do not match"):
        flatten_positions(t, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError):
        logits_of(object())


# -- recovery per token -----------------------------------------------------------------------


def _lm_data(n: int = 16, length: int = 12) -> IndexedTensorDataset:
    x = tokens(n, length + 1, seed=3)
    return IndexedTensorDataset(x[:, :-1], x[:, 1:], torch.arange(n))


def _token_nll(model: nn.Module, data: IndexedTensorDataset) -> float:
    predictions = predict(model, data)
    return float(nn.functional.cross_entropy(predictions.logits, predictions.labels))


@pytest.mark.parametrize("method, loss, lr", [("finetune", "ce", 0.01), ("finetune", "distill", "auto"), ("lc", "distill", 0.01),
                                              ("lc", "ce", 0.01)])
def test_recovery_trains_a_causal_lm_per_token(method, loss, lr):
    from condensa.operators import params
    from condensa.recovery import RecoveryConfig, recover

    model = tiny_llama()
    data = _lm_data()
    strategy = Compose([Prune(0.3, layers=["Linear"]), Quantize("int8", layers=["Linear"])])
    compressed, _ = strategy.apply(model)
    before = _token_nll(compressed, data)
    config = RecoveryConfig.from_dict({"method": method, "loss": loss, "lr": lr, "epochs": 6, "batch_size": 8,
                                       "lr_test_steps": 12, "lc_steps": 2})
    report: dict = {}
    recovered = recover(compressed, model, data, config, strategy=strategy, report=report)
    assert isinstance(report["lr"], float)
    assert predict(recovered, data).logits.shape == (16 * 12, VOCAB)
    tensors = list(params.compressed_tensors(recovered))
    assert tensors and all(params.get_quant(module, name) is not None for _, module, name in tensors)  # still compressed
    if loss == "ce":  # trained on the labels of every position: the per-token loss falls
        assert _token_nll(recovered, data) < before - 0.05


# -- metrics on ModelOutput models ------------------------------------------------------------


def test_flops_and_latency_accept_model_outputs():
    model = tiny_llama()
    x = tokens(2, 10)
    flops = count_flops(model, x)
    assert flops["flops_dense"] > 0 and flops["flops_effective"] == pytest.approx(flops["flops_dense"])
    pruned, _ = Prune(0.25, layers=["Linear"]).apply(model)
    assert count_flops(pruned, x)["flops_effective"] < 0.6 * flops["flops_dense"]
    latency = measure_latency(model, x, repeats=2, warmup=1)
    assert latency["latency_ms"] > 0 and latency["latency_batch_size"] == 2


# -- hf: loader ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(BUILDERS))
def test_hf_loader_reads_a_local_folder(tmp_path, family):
    model = BUILDERS[family]()
    model.save_pretrained(str(tmp_path / "m"))
    loaded = build_model(f"hf:{tmp_path / 'm'}")
    assert type(loaded) is type(model)
    assert loaded.config.use_cache is False or not hasattr(loaded.config, "use_cache")
    x = tokens()
    assert torch.allclose(out(loaded, x), out(model, x), atol=1e-5)
    assert not any(type(m).__name__ == "Conv1D" for m in loaded.modules())  # GPT-2 linearized: weights [out, in]
    if family == "gpt2":
        assert loaded.transformer.h[0].attn.c_attn.weight.shape == (96, 32)
        kept = build_model(f"hf:{tmp_path / 'm'}", conv1d="keep")
        assert type(kept.transformer.h[0].attn.c_attn).__name__ == "Conv1D"


def test_hf_loader_refuses_what_it_cannot_read_safely(tmp_path):
    with pytest.raises(ModelError, match=r"^model.name: hf:.*missing: no config.json"):
        build_model(f"hf:{tmp_path / 'missing'}")
    model = tiny_llama()
    model.save_pretrained(str(tmp_path / "m"))
    with pytest.raises(ModelError, match="model.kwargs: trust_remote_code"):
        build_model(f"hf:{tmp_path / 'm'}", trust_remote_code=True)
    with pytest.raises(ModelError, match="model.kwargs.conv1d"):
        build_model(f"hf:{tmp_path / 'm'}", conv1d="sideways")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickled weights"):
        build_model(f"hf:{tmp_path / 'm'}")


def test_hf_spec_is_a_folder_not_code(tmp_path):
    """A file condensa reads back (manifest, run config) may name hf:PATH: it imports nothing."""
    from condensa.loading import reading_file

    tiny_llama().save_pretrained(str(tmp_path / "m"))
    with reading_file(tmp_path / "manifest.json"):
        assert isinstance(build_model(f"hf:{tmp_path / 'm'}"), nn.Module)


def test_hf_loader_reports_a_missing_extra(tmp_path, monkeypatch):
    import condensa.models.hf as hf
    from condensa.extras import MissingExtraError

    def missing(*modules):
        raise MissingExtraError("Hugging Face models need the 'hf' extra")

    monkeypatch.setattr(hf, "require", missing)
    with pytest.raises(ModelError, match=r"^model.name: hf:.*'hf' extra"):
        build_model(f"hf:{tmp_path}")


@pytest.mark.parametrize("family", list(BUILDERS))
def test_save_hf_writes_what_from_pretrained_reads(tmp_path, family):
    from transformers import AutoModel

    from condensa.models.hf import auto_class, load_hf, save_hf

    original = BUILDERS[family]()
    original.save_pretrained(str(tmp_path / "m"))
    loaded = load_hf(tmp_path / "m")
    # GPT-2 ties lm_head to wte: compressing lm_head alone would change wte too once baked, so it is refused
    exclude = ["lm_head"] if family == "gpt2" else []
    if exclude:
        with pytest.raises(LayerSelectionError, match=r"lm_head\.weight is tied to transformer\.wte\.weight"):
            Prune(0.4, layers=["Linear"]).apply(loaded)
    compressed, _ = Compose([Prune(0.4, layers=["Linear"], exclude=exclude),
                             Quantize("int8", layers=["Linear"], exclude=exclude)]).apply(loaded)
    save_hf(compressed, tmp_path / "saved")
    assert auto_class(compressed.config) is not AutoModel
    plain = auto_class(compressed.config).from_pretrained(str(tmp_path / "saved"), local_files_only=True)
    x = tokens()
    from condensa.operators import params

    assert (out(plain, x) - out(params.baked_copy(compressed), x)).abs().max() <= 1e-5  # what finalize gives
    assert (out(plain, x) - out(compressed, x)).abs().max() <= 1e-5  # the file holds the model that was measured
    if family == "gpt2":  # written back as Conv1D, the layout from_pretrained expects
        assert type(plain.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert list(params.compressed_tensors(compressed))  # the caller's model keeps its masks and quantizers


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_onnx_of_an_hf_model_is_checked_by_onnxruntime(tmp_path, family):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from condensa.export.onnx import export_onnx

    model = build_model_from(tmp_path, family)
    x = tokens(2, 10)
    info = export_onnx(model, x, tmp_path / "model.onnx")
    assert info["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x5 = tokens(5, 10, seed=9)  # another batch size than the export's
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x5.numpy()})[0])
    assert (got - out(model, x5)).abs().max() <= 1e-4


def build_model_from(tmp_path: Path, family: str) -> nn.Module:
    BUILDERS[family]().save_pretrained(str(tmp_path / family))
    return build_model(f"hf:{tmp_path / family}")


def test_char_gpt_builds():
    model = build_model("char_gpt")
    assert 1.0e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    assert logits_of(model(torch.zeros(2, 64, dtype=torch.long))).shape == (2, 64, 97)


# -- hf: through the commands ---------------------------------------------------------------------


def test_hf_folder_compress_export_eval(tmp_path):
    """hf:PATH end to end: no reference training, a per-position result, the packed export with
    ONNX, and `eval` of the export giving the same figures."""
    pytest.importorskip("onnxruntime")
    from condensa.commands import compress, evaluate_export, export
    from condensa.config import parse_config

    tiny_llama(vocab_size=97).save_pretrained(str(tmp_path / "tiny"))
    raw = {"model": {"name": f"hf:{tmp_path / 'tiny'}"}, "data": {"name": "text", "seq_len": 16, "limit": 64},
           "strategy": {"ops": [{"Prune": {"density": 0.3, "layers": ["Linear"]}}, {"Quantize": {"dtype": "int8"}}]},
           "recovery": {"epochs": 1, "max_steps": 2, "batch_size": 16, "lr": 0.001},
           "metrics": {"latency": True, "latency_repeats": 2}, "device": "cpu"}
    logs: list[str] = []
    result = compress(parse_config(raw), out=str(tmp_path / "run"), quiet=True, log=logs.append)
    assert not any("training reference" in line for line in logs)
    assert result["predictions"] == 13 * 16  # 15% of 92 windows, 16 positions each
    assert result["test"]["reference_accuracy"] != result["accuracy"] or result["mismatches"] > 0
    manifest = export(tmp_path / "run", out=str(tmp_path / "export"), quiet=True)
    assert "error" not in manifest["files"]["model.onnx"], manifest["files"]["model.onnx"]
    evaluated = evaluate_export(tmp_path / "export", quiet=True)
    for key in ("predictions", "accuracy", "perplexity", "mismatches", "footprint_bytes"):
        assert evaluated[key] == pytest.approx(result[key], rel=1e-6, abs=1e-6), key


def test_memorization_scores_every_position(tmp_path):
    """Feldman-Zhang scores per prediction: for a language model one per position, keyed like
    flipped_ids (window * T + t), so flipped positions can be compared with them."""
    from condensa.analysis.memorization import memorization_scores
    from condensa.recovery.config import TrainConfig

    x = tokens(12, 6, seed=5) % 97
    data = IndexedTensorDataset(x[:, :-1], x[:, 1:], torch.arange(100, 112))
    scores = memorization_scores("char_lstm", {"hidden": 8, "embed": 4}, data, TrainConfig(epochs=1, batch_size=4),
                                 models=3, fraction=0.5, cache=tmp_path)
    assert scores and set(scores) <= {window * 5 + t for window in range(100, 112) for t in range(5)}
    assert max(scores) >= 100 * 5 and all(-1.0 <= s <= 1.0 for s in scores.values())


# -- data.tokenizer: a model's own tokens ---------------------------------------------------------


def bpe_folder(path: Path, vocab: int = 300) -> Path:
    """A byte-level BPE tokenizer trained on a little standard-library text, saved as
    save_pretrained writes it (tokenizer.json beside tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from condensa.data.text import stdlib_text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([stdlib_text(20_000)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(str(path))
    return path


def test_text_with_a_tokenizer_windows_its_tokens(tmp_path):
    """data.tokenizer: windows hold that tokenizer's ids (they decode back to the text), labels are
    the next id at every position, and the classes are its vocabulary; the cache key follows the
    tokenizer's contents."""
    from tokenizers import Tokenizer

    from condensa.config import parse_config
    from condensa.data.loaders import data_key
    from condensa.data.text import stdlib_text, text_splits

    folder = bpe_folder(tmp_path / "tok")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = parse_config({"strategy": {"scheme": "prune_quantize"}, "data": {"name": "text", "seq_len": 16, "limit": 40,
                                                              "tokenizer": str(folder)}}).data
    splits = text_splits(config)
    assert splits.num_classes == tokenizer.get_vocab_size() == 300
    windows = splits.train.inputs
    assert windows.shape == (42, 16) and int(windows.max()) < 300  # 58 windows: 70% train, as with characters
    assert torch.equal(splits.train.labels[:, :-1], windows[:, 1:])  # next token at every position
    text = tokenizer.decode(windows.reshape(-1).tolist())
    assert len(text) > 1.2 * windows.numel() and stdlib_text(len(text)) == text  # subwords of the real text
    before = data_key(config)
    bpe_folder(tmp_path / "tok", vocab=280)
    assert data_key(config) != before  # same path, other tokenizer: another cached reference


def test_hf_model_with_its_own_tokenizer_compresses(tmp_path):
    """data.tokenizer: model reads tokenizer.json from the hf: folder; a tokenizer larger than the
    model's vocabulary is refused in one line before any training."""
    from condensa.commands import compress
    from condensa.config import parse_config
    from condensa.errors import ConfigError, DataError
    from condensa.pipeline import Workspace

    folder = tmp_path / "tiny"
    tiny_llama(vocab_size=300).save_pretrained(str(folder))
    bpe_folder(folder)
    raw = {"model": {"name": f"hf:{folder}"}, "data": {"name": "text", "seq_len": 16, "limit": 64, "tokenizer": "model"},
           "strategy": {"ops": [{"Prune": {"density": 0.3, "layers": ["Linear"]}}]},
           "recovery": {"epochs": 1, "max_steps": 2, "batch_size": 16, "lr": 0.001}, "device": "cpu"}
    config = parse_config(raw)
    assert config.data.tokenizer == str(folder)
    result = compress(config, out=str(tmp_path / "run"), quiet=True, log=lambda *_: None)
    assert result["predictions"] == 13 * 16 and 0 < result["perplexity"] < 1000
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab()
    assert result["test"]["class_names"] and all(vocab[name] == int(c) for c, name in result["test"]["class_names"].items())
    small = tmp_path / "small"
    tiny_llama(vocab_size=97).save_pretrained(str(small))
    with pytest.raises(ConfigError, match=r"data\.tokenizer \(.*\) has 300 token ids but the model fails on them \(index out of range"):
        Workspace.from_config(parse_config({**raw, "model": {"name": f"hf:{small}"}, "data": {**raw["data"], "tokenizer": str(folder)}}),
                              log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"data\.tokenizer: 'model' needs model\.name: hf:PATH"):
        parse_config({**raw, "model": {"name": "char_gpt"}})
    with pytest.raises(DataError, match=r"data\.tokenizer: .*tokenizer\.json does not exist"):
        Workspace.from_config(parse_config({**raw, "model": {"name": f"hf:{small}"}, "data": {**raw["data"], "tokenizer": str(small)}}),
                              log=lambda *_: None)


def test_report_names_a_language_models_classes(tmp_path):
    """Per-class figures of a large vocabulary: the result names only the most flipped classes and
    those its exemplars show (not all 300), the plot shows the 40 most flipped (a bounded figure,
    not 300 bars), and the exemplar table shows each token beside its id, '|' escaped in Markdown."""
    pytest.importorskip("matplotlib")
    import json

    from PIL import Image

    from condensa.metrics.accuracy import Predictions
    from condensa.report.render import write_report

    torch.manual_seed(0)
    labels = torch.randint(0, 300, (3000,))
    names = [f"t{c}" for c in range(300)]
    names[int(labels[0])] = "|"
    ref_logits = nn.functional.one_hot(labels, 300).float() * 5  # the reference is right everywhere
    cmp_logits = ref_logits.clone()
    cmp_logits[::3, 7] = 10.0  # a third of the positions flip to class 7
    ids = torch.arange(3000)
    m = mismatches(Predictions.from_logits(ref_logits, labels, ids), Predictions.from_logits(cmp_logits, labels, ids), 300,
                   class_names=names)
    named = m["class_names"]
    assert len(named) < 100 and named["7"] == "t7" and named[str(int(labels[0]))] == "|"
    assert set(named) >= {str(x["label"]) for x in m["exemplars"]}
    top = sorted(m["per_class_mismatches"], key=lambda c: -m["per_class_mismatches"][c])[:40]
    assert set(top) <= set(named)
    run = tmp_path / "run"
    run.mkdir()
    test = {**m, "accuracy": 100 - m["mismatch_rate"], "accuracy_drop": m["mismatch_rate"], "compression_ratio": 4.0}
    (run / "result.json").write_text(json.dumps({"command": "compress", "test": test}))
    write_report(run)
    with Image.open(run / "per-class-mismatches.png") as image:
        assert image.width < 2000  # 300 bars would be 0.35 in each: over 11,000 pixels wide
    md = (run / "report.md").read_text()
    assert "| t7 (7) |" in md and "\\| (" in md
