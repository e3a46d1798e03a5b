import copy
import json
from pathlib import Path

import pytest
import torch

import nncf_ext
from nncf_ext.errors import CheckpointError
from tests.conftest import TinyNet, pruning_config


def compressed(example_input: torch.Tensor) -> tuple[TinyNet, nncf_ext.CompressionPipeline]:
    torch.manual_seed(0)
    model = TinyNet()
    pipeline = nncf_ext.create_compression(model, pruning_config(0.1), example_input)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(example_input).pow(2).sum().backward()
        optimizer.step()
        pipeline.step()
    return model, pipeline


def test_get_config_load_from_config_restores_outputs(tmp_path: Path, example_input: torch.Tensor) -> None:
    model, _ = compressed(example_input)
    model.eval()
    expected = model(example_input)
    config = nncf_ext.get_config(model)
    json.dumps(config)  # plain JSON
    torch.save({"state_dict": model.state_dict(), "nncf_config": config}, tmp_path / "ckpt.pt")

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    torch.manual_seed(123)
    fresh = nncf_ext.load_from_config(TinyNet(), ckpt["nncf_config"])
    fresh.load_state_dict(ckpt["state_dict"])
    fresh.eval()
    assert torch.equal(fresh(example_input), expected)
    assert nncf_ext.compression_statistic(fresh).to_dict() == nncf_ext.compression_statistic(model).to_dict()


def test_untrusted_module_is_refused() -> None:
    config = {
        "compression_state": [
            {
                "hook_names_in_model": ["post_hooks.fc:weight__0.0"],
                "module_path": "os",
                "module_cls_name": "system",
                "module_config": {},
            }
        ]
    }
    with pytest.raises(CheckpointError, match="untrusted"):
        nncf_ext.load_from_config(TinyNet(), config)


def test_malformed_config_is_refused() -> None:
    with pytest.raises(CheckpointError, match="compression_state"):
        nncf_ext.load_from_config(TinyNet(), {"state": []})
    with pytest.raises(CheckpointError, match=r"compression_state\[0\]"):
        nncf_ext.load_from_config(TinyNet(), {"compression_state": [{"module_path": "nncf_ext.x"}]})
    command = {
        "module_path": "nncf_ext.x",
        "module_cls_name": "X",
        "module_config": {},
        "hook_names_in_model": [],
    }
    for bad in (
        {"module_config": [1]},
        {"hook_names_in_model": None},
        {"hook_names_in_model": "post_hooks.a"},
    ):
        with pytest.raises(
            CheckpointError, match=r"compression_state\[0\]: 'module_config' must be an object"
        ):
            nncf_ext.load_from_config(TinyNet(), {"compression_state": [{**command, **bad}]})


@pytest.mark.parametrize("problem", ["untrusted last", "unknown option", "no hook names"])
def test_a_failed_restore_leaves_the_model_as_it_was(problem: str, example_input: torch.Tensor) -> None:
    """NNCF adds the hooks command by command: a later failure left the earlier hooks and the wrapper, and
    NNCF's TypeError / KeyError came through raw."""
    from nncf.torch.function_hook.wrapper import is_wrapped

    config = copy.deepcopy(nncf_ext.get_config(compressed(example_input)[0]))
    last = config["compression_state"][-1]
    if problem == "untrusted last":
        last.update(module_path="os", module_cls_name="system")
    elif problem == "unknown option":
        last["module_config"]["shap"] = [1]
    else:
        del config["compression_state"][0]["hook_names_in_model"]
    fresh = TinyNet()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError):
        nncf_ext.load_from_config(fresh, config)
    assert not is_wrapped(fresh)
    assert fresh.state_dict().keys() == before.keys()


def test_pipeline_state_round_trip(example_input: torch.Tensor) -> None:
    schedule = {"type": "multistep", "steps": {"0": 0.05, "3": 0.2}}
    config = pruning_config(schedule)
    config["compression"].append(
        {"algorithm": "l1_sparsity", "lambda": {"type": "multistep", "steps": {"0": 1e-3, "2": 0.0}}}
    )
    torch.manual_seed(0)
    model = TinyNet()
    pipeline = nncf_ext.create_compression(model, config, example_input)
    pipeline.epoch_step(2)
    state = {"model": model.state_dict(), "compression": pipeline.state_dict()}

    fresh = TinyNet()
    restored = nncf_ext.create_compression(fresh, config, example_input)
    fresh.load_state_dict(state["model"])
    restored.load_state_dict(state["compression"])
    assert restored.epoch == 2 and restored.summary() == pipeline.summary()
    pipeline.epoch_step(3)
    restored.epoch_step(3)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    other = nncf_ext.create_compression(TinyNet(), pruning_config(0.3), example_input)
    with pytest.raises(CheckpointError, match="different config"):
        other.load_state_dict(state["compression"])
    with pytest.raises(CheckpointError, match="malformed"):
        other.load_state_dict({"epoch": 1})
    for bad in ({"algorithms": None}, {"epoch": 2.9}, {"epoch": True}):  # raw TypeError, or truncated to 2
        with pytest.raises(CheckpointError, match="malformed"):
            restored.load_state_dict({**state["compression"], **bad})
    with pytest.raises(CheckpointError, match="epochs must be integers"):
        entries = [{**a, "epoch": True} for a in state["compression"]["algorithms"]]
        restored.load_state_dict({**state["compression"], "algorithms": entries})
    # a bad entry further down the list changes nothing, not even the algorithms before it
    broken = copy.deepcopy(state["compression"])
    del broken["algorithms"][-1]["epoch"]
    before = restored.state_dict()
    with pytest.raises(CheckpointError, match=r"compression\[1\]"):
        restored.load_state_dict({**broken, "epoch": 5})
    assert restored.state_dict() == before


@pytest.mark.parametrize("change", ["kernel 5", "no conv", "renamed"])
def test_a_config_of_another_network_is_refused_before_wrapping(
    change: str, example_input: torch.Tensor
) -> None:
    """Hooks made for other weights used to be attached anyway: the model failed later, inside torch, or kept
    hooks on weights it does not have."""
    from nncf.torch.function_hook.wrapper import is_wrapped

    model, _ = compressed(example_input)
    config = nncf_ext.get_config(model)
    other = TinyNet()
    if change == "kernel 5":
        other.features[0] = torch.nn.Conv2d(3, 8, 5)
        match = r"'features\.0\.weight' was made for shape \(8, 3, 3, 3\), the TinyNet has \(8, 3, 5, 5\)"
    elif change == "no conv":
        other.features[3] = torch.nn.Identity()
        match = r"hook is on 'features\.3\.weight', which the TinyNet does not have"
    else:
        other.head, other.fc = other.fc, torch.nn.Identity()
        match = r"'fc\.weight', which the TinyNet does not have"
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(CheckpointError, match=match):
        nncf_ext.load_from_config(other, config)
    assert not is_wrapped(other) and other.state_dict().keys() == before.keys()


def test_get_config_of_an_uncompressed_model_says_so() -> None:
    from nncf_ext.errors import ModelError

    with pytest.raises(ModelError, match="TinyNet carries no compression hooks"):
        nncf_ext.get_config(TinyNet())
