"""Labelled slices on disk: one sub-folder per class, and the train/validation split.

``DATA_DIR/COVID/*.png`` and ``DATA_DIR/non-COVID/*.png`` (SARS-CoV-2 CT-scan
dataset), or ``CT_COVID/`` and ``CT_NonCOVID/`` (UCSD COVID-CT). Images are found
recursively inside each class folder by extension (.png, .jpg, .jpeg).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from models.classes import looks_positive, positive_index

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """The data folder cannot be used as it is; the message says why."""


@dataclass(frozen=True)
class LabelledSlices:
    """Image paths with class indices; ``classes`` is the model's output order."""

    root: Path
    paths: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    positive_index: int
    folders: dict[str, str]  # folder name -> class name

    def counts(self) -> dict[str, int]:
        """Slices per folder."""
        counted = Counter(p.relative_to(self.root).parts[0] for p in self.paths)
        return {folder: counted.get(folder, 0) for folder in self.folders}

    def binary_labels(self) -> np.ndarray:
        """1 for the positive class, 0 for every other."""
        return (self.labels == self.positive_index).astype(int)

    def subset(self, indices: Sequence[int]) -> LabelledSlices:
        return LabelledSlices(
            self.root,
            tuple(self.paths[i] for i in indices),
            self.labels[list(indices)],
            self.classes,
            self.positive_index,
            self.folders,
        )


def parse_folder_map(raw: str) -> dict[str, str]:
    """``"CT_COVID=COVID,CT_NonCOVID=NonCOVID"`` (or ``"COVID,non-COVID"``), in output order."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        folder, _, name = part.partition("=")
        mapping[folder.strip()] = (name or folder).strip()
    if len(mapping) < 2 or len(set(mapping.values())) < 2:
        raise DatasetError(f"--classes needs two or more FOLDER=CLASS pairs, got {raw!r}")
    return mapping


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def discover(
    root: Path, folder_map: Optional[dict[str, str]] = None, positive: Optional[str] = None
) -> LabelledSlices:
    """Find the class folders and their images.

    Without ``folder_map`` every sub-folder holding images is a class named after it,
    the positive class first (the folder named like COVID, not non-COVID), the others sorted.

    Raises:
        DatasetError: missing folders, a class without images, or no clear positive class.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    if folder_map is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and _images_in(p))
        folder_map = {name: name for name in found}
        if len(found) < 2:
            raise DatasetError(
                f"{root} needs one sub-folder of images per class (two or more); "
                f"found {found or 'none'}"
            )
    classes = list(dict.fromkeys(folder_map.values()))
    try:
        pos = positive_index(classes, positive)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    if positive is None and folder_map == {n: n for n in folder_map}:
        classes = [classes[pos]] + sorted(c for i, c in enumerate(classes) if i != pos)
        pos = 0
    paths: list[Path] = []
    labels: list[int] = []
    for folder, name in folder_map.items():
        images = _images_in(root / folder) if (root / folder).is_dir() else []
        if not images:
            raise DatasetError(f"{root / folder} holds no PNG or JPEG images")
        paths.extend(images)
        labels.extend([classes.index(name)] * len(images))
    return LabelledSlices(
        root, tuple(paths), np.array(labels, dtype=int), tuple(classes), pos, dict(folder_map)
    )


def folder_map_for_model(root: Path, classes: Sequence[str], positive: str) -> dict[str, str]:
    """Map a data folder's class folders onto a trained model's classes.

    Folders named exactly as the classes map to them; otherwise, for a two-class model,
    the folder named like COVID maps to the positive class and the other to the other.
    """
    folders = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and _images_in(p))
    if folders and all(f in classes for f in folders):
        return {f: f for f in folders}
    negative = [c for c in classes if c != positive]
    if len(classes) == 2 and len(folders) == 2 and sum(map(looks_positive, folders)) == 1:
        return {f: positive if looks_positive(f) else negative[0] for f in folders}
    raise DatasetError(
        f"cannot map the folders {folders} of {root} onto the model's classes "
        f"{list(classes)}: give --classes FOLDER=CLASS,..."
    )


@dataclass(frozen=True)
class Split:
    train: list[int]
    validation: list[int]
    grouped: bool
    groups: int = 0


def group_of(path: Path, root: Path, pattern: re.Pattern) -> str:
    """The patient (or study) a slice belongs to: the regex's first group, else its match."""
    relative = path.relative_to(root).as_posix()
    match = pattern.search(relative)
    if match is None:
        raise DatasetError(f"--group-regex {pattern.pattern!r} does not match {relative}")
    return match.group(1) if match.groups() else match.group(0)


def split(
    data: LabelledSlices, val_split: float = 0.2, seed: int = 42, group_regex: Optional[str] = None
) -> Split:
    """Stratified split with a fixed seed; with ``group_regex`` no group straddles it.

    Raises:
        DatasetError: a bad fraction or regex, or too few slices (or groups) per class.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    if not 0.0 < val_split < 1.0:
        raise DatasetError(f"--val-split must be between 0 and 1, got {val_split}")
    indices = np.arange(len(data.paths))
    if group_regex is None:
        try:
            train, val = train_test_split(
                indices, test_size=val_split, random_state=seed, stratify=data.labels
            )
        except ValueError as exc:
            raise DatasetError(f"cannot split {len(indices)} slices: {exc}") from None
        return Split(sorted(train.tolist()), sorted(val.tolist()), grouped=False)
    try:
        pattern = re.compile(group_regex)
    except re.error as exc:
        raise DatasetError(f"--group-regex {group_regex!r} is not a valid regex: {exc}") from None
    groups = [group_of(p, data.root, pattern) for p in data.paths]
    folds = max(2, round(1 / val_split))
    if len(set(groups)) < folds:
        raise DatasetError(
            f"{len(set(groups))} groups are too few for a {val_split:.0%} validation split by group"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = next(splitter.split(indices, data.labels, groups))
    return Split(
        sorted(train.tolist()), sorted(val.tolist()), grouped=True, groups=len(set(groups))
    )
