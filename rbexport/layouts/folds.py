"""Cross-validation folds (SPEC 6 "Folds") and nnU-Net's splits_final.json.

A case keeps the fold it was given in an earlier run. A new case joins the fold of its
group (cases sharing a group key, such as one patient's scans, never straddle folds);
a new group goes to the fold with the fewest cases, ties to the lowest number. Cases are
taken in source order, so the same source gives the same folds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

FOLDS = 5


def assign_folds(previous: Mapping[str, int], cases: Sequence[tuple[str, str]], folds: int = FOLDS) -> dict[str, int]:
    """The fold of every case in `cases` ((case id, group key), source order), keeping `previous`.

    Cases of `previous` that are not in `cases` are dropped; a previous fold outside
    0..folds-1 is no assignment at all (the case is placed as a new one). A group whose
    kept cases lie in several folds (its key changed) sends new members to the fold of its
    first case in source order. Raises ValueError when a case id repeats.
    """
    case_ids = [case_id for case_id, _ in cases]
    if len(set(case_ids)) != len(case_ids):
        raise ValueError("assign_folds: case ids must be unique")
    fold_of: dict[str, int] = {}
    fold_of_group: dict[str, int] = {}
    sizes = [0] * folds
    for case_id, group in cases:  # first every kept case, so a group's new members find it
        fold = previous.get(case_id)
        if isinstance(fold, int) and not isinstance(fold, bool) and 0 <= fold < folds:
            fold_of[case_id] = fold
            fold_of_group.setdefault(group, fold)
            sizes[fold] += 1
    for case_id, group in cases:
        if case_id in fold_of:
            continue
        if group not in fold_of_group:
            fold_of_group[group] = min(range(folds), key=lambda fold: (sizes[fold], fold))
        fold_of[case_id] = fold_of_group[group]
        sizes[fold_of[case_id]] += 1
    return {case_id: fold_of[case_id] for case_id in case_ids}


def splits(folds: Mapping[str, int], n: int = FOLDS) -> list[dict[str, list[str]]]:
    """nnU-Net's splits_final.json: for fold k, train on every other fold's cases, validate on k's (sorted)."""
    return [
        {
            "train": sorted(case_id for case_id, fold in folds.items() if fold != k),
            "val": sorted(case_id for case_id, fold in folds.items() if fold == k),
        }
        for k in range(n)
    ]
