"""Training engine: the loop, run directories, and multi-process helpers.

Public names are imported on first use (see :mod:`medsight.core.lazy`).
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.engine.config import EarlyStopping, TrainConfig, choose_device, choose_precision
    from medsight.engine.distributed import gather, is_main_process, launched_by_torchrun, process_group, world_size
    from medsight.engine.loop import TrainResult, seed_everything, train
    from medsight.engine.run import RunDir


__all__ = [
    "EarlyStopping",
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "choose_device",
    "choose_precision",
    "gather",
    "is_main_process",
    "launched_by_torchrun",
    "process_group",
    "seed_everything",
    "train",
    "world_size",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.engine.config": ("EarlyStopping", "TrainConfig", "choose_device", "choose_precision"),
        "medsight.engine.run": ("RunDir",),
        "medsight.engine.loop": ("TrainResult", "seed_everything", "train"),
        "medsight.engine.distributed": (
            "gather",
            "is_main_process",
            "launched_by_torchrun",
            "process_group",
            "world_size",
        ),
    },
)
