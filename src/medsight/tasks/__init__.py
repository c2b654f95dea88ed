"""Tasks: what a network predicts, its loss, and how predictions combine (views -> exams).

Public names are imported on first use (see :mod:`medsight.core.lazy`).
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
    from medsight.tasks.classification import ClassificationTask, corn_class_probabilities, corn_loss
    from medsight.tasks.fusion import attention_pool, fit_attention_temperature, fuse_views


__all__ = [
    "ClassificationTask",
    "attention_pool",
    "corn_class_probabilities",
    "corn_loss",
    "fit_attention_temperature",
    "fuse_views",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.tasks.classification": ("ClassificationTask", "corn_class_probabilities", "corn_loss"),
        "medsight.tasks.fusion": ("attention_pool", "fit_attention_temperature", "fuse_views"),
    },
)
