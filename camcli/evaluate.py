"""Metrics: classification (accuracy, per-class precision/recall, confusion) and
weakly supervised localization (pointing game, GT-known / top-1 localization,
MaxBoxAcc and MaxBoxAccV2 of Choe et al., CVPR 2020).

Boxes are [x0, y0, x1, y1] in original-image pixel edges (see :mod:`camcli.cam`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camcli import cam
from camcli.data import class_folders, walk, walk_images
from camcli.defaults import PAPER_THRESHOLD
from camcli.errors import CamcliError, first_line
from camcli.files import read_bytes, read_text

THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.01), 2)  # Choe et al.'s grid
V2_IOUS = (0.3, 0.5, 0.7)
POINTING_TOLERANCE = 15.0

Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------- boxes files

BOXES_LIMIT = 256 << 20  # bytes of a JSON boxes file (COCO's largest official file is under 0.5 GB; most are far smaller)
VOC_LIMIT = 1 << 20  # bytes of one Pascal VOC annotation file
MAX_BOXES_PER_IMAGE = 1000  # scoring is about 0.6 ms per box; COCO's most crowded image has a few hundred


def load_boxes(path: Path, data_root: Path, unmatched: list[str] | None = None) -> dict[str, list[list[float]]]:
    """Ground-truth boxes keyed by image path relative to ``data_root`` (forward slashes).

    Accepts a JSON object ``{"rel/path.jpg": [x0, y0, x1, y1] or [[...], ...]}``, a COCO JSON
    file (``images`` + ``annotations`` with ``bbox = [x, y, w, h]``), or Pascal VOC XML
    (one file, or a folder of them; VOC's 1-based inclusive corners become pixel edges, a 0
    written by a 0-based tool stays 0). Keys of the plain JSON object must be paths relative
    to DATA (``./`` and backslashes allowed), each image named once; VOC and COCO file names
    are matched by relative path, else by a unique file name. Files are read only if regular
    and bounded in size; XML is parsed with defusedxml (no entity expansion, no external
    references).

    Args:
        unmatched: if given, receives the keys (file names) that match no image in DATA.

    Raises:
        CamcliError: unreadable or malformed file, a box that is not four finite, non-negative
            coordinates with x1 > x0 and y1 > y0, a key given twice, or no box matching any
            image in DATA.
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise CamcliError(f"boxes file not found: {path}")
    images = [p.relative_to(data_root).as_posix() for p in walk_images(data_root, skip=())]
    if path.is_dir() or path.suffix.lower() == ".xml":
        raw = _read_voc(path)
    else:
        text = read_text(path, BOXES_LIMIT, "boxes file")
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as exc:
            raise CamcliError(f"boxes file {path}: the key {_short(exc.args[0])} appears twice") from None
        except ValueError as exc:
            raise CamcliError(f"boxes file {path} is not valid JSON: {exc}") from exc
        except RecursionError:
            raise CamcliError(f"boxes file {path} is nested too deeply to hold boxes") from None
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            raw = _read_coco(data, path)
        elif isinstance(data, dict):
            raw = {str(k): _box_list(v, f"{path}: {k}") for k, v in data.items()}
            return _checked(_exact(raw, images, path, unmatched), path, data_root)
        else:
            raise CamcliError(f"{path}: expected a JSON object of path -> box(es), or COCO JSON")
    return _checked(_match(raw, images, unmatched), path, data_root)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _checked(boxes: dict[str, list[list[float]]], path: Path, data_root: Path) -> dict[str, list[list[float]]]:
    crowded = next((rel for rel, listed in boxes.items() if len(listed) > MAX_BOXES_PER_IMAGE), None)
    if crowded is not None:
        raise CamcliError(
            f"{path}: {len(boxes[crowded]):,} boxes for {crowded}, more than the {MAX_BOXES_PER_IMAGE:,} camcli scores per image"
        )
    if not boxes:
        raise CamcliError(f"no box in {path} matches an image under {data_root} (keys are paths relative to DATA)")
    return boxes


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _box_list(value: object, where: str) -> list[list[float]]:
    """One box or a list of boxes, each checked: four finite numbers, non-negative, x1 > x0, y1 > y0."""
    many = isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(b, (list, tuple)) for b in value)
    boxes = []
    for box in value if many else [value]:
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise CamcliError(f"{where}: a box must be [x0, y0, x1, y1], got {_short(box)}")
        try:
            finite = all(math.isfinite(v) for v in box)
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise CamcliError(f"{where}: box {_short(list(box))} has a coordinate that is not a finite number")
        if min(box) < 0:
            raise CamcliError(f"{where}: box {list(box)} has a negative coordinate")
        if not (box[2] > box[0] and box[3] > box[1]):
            raise CamcliError(f"{where}: box {list(box)} has x1 <= x0 or y1 <= y0")
        boxes.append([float(v) for v in box])
    return boxes


def _read_coco(data: dict, path: Path) -> dict[str, list[list[float]]]:
    images, annotations = data["images"], data["annotations"]
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise CamcliError(f"{path}: COCO 'images' and 'annotations' must be lists")
    names: dict[object, str] = {}
    for k, img in enumerate(images):
        if not (isinstance(img, dict) and isinstance(img.get("id"), (int, str)) and isinstance(img.get("file_name"), str)):
            raise CamcliError(f"{path}: COCO image entry {k} needs an id and a file_name, got {_short(img)}")
        if img["id"] in names:
            raise CamcliError(f"{path}: COCO image id {_short(img['id'])} is listed twice")
        names[img["id"]] = img["file_name"]
    out: dict[str, list[list[float]]] = {}
    for k, ann in enumerate(annotations):
        where = f"{path}: annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
        if not isinstance(ann, dict) or "bbox" not in ann:
            raise CamcliError(f"{where} has no bbox")
        image_id = ann.get("image_id")
        if not isinstance(image_id, (int, str)) or image_id not in names:
            raise CamcliError(f"{where} refers to image_id {_short(image_id)}, which 'images' does not list")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise CamcliError(f"{where}: bbox must be [x, y, width, height], got {_short(bbox)}")
        x, y, w, h = bbox
        try:
            corners = [float(x), float(y), float(x) + float(w), float(y) + float(h)]
        except OverflowError:  # an integer too large for a float
            raise CamcliError(f"{where}: bbox {_short(bbox)} has a coordinate that is not a finite number") from None
        out.setdefault(names[image_id], []).extend(_box_list(corners, where))
    return out


def _read_voc(path: Path) -> dict[str, list[list[float]]]:
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    if path.is_dir():
        files = sorted(Path(root) / name for root, _, names in walk(path) for name in names if name.lower().endswith(".xml"))
        if not files:
            raise CamcliError(f"the boxes folder {path} holds no Pascal VOC .xml files (give a JSON or COCO file itself)")
    else:
        files = [path]
    out: dict[str, list[list[float]]] = {}
    for xml in files:
        try:
            root = fromstring(read_bytes(xml, VOC_LIMIT, "VOC annotation"))
        except (ParseError, DefusedXmlException, ValueError) as exc:
            why = first_line(exc)
            raise CamcliError(f"{xml} is not a Pascal VOC annotation: {why}") from exc
        name = root.findtext("filename")
        if not name:
            raise CamcliError(f"{xml} is not a Pascal VOC annotation: it has no <filename>")
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            try:
                x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                raise CamcliError(f"{xml}: an <object> needs a <bndbox> with numeric xmin, ymin, xmax and ymax") from None
            # 1-based inclusive corners to pixel edges; a 0 from a 0-based tool stays 0 (a negative one is refused)
            out.setdefault(name, []).extend(_box_list([x0 - 1 if x0 >= 1 else x0, y0 - 1 if y0 >= 1 else y0, x1, y1], str(xml)))
    return out


def _normal_key(key: str) -> str:
    key = key.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def _exact(raw: dict[str, list[list[float]]], images: list[str], path: Path,
           unmatched: list[str] | None) -> dict[str, list[list[float]]]:
    """Plain JSON: each key is an image's path relative to DATA, and names one image once."""
    known = set(images)
    out: dict[str, list[list[float]]] = {}
    first: dict[str, str] = {}
    for key, boxes in raw.items():
        rel = _normal_key(key)
        if rel not in known:
            if unmatched is not None:
                unmatched.append(key)
            continue
        if rel in first:
            raise CamcliError(f"boxes file {path}: the keys {_short(first[rel])} and {_short(key)} name the same image")
        first[rel] = key
        out[rel] = boxes
    return out


def _match(raw: dict[str, list[list[float]]], images: list[str], unmatched: list[str] | None) -> dict[str, list[list[float]]]:
    known = set(images)
    by_name: dict[str, list[str]] = {}
    for rel in images:
        by_name.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)
    out: dict[str, list[list[float]]] = {}
    for key, boxes in raw.items():
        rel = _normal_key(key)
        candidates = [rel] if rel in known else by_name.get(rel.rsplit("/", 1)[-1], [])
        if len(candidates) == 1:
            out.setdefault(candidates[0], []).extend(boxes)
        elif unmatched is not None:
            unmatched.append(key)
    return out


# ---------------------------------------------------------------- metrics

@dataclass
class LocalizationTally:
    """Running counts of the localization metrics over images with boxes."""

    threshold: float = PAPER_THRESHOLD
    images: int = 0
    pointing: int = 0
    gt_known: int = 0
    top1: int = 0
    v1: np.ndarray = field(default_factory=lambda: np.zeros(len(THRESHOLDS)))
    v2: np.ndarray = field(default_factory=lambda: np.zeros((len(V2_IOUS), len(THRESHOLDS))))

    def add(self, cam_norm: np.ndarray, gt_boxes: Sequence[Sequence[float]], correct: bool) -> None:
        """Count one image: its ground-truth class's normalized map at image resolution."""
        self.images += 1
        peak = cam.map_peak(cam_norm)
        self.pointing += any(cam.point_hits_box(peak, b, POINTING_TOLERANCE) for b in gt_boxes)
        box = cam.largest_component_box(cam_norm, self.threshold)
        hit = box is not None and max(cam.box_iou(box, b) for b in gt_boxes) >= 0.5
        self.gt_known += hit
        self.top1 += hit and correct
        for t, threshold in enumerate(THRESHOLDS):
            regions = cam.component_boxes(cam_norm, threshold)
            if not regions:
                continue
            self.v1[t] += max(cam.box_iou(regions[0][1], b) for b in gt_boxes) >= 0.5
            best = max(cam.box_iou(r, b) for _, r in regions for b in gt_boxes)
            self.v2[:, t] += [best >= iou for iou in V2_IOUS]

    def merge(self, other: LocalizationTally) -> None:
        """Add another tally's counts (of other images, same threshold)."""
        self.images += other.images
        self.pointing += other.pointing
        self.gt_known += other.gt_known
        self.top1 += other.top1
        self.v1 = self.v1 + other.v1
        self.v2 = self.v2 + other.v2

    def result(self) -> dict:
        n = max(self.images, 1)
        curve = self.v1 / n
        best = int(np.argmax(curve))
        return {
            "num_images_with_boxes": self.images,
            "threshold": self.threshold,
            "pointing_game": self.pointing / n,
            "gt_known_loc": self.gt_known / n,
            "top1_loc": self.top1 / n,
            "max_box_acc": float(curve[best]),
            "best_threshold": float(THRESHOLDS[best]),
            "max_box_acc_v2": float(np.mean((self.v2 / n).max(axis=1))),
            "max_box_acc_v2_per_iou": {str(iou): float(v) for iou, v in zip(V2_IOUS, (self.v2 / n).max(axis=1))},
            "box_acc_curve": {
                "thresholds": [float(t) for t in THRESHOLDS],
                "iou_0.5_largest_box": [float(v) for v in curve],
                **{f"iou_{iou}_all_boxes": [float(v) for v in self.v2[i] / n] for i, iou in enumerate(V2_IOUS)},
            },
        }


def classification_metrics(true: Sequence[int], pred: Sequence[int], class_names: list[str]) -> dict:
    """Accuracy, per-class precision / recall / support, and the confusion matrix (rows: true).
    A class with no image has no recall: NaN (``null`` in JSON; it fails every requirement); a
    class never predicted has precision 0."""
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(true, pred):
        confusion[t, p] += 1
    per_class = {}
    for i, name in enumerate(class_names):
        predicted, actual = confusion[:, i].sum(), confusion[i].sum()
        per_class[name] = {
            "precision": float(confusion[i, i] / predicted) if predicted else 0.0,
            "recall": float(confusion[i, i] / actual) if actual else float("nan"),  # no image of the class: no recall
            "support": int(actual),
        }
    return {
        "num_images": int(confusion.sum()),
        "accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
        "per_class": per_class,
        "confusion": {"labels": list(class_names), "matrix": confusion.tolist()},
    }


def labeled_images(root: Path, class_names: list[str], exclude: Sequence[str] = ()) -> list[tuple[Path, int]]:
    """``root/<class>/*`` images with their index in the model's classes."""
    root = Path(root)
    if not root.is_dir():
        raise CamcliError(f"dataset folder not found: {root}")
    splits = [s for s in ("val", "test", "train") if (root / s).is_dir() and s not in class_names]
    if splits:
        raise CamcliError(f"{root} holds the splits {', '.join(splits)}: pass one of them, e.g. {root / splits[0]}")
    samples, _ = class_folders(root, exclude, known=class_names)
    if not samples:
        raise CamcliError(f"no images found under {root}")
    return samples


def check_inside(boxes: list[list[float]], shape: tuple[int, int], rel: str) -> None:
    """A ground-truth box must lie within its image (pixel edges: x1 <= width, y1 <= height); up
    to 1 px past the edge is clipped."""
    height, width = shape
    for box in boxes:
        if box[2] > width + 1 or box[3] > height + 1 or box[0] >= width or box[1] >= height:
            raise CamcliError(f"`boxes`: box {box} for {rel} lies outside the {width}x{height} image (more than 1 px past its edge)")
        box[2], box[3] = min(box[2], width), min(box[3], height)  # rounding of float annotations at the edge


def choose_calibration(by_size: dict[int, dict]) -> tuple[int, dict]:
    """The map size (and its localization result) with the highest MaxBoxAcc; a tie goes to the
    smaller size (the cheaper maps)."""
    if not by_size:
        raise CamcliError("`calibrate` needs `boxes`: the threshold is chosen by box accuracy")
    size = min(by_size, key=lambda s: (-by_size[s]["max_box_acc"], s))
    return size, by_size[size]


def calibrated(checkpoint: dict, by_size: dict[int, dict], data: Path) -> dict:
    """A copy of ``checkpoint`` that records the map size and the box threshold with the best
    box accuracy (``cam_size`` and ``cam_threshold``, which every command that draws maps or
    boxes from it uses unless told otherwise) and where they came from.

    Args:
        by_size: each tried map size's localization result (:meth:`LocalizationTally.result`).
    """
    size, result = choose_calibration(by_size)
    out = dict(checkpoint)
    out["cam_threshold"] = float(result["best_threshold"])
    out["cam_size"] = int(size)
    out["calibration"] = {
        "data": str(data),
        "num_images": int(result["num_images_with_boxes"]),
        "cam_size": int(size),
        "max_box_acc": float(result["max_box_acc"]),
        "max_box_acc_v2": float(result["max_box_acc_v2"]),
        "max_box_acc_by_cam_size": {str(s): float(r["max_box_acc"]) for s, r in sorted(by_size.items())},
    }
    return out
