"""A network exported to ONNX, run on onnxruntime behind the interface of a PyTorch module.

The predictor hands it to the tasks' prediction code unchanged (batched 2D images, sliding
windows, rows of features): each call converts the input batch to NumPy, runs the session, and
returns the outputs as tensors. onnxruntime is an optional dependency (``pip install
'medsight[export]'``); it is imported only when a package's ONNX network is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsight.core.errors import ConfigError, InputError
from medsight.inference.runtime import onnx_session, onnxruntime_available

__all__ = ["OnnxNetwork", "onnxruntime_available"]


class OnnxNetwork(nn.Module):
    """An ONNX network on onnxruntime's CPU provider, called like the PyTorch network it was
    exported from (one input tensor, one output tensor; float32 in and out, no gradients).

    ``threads``: onnxruntime's intra-op threads (default: as many as PyTorch uses here).

    Raises:
        ConfigError: onnxruntime is not installed.
        InputError: the file is missing or is not an ONNX network onnxruntime can load.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not onnxruntime_available():  # named here too: the predictor's fallback reads this module's
            raise ConfigError(f"{self.path} is run on onnxruntime, which is not installed: "
                              "pip install 'medsight[export]'")  # fmt: skip
        self.session: Any = onnx_session(self.path, threads or torch.get_num_threads())
        (first,) = self.session.get_inputs()
        self.input_name, self.input_shape = first.name, tuple(first.shape)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        fixed = [(i, n) for i, n in enumerate(self.input_shape) if isinstance(n, int) and i > 0]
        wrong = [i for i, n in fixed if i >= inputs.ndim or inputs.shape[i] != n]
        if inputs.ndim != len(self.input_shape) or wrong:
            raise InputError(f"the ONNX network reads inputs of shape {list(self.input_shape)} (batch first), "
                             f"got {list(inputs.shape)}")  # fmt: skip
        array = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        (output,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(output)
