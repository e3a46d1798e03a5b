import copy
import json
from pathlib import Path

import pytest
import torch
from nncf.torch.function_hook.wrapper import is_wrapped

import nncf_ext
from nncf_ext.errors import ConfigError, ModelError
from tests.conftest import TinyNet, model_state

GOOD = {
    "input_info": {"sample_size": [1, 3, 12, 12]},
    "compression": [
        {
            "algorithm": "threshold_pruning",
            "criterion": "std",
            "threshold": {"type": "multistep", "steps": {"0": 0.5, "2": 1.0}},
            "regrowth": False,
            "ignored_scope": {"types": ["linear"]},
        },
        {
            "algorithm": "l1_sparsity",
            "lambda": {"type": "polynomial", "initial": 0, "target": 1e-4, "end_epoch": 3},
        },
    ],
}


def test_round_trip_through_json(tmp_path: Path) -> None:
    config = nncf_ext.CompressionConfig.from_dict(GOOD)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.to_dict()))
    again = nncf_ext.load_config(path)
    assert again == config
    assert again.to_dict() == config.to_dict()


def test_examples_parse() -> None:
    paths = sorted(Path("examples/configs").glob("*.json"))
    assert len(paths) >= 6
    for path in paths:
        config = nncf_ext.load_config(path)
        assert nncf_ext.load_config(config.to_dict()) == config


def with_entry(**changes: object) -> dict:
    config = copy.deepcopy(GOOD)
    config["compression"][0].update(changes)
    return config


BAD_CONFIGS = [
    (
        {"compression": [{"algorithm": "treshold_pruning", "threshold": 0.1}]},
        "compression[0].algorithm",
        "threshold_pruning",
    ),
    ({**GOOD, "compresion": []}, "compresion", "compression"),
    (with_entry(threshhold=0.1), "compression[0].threshhold", "threshold"),
    (with_entry(threshold=-0.01), "compression[0].threshold", ">= 0"),
    (with_entry(threshold="0.1"), "compression[0].threshold", "expected an object"),
    (
        with_entry(threshold={"type": "multistep", "steps": {"4": 0.1, "2": 0.2}}),
        "compression[0].threshold.steps",
        "increasing",
    ),
    (
        with_entry(threshold={"type": "multistep", "steps": {"0": -1.0}}),
        "compression[0].threshold.steps['0']",
        ">= 0",
    ),
    (with_entry(criterion="magnitude"), "compression[0].criterion", "not one of"),
    (with_entry(regrowth="yes"), "compression[0].regrowth", "true or false"),
    (
        with_entry(target_scope={"names": ["nope.weight"]}),
        "compression[0].target_scope.names[0]",
        "matches no weight",
    ),
    (
        with_entry(ignored_scope={"patterns": ["^zzz"]}),
        "compression[0].ignored_scope.patterns[0]",
        "matches no weight",
    ),
    (
        with_entry(target_scope={"patterns": ["(unclosed"]}),
        "compression[0].target_scope.patterns[0]",
        "regular expression",
    ),
    (with_entry(target_scope={"type": ["conv2d"]}), "compression[0].target_scope.type", "types"),
    (with_entry(ignored_scope={"types": ["conv2d", "linear"]}), "compression[0]", "no weight"),
    ({"input_info": {"sample_size": [1, 3, 12, 12]}, "compression": []}, "compression", "at least one"),
    (
        {"input_info": {"sample_size": []}, "compression": GOOD["compression"]},
        "input_info.sample_size",
        "empty",
    ),
    (
        {"input_info": {"sample_size": [1, 3, 12.5, 12]}, "compression": GOOD["compression"]},
        "input_info.sample_size[2]",
        "integer",
    ),
    (
        {"compression": [{"algorithm": "l1_sparsity", "lambda": float("nan")}]},
        "compression[0].lambda",
        "finite",
    ),
    ({"compression": [{"algorithm": "l1_sparsity"}]}, "compression[0].lambda", "missing"),
    (
        {"compression": [{"algorithm": "l1_sparsity", "lambda": 10**400}]},
        "compression[0].lambda",
        "too large",
    ),
    ({"input_info": [], "compression": {"algorithm": "l1_sparsity", "lambda": 0.1}}, "input_info", "empty"),
    (
        {"compression": [{"algorithm": "l1_sparsity", "lambda": 1e-4, "reduction": "avg"}]},
        "compression[0].reduction",
        "not one of",
    ),
    ({"compression": [{"threshold": 0.1}]}, "compression[0].algorithm", "missing"),
    ([1, 2], "", "got list"),
]


@pytest.mark.parametrize(("raw", "path", "fragment"), BAD_CONFIGS)
def test_bad_config_is_named_and_model_unchanged(
    raw: object, path: str, fragment: str, example_input: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    before = model_state(model)
    with pytest.raises(ConfigError) as info:
        nncf_ext.create_compression(model, raw, example_input)  # type: ignore[arg-type]
    assert info.value.path == path, str(info.value)
    assert fragment in str(info.value)
    assert not is_wrapped(model)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_unknown_algorithm_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="did you mean 'l1_sparsity'"):
        nncf_ext.load_config({"compression": {"algorithm": "l1_sparse", "lambda": 0.1}})


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        nncf_ext.load_config(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="cannot read"):
        nncf_ext.load_config(tmp_path / "missing.json")


def test_missing_input_info_without_example() -> None:
    with pytest.raises(ConfigError, match="input_info"):
        nncf_ext.create_compression(TinyNet(), {"compression": {"algorithm": "l1_sparsity", "lambda": 0.1}})


@pytest.mark.parametrize("problem", ["nan", "input", "sequential"])
def test_model_errors_leave_model_unchanged(problem: str, example_input: torch.Tensor) -> None:
    model: torch.nn.Module = TinyNet()
    inputs = example_input
    if problem == "nan":
        with torch.no_grad():
            model.fc.weight[0, 0] = float("nan")
    elif problem == "input":
        inputs = torch.randn(2, 5, 12, 12)
    else:
        model = torch.nn.Sequential(torch.nn.Linear(3, 3))
        inputs = torch.randn(2, 3)
    before = model_state(model)
    config = {"compression": {"algorithm": "threshold_pruning", "threshold": 0.1}}
    with pytest.raises(ModelError) as info:
        nncf_ext.create_compression(model, config, inputs)
    message = str(info.value)
    assert {"nan": "fc.weight", "input": "rejects the example input", "sequential": "nn.Sequential"}[
        problem
    ] in message
    assert not is_wrapped(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, equal_nan=True, rtol=0, atol=0)


def test_a_failure_at_epoch_0_restores_the_weights_and_unwraps(
    example_input: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nncf_ext.algorithms.kmeans_quantization.algo import KMeansQuantization

    def fail(self: KMeansQuantization, epoch: int) -> None:
        raise RuntimeError("clustering failed")

    monkeypatch.setattr(KMeansQuantization, "epoch_step", fail)
    model = TinyNet()
    before = model_state(model)
    config = {
        "compression": [
            {"algorithm": "threshold_pruning", "threshold": 0.2},  # zeroes weights in place at epoch 0
            {"algorithm": "kmeans_quantization", "bits": 4},
        ]
    }
    with pytest.raises(RuntimeError, match="clustering failed"):
        nncf_ext.create_compression(model, config, example_input)
    assert not is_wrapped(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)


def test_a_quantized_model_is_not_quantized_again(example_input: torch.Tensor) -> None:
    """NNCF's quantizers count as existing hooks (only nncf-ext's own hook modules did)."""
    model = TinyNet()
    int8 = {"compression": {"algorithm": "uniform_quantization", "weights": {"bits": 8}}}
    nncf_ext.create_compression(model, int8, example_input)
    before = model_state(model)
    with pytest.raises(ModelError, match="already carry nncf-ext hooks or NNCF quantizers"):
        nncf_ext.create_compression(model, int8, example_input)
    after = model.state_dict()
    assert after.keys() == before.keys()


def test_two_grids_on_one_weight_are_refused_a_codebook_on_a_grid_is_not(example_input: torch.Tensor) -> None:
    grid = {"algorithm": "uniform_quantization", "weights": {"bits": 8}}
    model = TinyNet()
    with pytest.raises(ConfigError, match=r"already have a grid from compression\[0\]") as info:
        nncf_ext.create_compression(
            model,
            {"compression": [grid, {"algorithm": "mqat", "bits": {"features": 4, "fc": 4}}]},
            example_input,
        )
    assert info.value.path == "compression[1]" and not is_wrapped(model)
    kmeans = {"algorithm": "kmeans_quantization", "bits": 4}
    with pytest.raises(ConfigError, match="already have a codebook from"):
        nncf_ext.create_compression(TinyNet(), {"compression": [kmeans, kmeans]}, example_input)
    # cluster-preserving quantization: k-means centroids snapped to an int8 grid
    nncf_ext.create_compression(TinyNet(), {"compression": [kmeans, grid]}, example_input)


def test_config_files_in_utf16_or_with_a_bom_are_read_and_bad_bytes_are_named(tmp_path: Path) -> None:
    text = json.dumps({"compression": {"algorithm": "l1_sparsity", "lambda": 0.1}})
    for name, data in (
        ("utf16.json", b"\xff\xfe" + text.encode("utf-16-le")),
        ("utf8bom.json", b"\xef\xbb\xbf" + text.encode()),
        ("utf32.json", text.encode("utf-32")),
    ):
        (tmp_path / name).write_bytes(data)
        assert nncf_ext.load_config(tmp_path / name).algorithms[0][0] == "l1_sparsity", name
    bad = tmp_path / "latin1.json"
    bad.write_bytes(text.replace("{", '{"description": "café", ', 1).encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.json is not UTF-8"):  # was a raw UnicodeDecodeError
        nncf_ext.load_config(bad)


def test_a_huge_sample_size_is_refused_when_parsed() -> None:
    entry = {"algorithm": "l1_sparsity", "lambda": 1e-5}
    with pytest.raises(ConfigError) as info:  # failed inside torch in create_compression
        nncf_ext.load_config({"input_info": {"sample_size": [1, 10**20]}, "compression": entry})
    assert info.value.path == "input_info.sample_size" and "elements" in str(info.value)
    with pytest.raises(ConfigError) as info:
        nncf_ext.load_config(
            {"input_info": [{"sample_size": [1, 4]}, {"sample_size": [2**16] * 3}], "compression": entry}
        )
    assert info.value.path == "input_info[1].sample_size"
    assert nncf_ext.load_config({"input_info": {"sample_size": [2**31]}, "compression": entry})


def test_two_masks_on_one_weight_are_refused_two_l1_penalties_add_up(example_input: torch.Tensor) -> None:
    """Two pruning entries over the same weights stacked two masks; L1 entries add (a global one plus a
    stronger one on some layers)."""
    prune = {"algorithm": "threshold_pruning", "threshold": 0.01}
    l1 = {"algorithm": "l1_sparsity", "lambda": 1e-4}
    model = TinyNet()
    narrow = {**prune, "target_scope": {"names": ["fc.weight"]}}
    with pytest.raises(
        ConfigError, match=r"\['fc.weight'\] already have a pruning mask from compression\[0\]"
    ):
        nncf_ext.create_compression(model, {"compression": [prune, narrow]}, example_input)
    assert not is_wrapped(model)
    disjoint = {**prune, "ignored_scope": {"names": ["fc.weight"]}}
    both_l1 = [l1, {**l1, "target_scope": {"names": ["fc.weight"]}}]
    nncf_ext.create_compression(TinyNet(), {"compression": [disjoint, narrow, *both_l1]}, example_input)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (
            {"compression": {"algorithm": "threshold_pruning", "treshold": 0.01}},
            "threshold: required key is missing",
        ),
        (
            {"compresion": {"algorithm": "threshold_pruning", "threshold": 0.01}},
            "compression: required key is missing",
        ),
    ],
)
def test_a_misspelt_required_key_is_named(raw: dict[str, object], match: str) -> None:
    """Only optional keys got a suggestion: a misspelt required one read as merely missing."""
    wrong = next(k for k in [*raw, *raw.get("compression", {})] if k in ("treshold", "compresion"))
    with pytest.raises(ConfigError, match=rf"{match} \('{wrong}' is there: misspelt\?\)"):
        nncf_ext.load_config(raw)
