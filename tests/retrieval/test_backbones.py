"""Backbones carry torchvision's module names and shapes, so torchvision state dicts load as they are."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.retrieval.backbones import AlexNetFeatures, SmallFeatures, VGG16Features
from nncf_ext.errors import ModelError


def torchvision_alexnet_features() -> dict[str, tuple[int, ...]]:
    """``alexnet().features`` conv layers as listed in torchvision/models/alexnet.py (index: out, in, k)."""
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    return _conv_keys(convs)


def torchvision_vgg16_features() -> dict[str, tuple[int, ...]]:
    """``vgg16().features`` conv layers: cfg "D" with a ReLU after each conv and max-pools at 4, 9, 16, 23."""
    channels = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256)]
    channels += [(512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    return _conv_keys({i: (o, c, 3) for i, (o, c) in zip(indices, channels, strict=True)})


def _conv_keys(convs: dict[int, tuple[int, int, int]]) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i, (o, c, k) in convs.items():
        out[f"features.{i}.weight"] = (o, c, k, k)
        out[f"features.{i}.bias"] = (o,)
    return out


@pytest.mark.parametrize(
    ("backbone", "expected", "params"),
    [
        (AlexNetFeatures, torchvision_alexnet_features(), 2_469_696),
        (VGG16Features, torchvision_vgg16_features(), 14_714_688),
    ],
)
def test_state_dict_keys_and_shapes_match_torchvision(backbone: type, expected: dict, params: int) -> None:
    model = backbone()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == params
    # cropped at the last conv, before its ReLU and the last pool, as NetVLAD does: descriptors keep their sign
    assert isinstance(model.features[-1], torch.nn.Conv2d)
    assert bool((model(torch.randn(1, 3, 64, 64)) < 0).any())


def test_torchvision_state_dict_loads_and_ignores_the_classifier() -> None:
    state = {k: torch.randn(shape) for k, shape in torchvision_alexnet_features().items()}
    state["classifier.1.weight"] = torch.randn(4096, 9216)
    model = AlexNetFeatures()
    model.load_torchvision(state)
    assert torch.equal(model.state_dict()["features.10.weight"], state["features.10.weight"])
    state["features.3.weight"] = torch.randn(192, 64, 3, 3)
    with pytest.raises(ModelError, match=r"features\.3\.weight"):
        model.load_torchvision(state)


def test_output_sizes() -> None:
    x = torch.randn(1, 3, 224, 224)
    assert AlexNetFeatures()(x).shape == (1, 256, 13, 13)
    small = SmallFeatures(widths=(8, 16, 24))
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 24, 16, 16)
    assert [type(m).__name__ for m in small.features][:4] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]


def test_a_state_dict_that_does_not_fit_is_a_model_error() -> None:

    features = AlexNetFeatures()
    state = {k: v.clone() for k, v in features.state_dict().items()}
    del state["features.0.bias"]
    with pytest.raises(ModelError, match=r"missing \['features\.0\.bias'\]"):
        features.load_torchvision(state)
