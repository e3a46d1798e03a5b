import itertools
import math

import pytest

from nncf_ext.errors import ConfigError
from nncf_ext.schedulers import parse_schedule


def values(raw: object, epochs: int = 8) -> list[float]:
    schedule = parse_schedule(raw, "s")
    return [schedule(e) for e in range(epochs)]


def test_constant() -> None:
    assert values(0.01, 3) == [0.01, 0.01, 0.01]


def test_multistep_every_epoch() -> None:
    raw = {"type": "multistep", "steps": {"1": 0.001, "3": 0.005, "6": 0.01}}
    assert values(raw) == [0.0, 0.001, 0.001, 0.005, 0.005, 0.005, 0.01, 0.01]


def test_polynomial_agp_every_epoch() -> None:
    raw = {"type": "polynomial", "initial": 0.0, "target": 0.8, "start_epoch": 1, "end_epoch": 5, "power": 3}
    expected = [0.8 - 0.8 * (1 - min(max((e - 1) / 4, 0), 1)) ** 3 for e in range(8)]
    assert values(raw) == pytest.approx(expected)
    assert values(raw)[1] == 0.0 and values(raw)[5] == pytest.approx(0.8)


def test_exponential_is_geometric() -> None:
    raw = {"type": "exponential", "initial": 0.001, "target": 0.1, "start_epoch": 0, "end_epoch": 4}
    got = values(raw, 6)
    assert got == pytest.approx([0.001, 0.001 * 10**0.5, 0.01, 0.001 * 10**1.5, 0.1, 0.1])
    ratios = [got[i + 1] / got[i] for i in range(3)]
    assert all(math.isclose(r, ratios[0]) for r in ratios)


def test_iterative_cycles() -> None:
    raw = {
        "type": "iterative",
        "initial": 0.001,
        "target": 0.004,
        "cycles": 4,
        "fine_tune_epochs": 2,
        "start_epoch": 1,
    }
    assert values(raw, 10) == pytest.approx(
        [0.0, 0.001, 0.001, 0.002, 0.002, 0.003, 0.003, 0.004, 0.004, 0.004]
    )
    assert parse_schedule(raw, "s").final_epoch == 7  # the first epoch at the target


def test_final_epoch_is_the_first_epoch_of_the_last_value() -> None:
    for raw, final in (
        ({"type": "multistep", "steps": {"0": 0.1, "5": 0.2}}, 5),
        ({"type": "polynomial", "initial": 0.0, "target": 1.0, "start_epoch": 1, "end_epoch": 4}, 4),
        ({"type": "exponential", "initial": 0.1, "target": 1.0, "start_epoch": 0, "end_epoch": 3}, 3),
        (0.5, 0),
    ):
        schedule = parse_schedule(raw, "s")
        assert schedule.final_epoch == final
        assert schedule(final) == schedule(final + 10) and (
            final == 0 or schedule(final - 1) != schedule(final)
        )
    late = parse_schedule({"type": "multistep", "steps": {"0": 0.0, "5": 1e-4}}, "s")
    assert late.first_nonzero_from(3) == 5 and late.first_nonzero_from(6) == 6
    assert (
        parse_schedule({"type": "multistep", "steps": {"0": 1e-4, "5": 0.0}}, "s").first_nonzero_from(5)
        is None
    )


def test_round_trip() -> None:
    for raw in (
        {"type": "multistep", "steps": {"0": 0.1, "2": 0.2}},
        {"type": "polynomial", "initial": 0.0, "target": 1.0, "start_epoch": 0, "end_epoch": 3},
        {
            "type": "iterative",
            "initial": 0.1,
            "target": 0.4,
            "cycles": 2,
            "fine_tune_epochs": 1,
            "ramp": "geometric",
        },
    ):
        s = parse_schedule(raw, "s")
        again = parse_schedule(s.to_config(), "s")
        assert again == s and [again(e) for e in range(6)] == [s(e) for e in range(6)]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"type": "multistep", "steps": {"3": 0.1, "1": 0.2}}, "s.steps"),
        ({"type": "multistep", "steps": {"x": 0.1}}, "s.steps"),
        ({"type": "multistep", "steps": {"1_0": 0.1}}, "s.steps"),  # int() reads it as 10
        ({"type": "multistep", "steps": {" 3": 0.1}}, "s.steps"),
        ({"type": "multistep", "steps": {1.7: 0.1}}, "s.steps"),  # int() truncates it to 1
        ({"type": "multistep", "steps": {"\u0663": 0.1}}, "s.steps"),  # an Arabic-Indic 3: str.isdigit()
        ({"type": "multistep", "steps": {"\u00b2": 0.1}}, "s.steps"),  # superscript 2: int() raised
        ({"type": "multistep", "steps": {}}, "s.steps"),
        ({"type": "exponential", "initial": 0.0, "target": 0.1, "end_epoch": 3}, "s.initial"),
        ({"type": "polynomial", "target": 0.1, "start_epoch": 4, "end_epoch": 3}, "s.end_epoch"),
        ({"type": "polynomial", "target": 0.1, "start_epoch": 3, "end_epoch": 3}, "s.end_epoch"),
        (
            {"type": "exponential", "initial": 0.1, "target": 1.0, "start_epoch": 2, "end_epoch": 2},
            "s.end_epoch",
        ),
        ({"type": "multistep", "steps": {"3": 0.1, "03": 0.2}}, "s.steps"),  # the same epoch twice
        ({"type": "multistep", "steps": {"1": True}}, "s.steps['1']"),
        ({"type": "linear", "target": 0.1}, "s.type"),
        (-0.5, "s"),
    ],
)
def test_bad_schedules(raw: object, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_schedule(raw, "s")
    assert info.value.path == path


RAMP_VALUES = (
    1e-5,
    1e-4,
    0.001,
    0.002,
    0.003,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.07,
    0.1,
    0.2,
    0.3,
    0.5,
    0.7,
    0.9,
)


@pytest.mark.parametrize(
    "shape",
    [
        {"type": "exponential", "start_epoch": 1, "end_epoch": 7},
        {"type": "polynomial", "start_epoch": 1, "end_epoch": 7, "power": 3},
        {"type": "iterative", "cycles": 4, "fine_tune_epochs": 2, "start_epoch": 1},
        {"type": "iterative", "cycles": 3, "fine_tune_epochs": 1, "ramp": "geometric"},
        {"type": "iterative", "cycles": 1, "fine_tune_epochs": 1, "ramp": "geometric"},
    ],
)
def test_ramps_end_exactly_at_target(shape: dict[str, object]) -> None:
    # iterative 0.001 -> 0.01 ended at 0.010000000000000002, above a maximum checked against target
    start = shape.get("start_epoch", 0)
    assert isinstance(start, int)
    for initial, target in itertools.product(RAMP_VALUES, repeat=2):
        s = parse_schedule({**shape, "initial": initial, "target": target}, "s")
        assert s(s.final_epoch) == target and s(s.final_epoch + 5) == target, (initial, target)
        if shape.get("cycles") != 1:  # one cycle starts at the target
            assert s(start) == initial, (initial, target)
