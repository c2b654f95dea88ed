"""Planning: a data set's fingerprint, and the self-configured plan made from it."""

from medsight.planning.fingerprint import CaseFacts, ChannelStats, Fingerprint, case_facts, fingerprint
from medsight.planning.plan import (
    PLAN_VERSION,
    Augmentation3D,
    CandidateRescoring,
    ChannelNormalization,
    NetworkPlan,
    Plan,
    estimate_memory_gb,
    make_plan,
    read_plan,
    target_spacing,
    topology,
)

__all__ = [
    "PLAN_VERSION",
    "Augmentation3D",
    "CandidateRescoring",
    "CaseFacts",
    "ChannelNormalization",
    "ChannelStats",
    "Fingerprint",
    "NetworkPlan",
    "Plan",
    "case_facts",
    "estimate_memory_gb",
    "fingerprint",
    "make_plan",
    "read_plan",
    "target_spacing",
    "topology",
]
