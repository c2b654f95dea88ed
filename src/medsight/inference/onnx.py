"""A network exported to ONNX, run on onnxruntime behind the interface of a PyTorch module.

The predictor hands it to the tasks' prediction code unchanged (batched 2D images, sliding
windows, rows of features): each call converts the input batch to NumPy, runs the session, and
returns the outputs as tensors. onnxruntime is an optional dependency (``pip install
'medsight[export]'``); it is imported only when a package's ONNX network is loaded.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsight.core.errors import ConfigError, InputError

__all__ = ["OnnxNetwork", "onnxruntime_available"]

log = logging.getLogger(__name__)

_INSTALL = "install it with `pip install 'medsight[export]'`"


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported here (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


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
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such ONNX file (export the run again with `medsight export`)")
        if not onnxruntime_available():
            raise ConfigError(f"{self.path} is run on onnxruntime, which is not installed: {_INSTALL}")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session: Any = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for every kind of bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{self.path} is not an ONNX network onnxruntime can load: {first}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(f"{self.path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                             "medsight's networks have one of each")  # fmt: skip
        self.input_name, self.input_shape = inputs[0].name, tuple(inputs[0].shape)
        log.info("loaded %s on onnxruntime %s (%d threads)", self.path, ort.__version__, options.intra_op_num_threads)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        fixed = [(i, n) for i, n in enumerate(self.input_shape) if isinstance(n, int) and i > 0]
        wrong = [i for i, n in fixed if i >= inputs.ndim or inputs.shape[i] != n]
        if inputs.ndim != len(self.input_shape) or wrong:
            raise InputError(f"the ONNX network reads inputs of shape {list(self.input_shape)} (batch first), "
                             f"got {list(inputs.shape)}")  # fmt: skip
        array = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        (output,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(output)
