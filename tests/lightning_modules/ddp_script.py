"""Run by test_ddp.py in a subprocess: compression under strategy="ddp" with 2 CPU processes (gloo).

Each rank writes, after every epoch, a digest of every hook tensor (masks, indices, codebooks, quantizer
ranges) and of every weight, so the test can check that the ranks never diverge.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_modules.callbacks import NNCFCompressionCallback
from lightning_modules.toy.module import ToyDataModule, ToyModule

RANK = int(os.environ.get("LOCAL_RANK", "0"))  # Lightning starts rank 1 as a copy of this script
PRUNE_STEPS = {"type": "multistep", "steps": {"0": 0.3, "1": 0.6}}
CONFIG = {
    "compression": [
        {"algorithm": "l1_sparsity", "lambda": {"type": "multistep", "steps": {"0": 1e-4, "1": 0.0}}},
        {"algorithm": "threshold_pruning", "criterion": "std", "threshold": PRUNE_STEPS},
        # a k-means seed per rank: the ranks cluster differently, and must still end with rank 0's clusters
        {"algorithm": "kmeans_quantization", "bits": 4, "start_epoch": 1, "init": "kmeans++", "seed": RANK},
        {
            "algorithm": "uniform_quantization",
            "weights": {"bits": 8},
            "activations": {"bits": 8},
            "start_epoch": 2,
            "target_scope": {"types": ["linear"]},
        },
    ]
}


class Digest(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        digests = {
            name: hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for name, tensor in pl_module.model.state_dict().items()
        }
        path = self.out / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps(digests, indent=1))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[NNCFCompressionCallback(CONFIG), Digest(out)],
        default_root_dir=str(out),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(ToyModule(), ToyDataModule(train_size=512, val_size=128, batch_size=32))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
