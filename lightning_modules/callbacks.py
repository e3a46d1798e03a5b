"""NNCFCompressionCallback: any nncf-ext compression config inside ``Trainer.fit``, like Lightning's own
``ModelPruning`` callback.

::

    trainer = pl.Trainer(callbacks=[NNCFCompressionCallback("examples/configs/deep_compression.json")])
    trainer.fit(module, datamodule)           # also with strategy="ddp" and ckpt_path=... to resume

The pipeline is created in ``setup`` (before the strategy wraps the model and before the optimizers are
configured, so hook parameters such as codebooks are trained), schedules advance at each epoch start,
regularisers are applied by gradient injection before each optimizer step, and statistics are logged every
epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

import nncf_ext
from nncf_ext.config import CompressionConfig, load_config
from nncf_ext.errors import CheckpointError, ModelError

log = logging.getLogger(__name__)


class NNCFCompressionCallback(pl.Callback):
    """Compress ``pl_module.<model_attr>`` (or the module itself) with an nncf-ext config during ``fit``.

    :param config: a JSON path, a dict or a parsed :class:`~nncf_ext.CompressionConfig`.
    :param model_attr: attribute of the LightningModule holding the network whose ``forward`` the training
        step calls (default ``"model"``); ``None`` compresses the LightningModule itself.
    :param example_input: input for NNCF's graph; default: ``pl_module.example_input_array``, then the
        config's ``input_info``. Activation quantizers take their initial ranges from it, so with
        activation quantization give a representative batch of real inputs.
    :param loss_in_module: set when the LightningModule adds ``callback.pipeline.loss()`` to its own loss;
        then gradients are not injected (they would be counted twice).
    :param log_statistics: log sparsity, bits and sizes to the Trainer's loggers each epoch.
    :param print_statistics: print the statistics table at the end of fit.
    """

    def __init__(
        self,
        config: str | Path | dict[str, Any] | CompressionConfig,
        *,
        model_attr: str | None = "model",
        example_input: Any = None,
        loss_in_module: bool = False,
        log_statistics: bool = True,
        print_statistics: bool = True,
    ) -> None:
        self.config = load_config(config)
        self.model_attr = model_attr
        self.example_input = example_input
        self.loss_in_module = loss_in_module
        self.log_statistics = log_statistics
        self.print_statistics = print_statistics
        self.pipeline: nncf_ext.CompressionPipeline | None = None
        self._pending_state: dict[str, Any] | None = None
        self._stepped_at = 0  # trainer.global_step (optimizer steps) at the last pipeline.step()
        self._backwards = 0  # backward passes since the last optimizer step

    # -- model -------------------------------------------------------------------------------------------
    def target(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.model_attr is None:
            return pl_module
        model = getattr(pl_module, self.model_attr, None)
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"{type(pl_module).__name__} has no module attribute '{self.model_attr}'; "
                "pass model_attr=None to compress the LightningModule itself"
            )
        return model

    def _example_input(self, pl_module: pl.LightningModule) -> Any:
        example = self.example_input
        if example is None:
            example = getattr(pl_module, "example_input_array", None)
        if example is None:
            example = self.config.example_input()
        device = pl_module.device
        if isinstance(example, torch.Tensor):
            return example.to(device)
        if isinstance(example, tuple):
            return tuple(e.to(device) if isinstance(e, torch.Tensor) else e for e in example)
        return example

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        start_method = getattr(trainer.strategy, "_start_method", "popen")
        if isinstance(trainer.strategy, DDPStrategy) and start_method != "popen":
            # the pipeline would live in the worker processes only; Lightning copies their weights back
            # into the uncompressed module and drops the hooks' parameters
            raise ModelError(
                f"nncf-ext compression does not support DDP started by '{start_method}' "
                "(ddp_spawn, ddp_fork, ddp_notebook): use strategy='ddp'"
            )
        if stage != "fit":
            # validate / test / predict a compressed checkpoint in a fresh process: the pipeline is made
            # when the checkpoint is loaded (see _check_before_weights_load)
            if self.pipeline is None:
                self._check_before_weights_load(pl_module)
            return
        if self.pipeline is not None:  # a second fit: only of the model this callback compresses
            if self.pipeline.model is not self.target(pl_module):
                raise ModelError(
                    "this NNCFCompressionCallback compresses another model; use one callback per model"
                )
            return
        if isinstance(trainer.strategy, DDPStrategy):
            # hooks own parameters that are unused in some epochs (codebooks before clustering starts,
            # latent weights once indices are frozen); DDP must tolerate that
            kwargs = trainer.strategy._ddp_kwargs
            if kwargs.get("find_unused_parameters") is False:
                raise ModelError("nncf-ext compression under DDP needs find_unused_parameters=True")
            kwargs["find_unused_parameters"] = True
        self._check_before_weights_load(pl_module)
        self.pipeline = nncf_ext.create_compression(
            self.target(pl_module), self.config, self._example_input(pl_module)
        )
        if self._pending_state is not None:
            self._load_pipeline_state(self._pending_state)
            self._pending_state = None

    def _load_pending_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At the start of validate / test / predict: the state of the checkpoint they loaded, if any (when
        fitting, the state is loaded in ``setup`` or ``load_state_dict`` and nothing is pending)."""
        if self._pending_state is not None and self.pipeline is not None:
            self._load_pipeline_state(self._pending_state)
            self._pending_state = None

    on_validation_start = on_test_start = on_predict_start = _load_pending_state

    # -- training loop -----------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.pipeline is not None
        self.pipeline.epoch_step(trainer.current_epoch)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._backwards += 1

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # once per optimizer step, on the summed gradients of its micro-batches, and after a mixed-precision
        # GradScaler has unscaled them (injected earlier, the regulariser would be divided by the scale)
        backwards, self._backwards = self._backwards, 0
        if self.loss_in_module or self.pipeline is None:
            return
        # Lightning divides each micro-batch's loss by accumulate_grad_batches, also in an epoch's last,
        # partly filled window: a loss term would count k / N there
        n = max(trainer.accumulate_grad_batches, 1)
        scale = min(backwards, n) / n if n > 1 else 1.0
        if scale == 1.0:
            self.pipeline.inject_gradients()
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        before = [p.grad.clone() if p.grad is not None else None for p in params]
        self.pipeline.inject_gradients()
        for p, grad in zip(params, before, strict=True):
            if p.grad is not None:
                base = grad if grad is not None else torch.zeros_like(p.grad)
                p.grad = base + (p.grad - base) * scale

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stepped_at = trainer.global_step  # a resumed run continues from its checkpoint's count

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # once per optimizer step: under accumulate_grad_batches, not after every micro-batch
        if self.pipeline is not None and trainer.global_step != self._stepped_at:
            self._stepped_at = trainer.global_step
            self.pipeline.step()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.log_statistics and self.pipeline is not None:
            self._log(trainer, self.metrics())

    def metrics(self) -> dict[str, float]:
        """Schedule values and model-level statistics, keyed ``compression/...``."""
        assert self.pipeline is not None
        stats = self.pipeline.statistics()
        out = {f"compression/{k}": v for k, v in self.pipeline.summary().items()}
        out.update(
            {
                "compression/sparsity": stats.sparsity,
                "compression/compressed_mb": stats.compressed_bytes / 2**20,
                "compression/huffman_mb": stats.huffman_bytes / 2**20,
                "compression/ratio": stats.ratio,
                "compression/huffman_ratio": stats.huffman_ratio,
            }
        )
        return out

    @rank_zero_only
    def _log(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.print_statistics and self.pipeline is not None:
            print(self.pipeline.statistics())

    # -- checkpointing -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.pipeline is None:
            return {}
        return {
            "config": self.config.to_dict(),
            "nncf_config": nncf_ext.get_config(self.pipeline.model),
            "pipeline": self.pipeline.state_dict(),
        }

    def _check_before_weights_load(self, pl_module: pl.LightningModule) -> None:
        """Refuse a checkpoint written with another config before Lightning loads its weights.

        Lightning restores the model before any callback state, so the check rides on the module's
        ``on_load_checkpoint``, which runs on the loaded checkpoint just before its weights are applied. When
        a checkpoint is validated, tested or predicted with in a fresh process, the pipeline is created there
        (its hooks own parameters the checkpoint holds); Lightning then restores the callback's state, in
        every stage, through ``load_state_dict``.
        """
        original = pl_module.on_load_checkpoint
        if getattr(original, "_nncf_ext_checked", False):
            return

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            state = checkpoint.get("callbacks", {}).get(self.state_key)
            if state:
                self._check_config(state)
                if self.pipeline is None:  # evaluating a compressed checkpoint: its weights need the hooks
                    self.pipeline = nncf_ext.create_compression(
                        self.target(pl_module), self.config, self._example_input(pl_module)
                    )
            original(checkpoint)

        on_load_checkpoint._nncf_ext_checked = True  # type: ignore[attr-defined]
        pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]

    def _check_config(self, state: dict[str, Any]) -> None:
        if state.get("config") != self.config.to_dict():
            raise CheckpointError(
                "the checkpoint was written with a different compression config than this callback's"
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._check_config(state_dict)
        if self.pipeline is None:
            self._pending_state = state_dict
        else:
            self._load_pipeline_state(state_dict)

    def _load_pipeline_state(self, state: dict[str, Any]) -> None:
        assert self.pipeline is not None
        self.pipeline.load_state_dict(state["pipeline"])
