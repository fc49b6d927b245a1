"""The Python entry point: a workspace built from a model spec and the user's own data."""

from __future__ import annotations

import torch

import condensa
from condensa.data import IndexedTensorDataset, Splits


def blob_splits(seed: int = 0, per_class: int = 40) -> Splits:
    """Ten well-separated Gaussian blobs shaped like digits images (1x8x8): trivially learnable,
    and nothing like the digits a digits-trained model knows."""
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(10, 1, 8, 8, generator=g)

    def split(offset: int) -> IndexedTensorDataset:
        labels = torch.arange(10).repeat_interleave(per_class)
        inputs = centers[labels] + 0.5 * torch.randn(len(labels), 1, 8, 8, generator=g)
        return IndexedTensorDataset(inputs, labels, torch.arange(len(labels)) + offset)

    return Splits(split(0), split(1000), split(2000), 10, (1, 8, 8))


def test_workspace_trains_the_reference_on_the_data_given():
    splits = blob_splits()
    messages: list[str] = []
    workspace = condensa.workspace("digits_mlp", data=splits, train={"epochs": 5}, log=messages.append)
    assert workspace.splits is splits
    assert any("training reference" in m for m in messages)
    assert workspace.reference_predictions("test").accuracy > 95  # a digits-trained MLP scores ~10% here
    # the same data again: the cached reference (keyed by the data's contents) is reused
    messages.clear()
    again = condensa.workspace("digits_mlp", data=blob_splits(), train={"epochs": 5}, log=messages.append)
    assert not any("training reference" in m for m in messages)
    x = splits.test.inputs[:8]
    assert torch.equal(again.reference(x), workspace.reference(x))


def _mean_cosine(output, reference_output, labels):
    return torch.nn.functional.cosine_similarity(output, reference_output, dim=1).mean()


def test_metrics_agreement_scores_outputs_against_the_reference(digits, digits_reference, tmp_path):
    """metrics.agreement: a user's score of the whole split's outputs (here mean cosine, as for
    embeddings), recorded with disagreement = 1 - agreement for a constraint to bound."""
    import pytest

    from condensa import Prune
    from condensa.config import MetricsConfig, parse_config
    from condensa.errors import ConfigError
    from condensa.metrics import predict
    from condensa.pipeline import Workspace, check_metric_names

    # without an agreement score only a per-prediction summary is kept (no logits held per split)
    assert Workspace(digits_reference, digits, log=lambda m: None).reference_predictions("test").logits is None
    workspace = Workspace(digits_reference, digits, metrics=MetricsConfig(agreement=_mean_cosine), log=lambda m: None)
    same = workspace.measure(digits_reference, "test")
    assert same["agreement"] == pytest.approx(1.0, abs=1e-6) and same["disagreement"] == pytest.approx(0.0, abs=1e-6)
    pruned, _ = Prune(density=0.1).apply(digits_reference)
    measured = workspace.measure(pruned, "test")
    by_hand = torch.nn.functional.cosine_similarity(predict(pruned, digits.test).logits,
                                                    predict(digits_reference, digits.test).logits, dim=1).mean()
    assert measured["agreement"] == pytest.approx(float(by_hand), abs=1e-6) and measured["agreement"] < 0.999
    assert measured["disagreement"] == pytest.approx(1 - float(by_hand), abs=1e-6)
    # named in a config as a file function
    (tmp_path / "score.py").write_text("def nan(output, reference_output, labels):\n    return float('nan')\n")
    bad = Workspace(digits_reference, digits, metrics=MetricsConfig(agreement=f"{tmp_path}/score.py:nan"), log=lambda m: None)
    with pytest.raises(ConfigError, match=r"metrics\.agreement: .*nan returned nan; it must return a finite number"):
        bad.measure(pruned, "test")
    # a constraint on disagreement needs metrics.agreement; a non-function value is refused in one line
    config = parse_config({"strategy": {"ops": [{"Prune": {}}]},
                           "search": {"constraints": [{"metric": "disagreement", "upper": 0.01}]}})
    with pytest.raises(ConfigError, match=r"search\.constraints\[0\]\.metric: 'disagreement' is measured only with metrics\.agreement"):
        check_metric_names(config.search, config.metrics)
    check_metric_names(config.search, MetricsConfig(agreement="my.module:score"))
    with pytest.raises(ConfigError, match=r"metrics\.agreement: must be null or a function"):
        parse_config({"strategy": {"ops": [{"Prune": {}}]}, "metrics": {"agreement": 3}})


def test_a_python_callable_is_a_recovery_loss(digits, digits_reference):
    from condensa import Prune
    from condensa.recovery import RecoveryConfig, recover

    calls = []

    def mse_to_teacher(output, teacher_output, labels):
        calls.append(len(labels))
        return torch.nn.functional.mse_loss(output, teacher_output)

    strategy = Prune(density=0.2)
    model = recover(strategy.apply(digits_reference)[0], digits_reference, digits.train,
                    RecoveryConfig.from_dict({"loss": mse_to_teacher, "epochs": 1}), strategy=strategy)
    assert calls and sum(calls) >= len(digits.train) and isinstance(model, torch.nn.Module)  # lr: auto tests first
