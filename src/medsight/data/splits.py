"""Patient-level, stratified, reproducible splits that honour a data set's official split."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medsight.core.errors import ConfigError, InputError
from medsight.data.manifest import Manifest

__all__ = ["assign_splits", "patient_strata"]

log = logging.getLogger(__name__)


def patient_strata(table: pd.DataFrame, by: str, column: str | None) -> pd.Series:
    """One stratum per row, shared by all rows of a group.

    A group's stratum is the largest value of ``column`` over its rows (numeric columns:
    e.g. the worse eye's DR grade, any positive finding), or its most common value (text
    columns). Missing values form their own stratum.
    """
    if column is None:
        return pd.Series("all", index=table.index)
    if column not in table.columns:
        raise ConfigError(f"cannot stratify by {column!r}: no such column; columns: {list(table.columns)}")
    values = table[column]
    if pd.api.types.is_numeric_dtype(values):
        per_group = values.fillna(-np.inf).groupby(table[by]).max()
    else:
        per_group = values.fillna("(missing)").astype(str).groupby(table[by]).agg(lambda v: v.value_counts().index[0])
    return table[by].map(per_group).astype(str)


def _pool_rare(strata: pd.Series, groups: pd.Series, n_splits: int) -> pd.Series:
    """Pool strata with fewer groups than splits (they cannot be spread over every split)."""
    per_stratum = groups.groupby(strata).nunique()
    rare = set(per_stratum.index[per_stratum < n_splits])
    if not rare:
        return strata
    log.info("pooling %d stratum/strata with fewer than %d groups", len(rare), n_splits)
    pooled = strata.where(~strata.isin(rare), "(rare)")
    if groups.groupby(pooled).nunique().max() < n_splits:
        return pd.Series("all", index=strata.index)
    return pooled


def _hold_out(table: pd.DataFrame, by: str, strata: pd.Series, fraction: float, seed: int) -> pd.Series:
    """Boolean mask of the rows of ``round(fraction * groups)`` groups, drawn stratum by stratum.

    The number of groups held out is exact (any fraction, not only 1/k); each stratum gives
    its share by largest remainders, so the held-out part keeps the strata's proportions
    within one group per stratum.
    """
    per_group = strata.groupby(table[by]).first()  # one stratum per group (patient_strata's promise)
    n_groups = len(per_group)
    wanted = round(fraction * n_groups)
    if wanted < 1 or wanted >= n_groups:
        raise InputError(
            f"only {n_groups} distinct {by} value(s): too few to hold out {fraction:.0%} of them "
            f"({fraction * n_groups:.1f} {by} values); use fewer folds or other fractions, or add data"
        )
    rng = np.random.default_rng(seed)
    sizes = per_group.value_counts().sort_index()
    quotas = sizes * wanted / n_groups
    taken = np.floor(quotas).astype(int)
    remainders = (quotas - taken).to_numpy() + rng.random(len(quotas)) * 1e-9  # ties broken by the seed
    for position in np.argsort(-remainders, kind="stable")[: wanted - int(taken.sum())]:
        taken.iloc[position] += 1
    chosen: list[object] = []
    for stratum, count in taken.items():
        members = per_group.index[per_group.to_numpy() == stratum].to_numpy()
        chosen.extend(members[rng.permutation(len(members))[:count]].tolist())
    return table[by].isin(chosen)


def assign_splits(
    manifest: Manifest,
    *,
    by: str = "patient_id",
    stratify: str | None = None,
    folds: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    respect_official: bool = True,
) -> Manifest:
    """Assign ``split`` (train/val/test), and ``fold`` when ``folds`` is given, by group.

    No value of ``by`` ever appears in two splits (or two folds). When the manifest already
    marks an official test set (``split == "test"``), it is kept and nothing else is drawn
    into test; official folds (a ``fold`` column, e.g. LUNA16 subsets) are kept when
    ``folds`` is not given.

    Args:
        manifest: Cases to split.
        by: Grouping column (patient id; for VinDr-Mammo the study).
        stratify: Column whose per-group value should be balanced across splits.
        folds: K for K-fold cross-validation of the non-test cases (``fold`` 0..K-1,
            ``split`` train); None for a single train/val split.
        val_fraction: Share of non-test groups for validation (hold-out mode).
        test_fraction: Share of groups held out as test when there is no official test.
        seed: Makes the split reproducible.
        respect_official: Keep an official test split/folds; False re-splits everything.

    Returns:
        A new Manifest; its ``info["split"]`` records the settings.
    """
    table = manifest.table.copy()
    if by not in table.columns:
        raise ConfigError(f"cannot split by {by!r}: no such column; columns: {list(table.columns)}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if folds is not None and folds < 2:
        raise ConfigError(f"folds must be at least 2, got {folds}")

    official_test = (table["split"] == "test") if respect_official else pd.Series(False, index=table.index)
    leaked = set(table.loc[official_test, by]) & set(table.loc[~official_test, by])
    if leaked:
        raise InputError(
            f"the official test split shares {len(leaked)} {by} value(s) with the rest "
            f"(e.g. {sorted(leaked)[:3]}); pass respect_official=False (--ignore-official) to re-split"
        )
    strata = patient_strata(table, by, stratify)
    keep_folds = respect_official and folds is None and "fold" in table.columns and table["fold"].notna().all()
    if keep_folds:
        log.info("keeping the data set's official folds (%d); no validation or test is drawn", table["fold"].nunique())
    test = official_test.copy()
    if not official_test.any() and test_fraction > 0 and not keep_folds:
        test = _hold_out(table, by, strata, test_fraction, seed)
    rest = table.index[~test]
    table["split"] = np.where(test, "test", "train")

    if folds is not None:
        table["fold"] = -1
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        sub = table.loc[rest]
        if sub[by].nunique() < folds:
            raise InputError(f"only {sub[by].nunique()} {by} value(s) outside test: too few for {folds} folds")
        fold_strata = _pool_rare(strata.loc[rest], sub[by], folds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for k, (_, idx) in enumerate(splitter.split(np.zeros(len(sub)), fold_strata, sub[by])):
                table.loc[sub.index[idx], "fold"] = k
    elif not keep_folds and val_fraction > 0:
        val = _hold_out(table.loc[rest], by, strata.loc[rest], val_fraction, seed + 1)
        table.loc[val.index[val], "split"] = "val"

    info = dict(manifest.info)
    info["split"] = {
        "by": by,
        "stratify": stratify,
        "folds": folds,
        "val_fraction": val_fraction,
        "test_fraction": 0.0 if official_test.any() or keep_folds else test_fraction,
        "official_folds": bool(keep_folds),
        "official_test": bool(official_test.any()),
        "seed": seed,
    }
    counts = table["split"].value_counts().to_dict()
    log.info("split %d cases by %s: %s", len(table), by, counts)
    return Manifest(table, manifest.root, info)
