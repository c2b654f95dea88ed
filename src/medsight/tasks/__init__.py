"""Tasks: the seam every layer above dispatches through (what a network predicts, its loss, data,
predictions and their evaluation), and how predictions combine (views -> exams).

Public names are imported on first use (see :mod:`medsight.core.lazy`): the NumPy-only parts of a
task (:mod:`medsight.tasks.labelmaps`) serve the torch-free runtime without importing PyTorch. The
registry (:func:`registered_tasks`, :func:`task_for`) imports the built-in tasks when first asked.
"""

from typing import TYPE_CHECKING

from medsight.core.lazy import lazy_exports

if TYPE_CHECKING:
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
    from medsight.tasks.classification import (
        ClassificationSpec,
        ClassificationTask,
        corn_class_probabilities,
        corn_loss,
    )
    from medsight.tasks.detection import DetectionSpec, DetectionTask
    from medsight.tasks.detection2d import Detection2DSpec, Detection2DTask
    from medsight.tasks.fusion import attention_pool, fit_attention_temperature, fuse_views
    from medsight.tasks.labelmaps import CardiacSpec, SegmentationSpec
    from medsight.tasks.package import PACKAGE_FILE, ModelPackage, Provenance
    from medsight.tasks.results import Estimate, Evaluation, Prediction
    from medsight.tasks.risk import RiskSpec, RiskTask
    from medsight.tasks.segmentation import PlanRequest, SegmentationTask

__all__ = [
    "PACKAGE_FILE",
    "CardiacSpec",
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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "medsight.tasks.base": (
            "Task",
            "TaskData",
            "Training",
            "VolumeView",
            "register_task",
            "registered_tasks",
            "task_for",
            "task_spec_types",
        ),
        "medsight.tasks.classification": (
            "ClassificationSpec",
            "ClassificationTask",
            "corn_class_probabilities",
            "corn_loss",
        ),
        "medsight.tasks.detection": ("DetectionSpec", "DetectionTask"),
        "medsight.tasks.detection2d": ("Detection2DSpec", "Detection2DTask"),
        "medsight.tasks.fusion": ("attention_pool", "fit_attention_temperature", "fuse_views"),
        "medsight.tasks.labelmaps": ("CardiacSpec", "SegmentationSpec"),
        "medsight.tasks.package": ("PACKAGE_FILE", "ModelPackage", "Provenance"),
        "medsight.tasks.results": ("Estimate", "Evaluation", "Prediction"),
        "medsight.tasks.risk": ("RiskSpec", "RiskTask"),
        "medsight.tasks.segmentation": ("PlanRequest", "SegmentationTask"),
    },
)
