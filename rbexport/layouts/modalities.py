"""Channel names (SPEC 6 "Modality"): the DICOM Modality of each channel's series, or the option.

nnU-Net normalises a channel named CT differently from every other one, so a channel whose
modality nobody states fails its task rather than get a guessed name. When the series
states a Modality, it wins over the `modality` option: the option fills in for sources
that carry none (NIfTI, pictures), and a disagreement is reported as a warning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from ..errors import TaskDataError
from ..images.volume import ImageVolume

_LISTED_AT_MOST = 10


def channel_modalities(
    volumes: Sequence[ImageVolume], channels: Sequence[str], modality_option: str | None
) -> tuple[list[str], list[str]]:
    """Each channel's modality, and warnings where the series and the option disagree.

    `channels` names the volumes in messages (the channel names, or the series name).
    Raises TaskDataError when neither the series nor the option gives a channel's modality.
    """
    option = (modality_option or "").strip() or None
    modalities, warnings = [], []
    for volume, channel in zip(volumes, channels, strict=True):
        stated = (volume.modality or "").strip() or None
        if stated is None and option is None:
            raise TaskDataError(
                f"no modality known for channel {channel}: give the modality option"
                " (nnU-Net normalises CT differently from other images)"
            )
        if stated is not None and option is not None and stated.upper() != option.upper():
            warnings.append(
                f"channel {channel}: the series' Modality is {stated}, the modality option {option}; kept {stated}"
            )
        modalities.append(stated or option or "")  # one of them is there (checked above)
    return modalities, warnings


def agreed_modalities(per_case: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """The dataset's channel modalities from every case's, and a warning per channel the cases disagree on.

    A channel's modality is the one most cases have (ties: the alphabetically first); the
    warning lists the cases that differ. Raises ValueError when cases have different
    channel counts. No cases: no channels.
    """
    counts = {len(modalities) for modalities in per_case.values()}
    if len(counts) > 1:
        raise ValueError("agreed_modalities: every case must have the same number of channels")
    agreed, warnings = [], []
    for channel in range(counts.pop() if counts else 0):
        votes = Counter(modalities[channel] for modalities in per_case.values())
        chosen = min(votes, key=lambda modality: (-votes[modality], modality))
        others = sorted(case_id for case_id, modalities in per_case.items() if modalities[channel] != chosen)
        if others:
            shown = ", ".join(others[:_LISTED_AT_MOST])
            more = f" and {len(others) - _LISTED_AT_MOST} more" if len(others) > _LISTED_AT_MOST else ""
            warnings.append(
                f"channel {channel} is {chosen} in dataset.json; cases with another modality: {shown}{more}"
            )
        agreed.append(chosen)
    return agreed, warnings
