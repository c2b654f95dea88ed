"""Explanations: attribution maps of any task's network, with checks of their faithfulness."""

from medsight.explain.attribution import METHODS, ExplainedNetwork, attribute, feature_layer, randomised
from medsight.explain.explainer import (
    ExplainResult,
    explain,
    explain_files,
    explain_run,
    explain_split,
    write_explanations,
)
from medsight.explain.faithfulness import box_energy, deletion_insertion, rank_correlation
from medsight.explain.gallery import GalleryMaps
from medsight.explain.heatmap import HeatMap, explainer_of, image_heat_map

__all__ = [
    "METHODS",
    "ExplainResult",
    "ExplainedNetwork",
    "GalleryMaps",
    "HeatMap",
    "attribute",
    "box_energy",
    "deletion_insertion",
    "explain",
    "explain_files",
    "explain_run",
    "explain_split",
    "explainer_of",
    "feature_layer",
    "image_heat_map",
    "randomised",
    "rank_correlation",
    "write_explanations",
]
