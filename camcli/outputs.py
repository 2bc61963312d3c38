"""Where overlay outputs go: their names (collisions in one folder, ``--maps`` ranks), checked
against the output guard before any work, and which inputs ``skip_existing`` may leave out.

Planning takes the job's ``out_dir`` and ``save_raw`` (any object with those attributes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from camcli.data import ImageInput
from camcli.errors import CamcliError
from camcli.files import OutputGuard, fit_name, real_path
from camcli.video import is_video


def safe_label(label: str) -> str:
    """A class label made safe for a file name: other characters become ``_``; a label with
    nothing left (``.``, ``..``, ``***``) becomes ``class_<8 hex of its hash>``, so two such labels
    never share a name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")
    return safe or "class_" + hashlib.sha256(os.fsencode(label)).hexdigest()[:8]


def output_bases(images: Sequence[ImageInput], options) -> list[tuple[Path, str, str]]:
    """(output folder, output stem, extension) per image.

    Inputs whose stems collide in one output folder (``a.jpg``, ``a.png``) keep their
    extension in the stem (``a_jpg``) so no output overwrites another.
    """
    seen: dict[Path, Path] = {}
    for image in images:
        first = seen.setdefault(real_path(image.path), image.path)
        if first is not image.path:
            raise CamcliError(f"{image.path} is the same file as {first}: give each image once")
    folders = [(options.out_dir / i.relative.parent) if options.out_dir else i.path.parent for i in images]
    stems = Counter((real_path(f), i.path.stem) for f, i in zip(folders, images))
    bases = []
    for folder, image in zip(folders, images):
        stem = image.path.stem
        if stems[(real_path(folder), stem)] > 1:
            stem = f"{stem}_{image.path.suffix.lstrip('.')}"
        bases.append((folder, stem, image.path.suffix))
    return bases


def output_paths(base: tuple[Path, str, str], tags: Sequence[str], save_raw: bool) -> list[Path]:
    """The overlays ``<stem><tag><ext>``, then with ``save_raw`` the maps ``<stem><tag>.npy``
    (a name longer than the file system allows is shortened, see :func:`camcli.files.fit_name`)."""
    folder, stem, ext = base
    names = [f"{stem}{tag}{ext}" for tag in tags] + ([f"{stem}{tag}.npy" for tag in tags] if save_raw else [])
    return [folder / fit_name(name) for name in names]


def rank_tags(class_names: Sequence[str]) -> list[str]:
    """``--maps K`` name tags ``_cam_<rank>_<label>``: unique even when two classes share a label."""
    return [f"_cam_{rank}_{safe_label(name)}" for rank, name in enumerate(class_names, start=1)]


FRAME_INDEX = "index.csv"  # a frame folder's last file: each frame's time, file and top-1 (its presence: the clip is done)
FRAME_NAME = re.compile(r"[0-9]{6,}\.jpg")  # a frame folder's images, named by frame index


def frame_folder(path: Path) -> Path | None:
    """The frame folder a planned output belongs to (``frame_images``), or None."""
    return path.parent if path.name == FRAME_INDEX else None


def frame_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.jpg"


def check_frame_folder(folder: Path, guard: OutputGuard) -> None:
    """A clip's frame folder (``frame_images``): absent or a real folder (never a link, whose
    target the frames would land in), and every frame image already in it camcli's."""
    with contextlib.suppress(FileNotFoundError):
        mode = folder.lstat().st_mode
        if not stat.S_ISDIR(mode):
            raise CamcliError(f"output folder {folder} is {'a link' if stat.S_ISLNK(mode) else 'not a folder'}; camcli writes a "
                              "clip's frames only into a folder of its own")
        for name in sorted(os.listdir(folder)):
            if FRAME_NAME.fullmatch(name):
                guard.check(folder / name)


class FixedNames:
    """Outputs whose names are known before the model runs: ``<stem>_cam<ext>`` for one class
    (top-1 or the one asked for), ``<stem>_cam_<label><ext>`` for several; then the ``.npy`` maps.
    With ``frame_images``, a clip's is its frame folder's ``<stem>_cam/index.csv``."""

    def __init__(self, images: Sequence[ImageInput], labels: Sequence[str], options, guard: OutputGuard):
        tags = ["_cam"] if len(labels) == 1 else [f"_cam_{safe_label(label)}" for label in labels]
        self.plans = [output_paths(base, tags, options.save_raw) for base in output_bases(images, options)]
        if getattr(options, "frame_images", False):
            self.plans = [[paths[0].with_name(fit_name(paths[0].stem)) / FRAME_INDEX] if is_video(image.path) else paths
                          for paths, image in zip(self.plans, images)]
        self.guard = guard

    def check_all(self) -> None:
        planned = [p for paths in self.plans for p in paths]
        duplicates = [p for p, n in Counter(real_path(p) for p in planned).items() if n > 1]
        if duplicates:
            if len(self.plans) == 1 or len({real_path(paths[0]) for paths in self.plans}) == len(self.plans):
                raise CamcliError(f"two classes would write the same output {duplicates[0]} (their labels differ only in "
                                  "characters a file name cannot hold); map them in separate runs")
            raise CamcliError(f"two inputs would write the same output {duplicates[0]}; use `out_dir` or rename one")
        for path in planned:
            if frame_folder(path) is not None:
                check_frame_folder(frame_folder(path), self.guard)
            self.guard.check(path)

    def paths(self, k: int, class_names: Sequence[str]) -> list[Path]:
        return self.plans[k]

    def finished(self, k: int) -> bool:
        return all(self.guard.is_ours(p) for p in self.plans[k])

    def subset(self, ks: Sequence[int], guard: OutputGuard) -> FixedNames:
        """The plans of images ``ks`` only (in that order), checking with ``guard`` (for a worker)."""
        part = object.__new__(FixedNames)
        part.plans, part.guard = [self.plans[k] for k in ks], guard
        return part


class RankedNames:
    """``--maps K``: ``<stem>_cam_<rank>_<label><ext>`` for each image's top-K classes, names
    known only once the model has ranked the image. Planning checks every existing
    ``<stem>_cam_*`` file instead; each image's names are checked again before they are written."""

    def __init__(self, images: Sequence[ImageInput], k: int, options, guard: OutputGuard):
        self.bases = output_bases(images, options)
        self.k, self.save_raw, self.guard = k, options.save_raw, guard
        self.listings: dict[Path, list[str]] = {}

    def _listing(self, folder: Path) -> list[str]:
        if folder not in self.listings:
            self.listings[folder] = sorted(os.listdir(folder)) if folder.is_dir() else []
        return self.listings[folder]

    def check_all(self) -> None:
        same = [b for b, n in Counter((real_path(f), stem, ext) for f, stem, ext in self.bases).items() if n > 1]
        if same:
            raise CamcliError(f"two inputs would write the same outputs {same[0][0] / same[0][1]}_cam_*; use `out_dir` or rename one")
        for folder, stem, _ in self.bases:
            for name in self._listing(folder):
                if name.startswith(f"{stem}_cam_"):
                    self.guard.check(folder / name)
            for path in self.guard.reserved:
                if path.parent == real_path(folder) and path.name.startswith(f"{stem}_cam_"):
                    raise CamcliError(f"the results file (`output`) {path} has the name of a `maps` output; choose another one")

    def paths(self, k: int, class_names: Sequence[str]) -> list[Path]:
        paths = output_paths(self.bases[k], rank_tags(class_names), self.save_raw)
        for path in paths:
            self.guard.check(path)
        return paths

    def subset(self, ks: Sequence[int], guard: OutputGuard) -> RankedNames:
        """The plans of images ``ks`` only (in that order), checking with ``guard`` (for a worker)."""
        part = object.__new__(RankedNames)
        part.bases, part.k, part.save_raw, part.guard, part.listings = [self.bases[k] for k in ks], self.k, self.save_raw, guard, {}
        return part

    def finished(self, k: int) -> bool:
        folder, stem, ext = self.bases[k]
        names = self._listing(folder)
        return all(
            any(n.startswith(f"{stem}_cam_{rank}_") and n.endswith(suffix) and self.guard.is_ours(folder / n) for n in names)
            for rank in range(1, self.k + 1) for suffix in ([ext, ".npy"] if self.save_raw else [ext])
        )
