"""What a naive split would have leaked: test images with a copy (or their patient) in train.

The ETL's split keeps byte-identical images, near duplicates and each patient's
images in one group, so none of them straddles train and test. The leakage
report measures what that is worth on this dataset: the same counts under a
naive split (seeded random permutation cut at the same fractions, ungrouped,
unstratified) next to the counts under the split the ETL made (zero).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leukolab.data.etl.splits import split_fractions


def naive_split(rows: int, fractions: dict[str, float], seed: int) -> np.ndarray:
    """A split name per row: a seeded random permutation cut into consecutive runs of the ``fractions``."""
    bounds = np.round(np.cumsum(list(fractions.values())) * rows).astype(int)
    names = np.repeat(list(fractions), np.diff(bounds, prepend=0))
    split = np.empty(rows, dtype=object)
    split[np.random.default_rng(seed).permutation(rows)] = names
    return split


def leaked_test_images(table: pd.DataFrame, split, near_pairs: list[dict]) -> dict[str, int | None]:
    """Test images with a byte-identical copy (``exact``), a near duplicate of other bytes (``near``) or an image
    of the same patient (``patient``; ``None`` without patient ids) in train, under ``split`` (one per row)."""
    split = pd.Series(np.asarray(split, dtype=object), index=table.index)
    test, train = split == "test", split == "train"
    paths = pd.Index(table["source_path"])
    first, second = (paths.get_indexer([pair[end] for pair in near_pairs]) for end in ("a", "b"))
    in_train, is_test = train.to_numpy(), test.to_numpy()
    near_test = set(second[in_train[first] & is_test[second]]) | set(first[in_train[second] & is_test[first]])
    patients = table["patient_id"]
    return {
        "exact": int(table.loc[test, "content_hash"].isin(table.loc[train, "content_hash"]).sum()),
        "near": len(near_test),
        "patient": int(patients[test].dropna().isin(set(patients[train].dropna())).sum()) if patients.notna().any() else None,
    }


def leakage_report(table: pd.DataFrame, near_pairs: list[dict], params) -> dict:
    """The manifest's ``leakage`` section for the curated ``table`` (``source_path``, ``content_hash``,
    ``patient_id``, ``split``) and its near-duplicate pairs (``{"a", "b"}`` paths), with the split
    fractions and seed of ``params`` (:class:`leukolab.data.etl.job.EtlParams`)."""
    fractions = split_fractions(params.train_fraction, params.val_fraction, params.test_fraction,
                                params.holdouts, params.holdout_fraction)
    naive = naive_split(len(table), fractions, params.seed)
    leaked = {"naive": leaked_test_images(table, naive, near_pairs), "grouped": leaked_test_images(table, table["split"], near_pairs)}
    report = {f"{split}_{kind}": n for split, counts in leaked.items() for kind, n in counts.items()}
    report.update(naive_seed=params.seed, naive_test_images=int((naive == "test").sum()),
                  grouped_test_images=int((table["split"] == "test").sum()))
    return report
