"""Batched inference shared by train, predict and overlay.

A :class:`CamModel` is a frozen backbone (image -> (N, C, h, w) features) and a linear
head (K x C). One forward pass gives the logits and the features the maps are made of.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from camcli import cam
from camcli.backbones import DEFAULT_ARCH, build_backbone, restore_backbone
from camcli.checkpoint import load_checkpoint
from camcli.data import ImageDataset, Preprocess, collate
from camcli.errors import CamcliError

Image = Path | str | np.ndarray


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise CamcliError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise CamcliError("--device cuda: no CUDA device is available (use --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CamcliError("--device mps: MPS is not available (use --device cpu)")
    return torch.device(name)


@dataclass
class Batch:
    """One batch of results.

    Attributes:
        positions: index of each image in the input sequence.
        logits: (B, K) on the CPU.
        features: (B, C, h, w) on the model's device.
        originals: the decoded RGB images when asked for, else Nones.
    """

    positions: list[int]
    logits: torch.Tensor
    features: torch.Tensor
    originals: list[np.ndarray | None]


def image_batches(
    images: Sequence[Image], preprocess: Preprocess, batch_size: int, workers: int, device: torch.device,
    keep_images: bool = False,
) -> Iterator[tuple[torch.Tensor, list[int], list[np.ndarray | None]]]:
    """Decode and preprocess images in ``workers`` processes; yield (tensor on device, positions, originals)."""
    if batch_size < 1:
        raise CamcliError(f"--batch-size must be at least 1, got {batch_size}")
    if workers < 0:
        raise CamcliError(f"--workers must be 0 or more, got {workers}")
    loader = DataLoader(
        ImageDataset(images, preprocess, keep_images), batch_size=batch_size, shuffle=False,
        num_workers=min(workers, len(images)), collate_fn=collate, pin_memory=device.type == "cuda",
    )
    for tensor, positions, originals in loader:
        yield tensor.to(device, non_blocking=True), positions, originals


class CamModel:
    """A classifier whose every prediction comes with its class activation maps.

    Args:
        arch: backbone name.
        features: module mapping (N, 3, S, S) to (N, C, h, w).
        head: GAP + linear classifier, weight (K, C) and bias (K,).
        class_names: K names in class-index order.
        preprocess: the preprocessing the head was trained with.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """

    def __init__(
        self, arch: str, features: nn.Module, head: nn.Linear, class_names: list[str],
        preprocess: Preprocess, device: str = "auto", checkpoint: dict | None = None,
    ):
        self.arch = arch
        self.device = resolve_device(device)
        self.features = features.eval().requires_grad_(False).to(self.device)
        self.weight = head.weight.detach().float().to(self.device)
        self.bias = head.bias.detach().float().to(self.device)
        self.class_names = list(class_names)
        self.preprocess = preprocess
        self.checkpoint = checkpoint

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) preprocessed images -> ((N, K) logits, (N, C, h, w) features)."""
        with torch.inference_mode():
            feats = self.features(x.to(self.device)).float()
            return cam.pooled_logits(feats, self.weight, self.bias), feats

    def batches(
        self, images: Sequence[Image], batch_size: int = 32, workers: int = 0, keep_images: bool = False
    ) -> Iterator[Batch]:
        """Run the model over images (paths or RGB uint8 arrays), one batch at a time."""
        for x, positions, originals in image_batches(
            images, self.preprocess, batch_size, workers, self.device, keep_images
        ):
            logits, feats = self.forward(x)
            yield Batch(positions, logits.cpu(), feats, originals)

    def class_index(self, name: str) -> int:
        """Index of a class name; raises CamcliError listing close names when absent."""
        if name in self.class_names:
            return self.class_names.index(name)
        import difflib

        close = difflib.get_close_matches(name, self.class_names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CamcliError(f"unknown class {name!r}{hint}")

    def rank(self, logits: torch.Tensor, top_k: int) -> list[list[dict]]:
        """Softmax ranking: for each row of (N, K) logits the top-k {label, index, prob}."""
        if top_k < 1:
            raise CamcliError(f"--top-k must be at least 1, got {top_k}")
        probs = torch.softmax(logits.float(), dim=1)
        values, indices = probs.topk(min(top_k, self.num_classes), dim=1)
        return [
            [{"label": self.class_names[i], "index": int(i), "prob": float(p)} for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)
        ]

    def predict(self, images: Sequence[Image], top_k: int = 5, batch_size: int = 32, workers: int = 0) -> list[dict]:
        """Rank classes for each image.

        Returns:
            one row per image, in order: ``{"path": str | None, "predictions": [{"label", "index", "prob"}, ...]}``
            sorted by prob descending; ``path`` is None for array inputs.
        """
        rows: list[dict] = []
        for batch in self.batches(images, batch_size, workers):
            for pos, preds in zip(batch.positions, self.rank(batch.logits, top_k)):
                item = images[pos]
                rows.append({"path": None if isinstance(item, np.ndarray) else str(item), "predictions": preds})
        return rows

    def maps(self, images: Sequence[Image], classes: Sequence[int] | None = None, batch_size: int = 32) -> np.ndarray:
        """Raw class activation maps (before normalization) at feature resolution.

        Args:
            images: paths or RGB uint8 (H, W, 3) arrays.
            classes: class indices to map (the same for every image); None maps all K.

        Returns:
            float32 array (N, K or len(classes), h, w).
        """
        chosen = None
        if classes is not None:
            bad = [c for c in classes if not 0 <= int(c) < self.num_classes]
            if bad:
                raise CamcliError(f"class index {bad[0]} out of range 0..{self.num_classes - 1}")
            chosen = torch.as_tensor(list(classes), dtype=torch.long, device=self.device)
        out = []
        for batch in self.batches(images, batch_size):
            idx = None if chosen is None else chosen.expand(len(batch.positions), -1)
            out.append(cam.class_maps(batch.features, self.weight, idx).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def model_from_checkpoint(ckpt: dict, device: str = "auto") -> CamModel:
    """Build a CamModel from a loaded checkpoint dict (see checkpoint.py)."""
    backbone = restore_backbone(ckpt["arch"], ckpt["backbone"])
    weight, bias = ckpt["head"]["weight"], ckpt["head"]["bias"]
    if weight.shape[1] != backbone.num_features:
        raise CamcliError(
            f"checkpoint head expects {weight.shape[1]} features but {ckpt['arch']} gives {backbone.num_features}"
        )
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": bias})
    preprocess = Preprocess.from_dict(ckpt["preprocess"])
    return CamModel(ckpt["arch"], backbone.features, head, ckpt["class_names"], preprocess, device, ckpt)


def load(checkpoint_or_arch: str | Path = DEFAULT_ARCH, device: str = "auto", weights: str = "imagenet", img_size: int = 224) -> CamModel:
    """Load a trained checkpoint, or a backbone with its own pretrained GAP + linear head.

    Args:
        checkpoint_or_arch: a ``.pt`` checkpoint path, or an arch name (``efficientnet_lite0``,
            ``resnet50``, ``timm:NAME``) whose pretrained ImageNet head is used.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        weights: for an arch: ``imagenet`` or a state dict path.
        img_size: for an arch: the square input size.

    Raises:
        CamcliError: unreadable checkpoint, or an arch without a GAP + linear head.
    """
    source = Path(checkpoint_or_arch)
    if source.suffix in (".pt", ".pth") or source.is_file():
        return model_from_checkpoint(load_checkpoint(source), device)
    arch = str(checkpoint_or_arch)
    if weights == "none":
        raise CamcliError("a randomly initialized head ranks nothing: use --weights imagenet, or train a head with `camcli train`")
    backbone = build_backbone(arch, weights)
    if backbone.head is None:
        raise CamcliError(f"{backbone.head_problem}, so it has no class maps of its own: train a head with `camcli train DATA --arch {arch}` and pass --checkpoint")
    if backbone.class_names is None:
        backbone.class_names = [f"class_{i}" for i in range(backbone.head.out_features)]
    preprocess = Preprocess(img_size, backbone.mean, backbone.std)
    return CamModel(arch, backbone.features, backbone.head, backbone.class_names, preprocess, device)
