"""Tasks: what a network predicts, its loss, and how predictions combine (views -> exams)."""

from medsight.tasks.classification import ClassificationTask, corn_class_probabilities, corn_loss
from medsight.tasks.fusion import fuse_views

__all__ = ["ClassificationTask", "corn_class_probabilities", "corn_loss", "fuse_views"]
