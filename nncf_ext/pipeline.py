"""CompressionPipeline: the algorithms of a config applied in order to one model, driven by the training loop.

::

    pipeline = nncf_ext.create_compression(model, "config.json", example_input)
    for epoch in range(epochs):
        pipeline.epoch_step(epoch)                    # schedules advance, masks / codebooks update
        for x, y in loader:
            loss = criterion(model(x), y) + pipeline.loss()
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            pipeline.step()                           # per-batch housekeeping
    print(pipeline.statistics())
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from nncf.torch.quantization.layers import BaseQuantizer
from torch import nn

from nncf_ext.algorithms.base import ALGORITHMS, CompressionAlgorithm
from nncf_ext.config import CompressionConfig, load_config
from nncf_ext.errors import CheckpointError, ConfigError, ModelError
from nncf_ext.hooks import WeightHook, weight_hooks
from nncf_ext.model import (
    build_graph,
    check_example_input,
    check_finite,
    check_wrappable,
    find_other_constants,
    find_weights,
    get_weight,
    wrapping_transaction,
)
from nncf_ext.statistics import CompressionStatistic, compression_statistic


class CompressionPipeline:
    """Algorithms applied to ``model`` in config order; see the module docstring for the training loop."""

    def __init__(
        self, model: nn.Module, config: CompressionConfig, algorithms: list[CompressionAlgorithm]
    ) -> None:
        self.model = model
        self.config = config
        self.algorithms = algorithms
        self.epoch = -1

    def epoch_step(self, epoch: int | None = None) -> None:
        """Advance every schedule to ``epoch`` (default: the next one); repeating an epoch is harmless."""
        self.epoch = self.epoch + 1 if epoch is None else int(epoch)
        for algorithm in self.algorithms:
            algorithm.epoch_step(self.epoch)

    def step(self) -> None:
        """Call after each optimizer step."""
        for algorithm in self.algorithms:
            algorithm.step()

    def loss(self) -> torch.Tensor:
        """The sum of the algorithms' loss terms (a zero tensor when there is none)."""
        terms = [t for t in (a.loss() for a in self.algorithms) if t is not None]
        if not terms:
            device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
            return torch.zeros((), device=device)
        return torch.stack(terms).sum() if len(terms) > 1 else terms[0]

    def inject_gradients(self) -> None:
        """After ``backward()``: add the gradients of :meth:`loss` without changing the loss."""
        for algorithm in self.algorithms:
            algorithm.inject_gradients()

    def statistics(self) -> CompressionStatistic:
        return compression_statistic(self.model)

    def summary(self) -> dict[str, float]:
        """Current schedule values, keyed ``<algorithm>/<value>``, for loggers."""
        out: dict[str, float] = {}
        for algorithm in self.algorithms:
            for key, value in algorithm.summary().items():
                out[f"{algorithm.name}/{key}"] = value
        return out

    def state_dict(self) -> dict[str, Any]:
        """Scheduler state; hook buffers live in ``model.state_dict()``."""
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "algorithms": [a.state_dict() for a in self.algorithms],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            saved = state["config"]
            algorithms = state["algorithms"]
            epoch = state["epoch"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"malformed compression state: missing or invalid {e}") from None
        if not isinstance(algorithms, list) or not all(isinstance(a, dict) for a in algorithms):
            raise CheckpointError("malformed compression state: 'algorithms' must be a list of objects")
        if not _is_epoch(epoch) or not all(_is_epoch(a.get("epoch", -1)) for a in algorithms):
            raise CheckpointError("malformed compression state: epochs must be integers >= -1")
        if saved != self.config.to_dict():
            raise CheckpointError(
                "the compression state was saved with a different config than this pipeline's"
            )
        if len(algorithms) != len(self.algorithms):
            raise CheckpointError(
                f"state has {len(algorithms)} algorithms, pipeline has {len(self.algorithms)}"
            )
        previous = [a.state_dict() for a in self.algorithms]
        for i, (algorithm, sub) in enumerate(zip(self.algorithms, algorithms, strict=True)):
            try:
                algorithm.load_state_dict(sub)
            except (KeyError, TypeError, ValueError, OverflowError) as e:
                for done, state_before in zip(self.algorithms[: i + 1], previous, strict=False):
                    done.load_state_dict(state_before)  # all or nothing
                if isinstance(e, CheckpointError):  # the algorithm's own message says what is wrong
                    raise
                raise CheckpointError(
                    f"malformed compression state of {algorithm.path}: missing or invalid {e}"
                ) from None
        self.epoch = epoch


def _is_epoch(value: Any) -> bool:
    """An epoch of a saved state: an int (not a bool, not a float that int() would truncate), -1 before
    the first epoch_step."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= -1


def create_compression(
    model: nn.Module,
    config: str | Path | dict[str, Any] | CompressionConfig,
    example_input: Any = None,
) -> CompressionPipeline:
    """Wrap ``model`` with NNCF and apply the config's algorithms; the model is compressed at epoch 0.

    Everything is validated before the model is touched: on any error the model is left unchanged.
    """
    parsed = load_config(config)
    check_wrappable(model)
    if example_input is None:
        example_input = parsed.example_input()
    algorithms = [
        ALGORITHMS[name](cfg, f"compression[{i}]") for i, (name, cfg) in enumerate(parsed.algorithms)
    ]
    check_example_input(model, example_input)
    with wrapping_transaction(model) as wrapped:
        existing = {
            n
            for n, hooks in weight_hooks(wrapped).items()
            if any(isinstance(h, (WeightHook, BaseQuantizer)) for h in hooks)
        }
        graph = build_graph(wrapped, example_input)
        weights = find_weights(wrapped, graph)
        others = find_other_constants(wrapped, graph, weights)
        if not weights:
            raise ModelError(
                "the model has no weighted operation (conv, linear, embedding, matmul) to compress"
            )
        selections = []
        taken_by: dict[tuple[str, str], str] = {}  # (weight, role) -> the entry that put it there
        for algorithm in algorithms:
            selected = algorithm.select(weights, others)
            already = sorted(w.name for w in selected if w.name in existing)
            if already:
                raise ModelError(
                    f"{algorithm.path}: weights {already} already carry nncf-ext hooks or NNCF quantizers; "
                    "create the pipeline on the uncompressed model and load its state_dict instead"
                )
            if (role := algorithm.role) is not None:
                twice = sorted(w.name for w in selected if (w.name, role) in taken_by)
                if twice:
                    raise ConfigError(
                        algorithm.path,
                        f"weights {twice} already have a {role} from {taken_by[twice[0], role]}; "
                        "narrow the target_scope or ignored_scope of one of them",
                    )
                taken_by.update({(w.name, role): algorithm.path for w in selected})
            check_finite(wrapped, selected)
            algorithm.validate(wrapped, selected)
            selections.append(selected)
        entries = list(zip(algorithms, selections, strict=True))
        for algorithm, selected in entries:
            algorithm.check_selection(selected, entries)
        # epoch 0 may change weights in place (masks, clustering): keep what it touches until it succeeds
        touched = {w.name for selected in selections for w in selected}
        originals = {name: get_weight(wrapped, name).detach().clone() for name in touched}
        for algorithm, selected in zip(algorithms, selections, strict=True):
            algorithm.apply(wrapped, selected, example_input)
        pipeline = CompressionPipeline(wrapped, parsed, algorithms)
        try:
            pipeline.epoch_step(0)
        except BaseException:
            with torch.no_grad():
                for name, value in originals.items():
                    get_weight(wrapped, name).copy_(value)
            raise
    return pipeline
