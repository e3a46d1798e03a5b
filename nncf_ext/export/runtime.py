"""An exported IR behind a torch ``nn.Module`` interface, so the task code and torchmetrics metrics that
evaluate the torch model evaluate the deployed one unchanged::

    ir = OpenVINOModel("model.xml")            # device defaults, as deployed (bf16 where the CPU has it)
    descriptors = ir(images)                   # torch in, torch out
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from torch import nn

from nncf_ext.errors import ExportError


class OpenVINOModel(nn.Module):
    """Calls a compiled OpenVINO model on torch tensors; returns a tensor (or a tuple for several outputs)."""

    def __init__(self, xml: str | Path, device: str = "CPU", config: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not Path(xml).exists():
            raise ExportError(f"no such IR: {xml}")
        self.xml = Path(xml)
        self.compiled = ov.Core().compile_model(str(xml), device, config or {})

    def forward(self, *inputs: torch.Tensor) -> Any:
        result = self.compiled([np.ascontiguousarray(x.detach().cpu().numpy()) for x in inputs])
        outputs = tuple(torch.from_numpy(np.asarray(result[o])) for o in self.compiled.outputs)
        return outputs[0] if len(outputs) == 1 else outputs
