"""Tasks: the seam every layer above dispatches through (what a network predicts, its loss, data,
predictions and their evaluation), and how predictions combine (views -> exams)."""

from medsight.tasks.base import (
    Task,
    TaskData,
    Training,
    VolumeView,
    register_task,
    registered_tasks,
    task_for,
    task_spec_types,
)
from medsight.tasks.classification import ClassificationSpec, ClassificationTask, corn_class_probabilities, corn_loss
from medsight.tasks.detection import DetectionSpec, DetectionTask
from medsight.tasks.detection2d import Detection2DSpec, Detection2DTask
from medsight.tasks.fusion import attention_pool, fit_attention_temperature, fuse_views
from medsight.tasks.package import PACKAGE_FILE, ModelPackage, Provenance
from medsight.tasks.results import Estimate, Evaluation, Prediction
from medsight.tasks.risk import RiskSpec, RiskTask
from medsight.tasks.segmentation import PlanRequest, SegmentationSpec, SegmentationTask

__all__ = [
    "PACKAGE_FILE",
    "ClassificationSpec",
    "ClassificationTask",
    "Detection2DSpec",
    "Detection2DTask",
    "DetectionSpec",
    "DetectionTask",
    "Estimate",
    "Evaluation",
    "ModelPackage",
    "PlanRequest",
    "Prediction",
    "Provenance",
    "RiskSpec",
    "RiskTask",
    "SegmentationSpec",
    "SegmentationTask",
    "Task",
    "TaskData",
    "Training",
    "VolumeView",
    "attention_pool",
    "corn_class_probabilities",
    "corn_loss",
    "fit_attention_temperature",
    "fuse_views",
    "register_task",
    "registered_tasks",
    "task_for",
    "task_spec_types",
]
