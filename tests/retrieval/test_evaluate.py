"""evaluate(): torch modules, plain numpy callables and OpenVINO compiled models score the same way."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lightning_modules.data.places_synth import SynthConfig, generate_places
from lightning_modules.data.revisited import RevisitedData, load_revisited
from lightning_modules.retrieval import build_retrieval_net, evaluate
from nncf_ext.errors import ModelError

TINY = SynthConfig(
    num_places=6, easy_views=2, hard_views=1, junk_views=1, distractors=6, image_size=48, query_size=64
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> RevisitedData:
    root = tmp_path_factory.mktemp("places")
    generate_places(root, "tiny", seed=3, config=TINY)
    return load_revisited(root)


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_retrieval_net("small", widths=(8, 16), num_clusters=4, whitening_dim=16).eval()


def test_numpy_callables_with_any_output_container(data: RevisitedData, model: torch.nn.Module) -> None:
    expected = evaluate(model, data, 32)
    assert set(expected) >= {"mAP_easy", "mAP_medium", "mAP_hard", "mP@1_medium", "mP@10_hard"}
    calls: list[Any] = []

    def as_numpy(batch: np.ndarray) -> np.ndarray:
        calls.append(batch)
        with torch.no_grad():
            return 3.0 * model(torch.from_numpy(batch)).numpy()  # scale does not matter: cosine ranking

    def plain(batch: np.ndarray) -> Any:
        return as_numpy(batch)

    def named(batch: np.ndarray) -> Any:  # like OpenVINO's OVDict of output name -> array
        return {"descriptor": as_numpy(batch)}

    def listed(batch: np.ndarray) -> Any:
        return [as_numpy(batch)]

    for fn in (plain, named, listed):
        assert evaluate(fn, data, 32, batch_size=7) == pytest.approx(expected, abs=1e-5)
    assert (
        isinstance(calls[0], np.ndarray)
        and calls[0].dtype == np.float32
        and calls[0].shape[1:] == (3, 32, 32)
    )
    with pytest.raises(ModelError, match="returned shape"):
        evaluate(lambda b: np.zeros((1, 4), np.float32), data, 32)


def test_openvino_compiled_model(data: RevisitedData, model: torch.nn.Module) -> None:
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(
        ov.convert_model(model, example_input=torch.randn(1, 3, 32, 32)),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32"},
    )
    expected = evaluate(model, data, 32)
    assert evaluate(compiled, data, 32) == pytest.approx(expected, abs=1e-3)
