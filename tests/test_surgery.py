"""Structured surgery: shrunk models compute what the masked models compute, on many architectures."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from condensa import FilterPrune, NeuronPrune, Prune
from condensa.coupling import channel_groups
from condensa.errors import ModelError
from condensa.models.registry import build_model
from condensa.operators import params
from condensa.operators.params import baked_copy
from condensa.surgery import shrink, shrink_with_report


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm affine params and running stats (a fresh BN is the identity, which
    would hide a wrongly kept or removed channel)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.2
            m.running_mean = torch.randn(n, generator=g) * 0.2
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def assert_same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    scale = float(ya.abs().max())
    assert scale > 1e-3, "degenerate test model"
    assert torch.allclose(ya, yb, rtol=1e-4, atol=1e-5 * scale), float((ya - yb).abs().max())


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ConcatNet(nn.Module):
    """Concatenation, depthwise conv, residual addition, conv bias, flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 8, 1)
        self.bna = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(16, 8, 3, padding=1, bias=False)
        self.bnb = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bndw = nn.BatchNorm2d(16)
        self.res = nn.Conv2d(16, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.bng = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        s = torch.relu(self.bn(self.stem(x)))
        c = torch.cat([torch.relu(self.bna(self.a(s))), torch.relu(self.bnb(self.b(s)))], dim=1)
        d = torch.relu(self.bndw(self.dw(c)))
        r = self.res(d) + c
        g = torch.relu(self.bng(self.grouped(r)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(g, 2), 1))


class HardCodedView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).view(-1, 128))


X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_digits_cnn_conv_bn_pool_flatten_linear():
    model = randomize_norms(build_model("digits_cnn"))
    x = torch.randn(4, 1, 8, 8)
    pruned, _ = FilterPrune(0.5, layers=("Conv2d", "Linear")).apply(model)
    small, report = shrink_with_report(pruned, x[:1])
    assert_same(pruned, small, x)
    assert small.features[0].out_channels == 16 and small.features[1].num_features == 16
    assert small.features[7].out_channels == 32 and small.classifier[1].in_features == 32 * 4
    assert small.classifier[1].out_features == 64 and small.classifier[4].in_features == 64
    assert report.widths["classifier.1"] == {"in_features": 128, "out_features": 64}
    assert n_params(small) < 0.35 * n_params(model)


def test_neuron_prune_mlp():
    model = build_model("digits_mlp").eval()
    pruned, _ = NeuronPrune(0.25).apply(model)
    small = shrink(pruned, torch.randn(1, 64))
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in small.modules() if isinstance(m, nn.Linear)] == [w // 4 for w in widths[:-1]] + [10]
    assert_same(pruned, small, torch.randn(5, 64))


def test_concat_depthwise_residual_grouped():
    model = randomize_norms(ConcatNet())
    pruned, _ = FilterPrune(0.5, exclude=()).apply(model)
    small, report = shrink_with_report(pruned, X32[:1])
    assert_same(pruned, small, X32)
    assert small.stem.out_channels == 8
    assert small.a.out_channels == 4 and small.b.out_channels == 4
    assert small.dw.out_channels == small.dw.groups == small.res.out_channels == 8
    # the grouped conv keeps its 4 groups and loses the same positions in each
    assert small.grouped.groups == 4 and small.grouped.out_channels == 8 and small.grouped.in_channels == 8
    assert small.head.in_features == 8 * 4
    assert not report.skipped


def test_round_to_keeps_multiples():
    model = randomize_norms(torchvision.models.resnet18(weights=None))
    pruned, _ = FilterPrune(0.3, exclude=()).apply(model)
    small, report = shrink_with_report(pruned, X32[:1], round_to=8)
    assert_same(pruned, small, X32)
    for module in small.modules():
        if isinstance(module, nn.Conv2d):
            assert module.out_channels % 8 == 0 and module.in_channels % 8 in (0, 3)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf"])
def test_torchvision_fast(name):
    model = randomize_norms(torchvision.models.get_model(name, weights=None))
    pruned, _ = FilterPrune(0.5, exclude=()).apply(model)
    small, report = shrink_with_report(pruned, X32[:1])
    assert_same(pruned, small, X32)
    assert report.channels_after < 0.6 * report.channels_before + 1000  # + the untouched classifier outputs
    assert n_params(small) < 0.7 * n_params(model)


SLOW_MODELS = ["vgg11_bn", "densenet121", "resnet50", "shufflenet_v2_x1_0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_MODELS)
def test_torchvision_slow(name):
    model = randomize_norms(torchvision.models.get_model(name, weights=None))
    pruned, _ = FilterPrune(0.5, exclude=()).apply(model)
    small, report = shrink_with_report(pruned, X32[:1])
    assert_same(pruned, small, X32)
    assert n_params(small) < 0.8 * n_params(model)


def test_coupled_masks_are_group_consistent():
    model = torchvision.models.resnet18(weights=None).eval()
    pruned, record = FilterPrune(0.5, exclude=()).apply(model)
    # layer1's residual group: stem conv, bn1 and both blocks' conv2/bn2 lose the same channels
    rows = [params.get_mask(pruned.get_submodule(n), "weight").reshape(64, -1).any(dim=1)
            for n in ("conv1", "layer1.0.conv2", "layer1.1.conv2")]
    bns = [params.get_mask(pruned.get_submodule(n), "weight") for n in ("bn1", "layer1.0.bn2", "layer1.1.bn2")]
    bias = [params.get_mask(pruned.get_submodule(n), "bias") for n in ("bn1", "layer1.0.bn2", "layer1.1.bn2")]
    for mask in rows[1:] + bns + bias:
        assert torch.equal(mask, rows[0])
    assert int(rows[0].sum()) == 32
    # idempotent: applying again keeps the same masks
    again, _ = FilterPrune(0.5, exclude=()).apply(pruned)
    assert torch.equal(params.get_mask(again.conv1, "weight"), params.get_mask(pruned.conv1, "weight"))
    assert "bn1.bias" in record.layers


def test_per_layer_masks_shrink_only_what_is_safe():
    model = randomize_norms(torchvision.models.resnet18(weights=None))
    pruned, _ = FilterPrune(0.5, exclude=(), coupled=False).apply(model)
    small, report = shrink_with_report(pruned, X32[:1])
    assert_same(pruned, small, X32)
    # inner channels (conv1 -> conv2 of a block) go; residual channels stay (other branches are nonzero)
    assert small.layer1[0].conv1.out_channels == 32
    assert 32 < small.layer1[0].conv2.out_channels <= 64


def test_shrink_leaves_the_input_model_intact():
    model = build_model("digits_cnn").eval()
    pruned, _ = FilterPrune(0.5).apply(model)
    x = torch.randn(2, 1, 8, 8)
    before = pruned(x)
    shrink(pruned, x[:1])
    assert torch.equal(pruned(x), before)
    assert baked_copy(pruned) is not pruned and torch.equal(pruned(x), before)


def test_channel_shuffle_groups_are_skipped_with_a_named_reason():
    model = randomize_norms(torchvision.models.shufflenet_v2_x1_0(weights=None))
    groups = channel_groups(model, X32[:1])
    blocked = [g for g in groups if g.blocked and "output" not in g.blocked]
    assert blocked and all("stage" in g.describe() for g in blocked)
    pruned, _ = FilterPrune(0.5, exclude=()).apply(model)
    small, _ = shrink_with_report(pruned, X32[:1])
    assert_same(pruned, small, X32)
    assert small.stage2[1].branch2[0].out_channels < model.stage2[1].branch2[0].out_channels
    # per-layer masks zero channels that cross the shuffle: strict surgery names the layer
    per_layer, _ = FilterPrune(0.5, exclude=(), coupled=False).apply(model)
    with pytest.raises(ModelError, match=r"stage\d\.\d\.branch"):
        shrink_with_report(per_layer, X32[:1], strict=True)
    _, report = shrink_with_report(per_layer, X32[:1])
    assert report.skipped and "channel" in report.skipped[0][1]


def test_hard_coded_shape_gives_a_clear_error():
    model = HardCodedView().eval()
    pruned, _ = FilterPrune(0.5, exclude=()).apply(model)
    with pytest.raises(ModelError, match="conv2"):
        shrink(pruned, X32[:1])


def test_unstructured_zeros_are_kept_when_not_removable():
    model = randomize_norms(torchvision.models.resnet18(weights=None))
    pruned, _ = Prune(0.3).apply(model)
    small, report = shrink_with_report(pruned, X32[:1])
    assert_same(pruned, small, X32)
    assert not report.applied


def test_torch_pruning_private_api_is_still_there():
    """The adapter patches Torch-Pruning's private index mapping; an upgrade that renames it must
    fail here, loudly, rather than silently mis-map channels in users' exports."""
    from condensa.coupling import torch_pruning_adapter

    torch_pruning_adapter.check_private_api()
    original = torch_pruning_adapter.index_mapping.update_concat_index_mapping
    try:
        del torch_pruning_adapter.index_mapping.update_concat_index_mapping
        with pytest.raises(RuntimeError, match="update_concat_index_mapping"):
            torch_pruning_adapter.check_private_api()
    finally:
        torch_pruning_adapter.index_mapping.update_concat_index_mapping = original


def test_the_adapter_patch_is_removed_after_tracing():
    from condensa.coupling import torch_pruning_adapter
    from condensa.coupling.barriers import OpRecorder

    original = torch_pruning_adapter.index_mapping.update_index_mapping
    with torch_pruning_adapter.safe_index_mapping({}, OpRecorder()):
        assert torch_pruning_adapter.index_mapping.update_index_mapping is not original
    assert torch_pruning_adapter.index_mapping.update_index_mapping is original
