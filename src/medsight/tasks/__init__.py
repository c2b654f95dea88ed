"""Tasks: what a network predicts, its loss, and how predictions combine (views -> exams)."""

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
