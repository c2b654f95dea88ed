"""Built-in data set adapters. Importing this package registers all of them (explicitly listed)."""

from medsight.data.adapters import (  # noqa: F401
    acdc,
    aptos2019,
    brats2021,
    brats2023,
    cbis_ddsm,
    chexpert,
    eyepacs2015,
    generic,
    idrid,
    lidc_idri,
    luna16,
    medmnist,
    messidor2,
    mnms,
    msd,
    nih_cxr14,
    rsna_pneumonia,
    vindr_mammo,
)
