"""Run configuration: dataclass defaults < YAML file < command-line flags."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from camcli.defaults import BACKENDS, DEVICES, MAX_IMG_SIZE, MIN_IMG_SIZE, RESIZE_MODES, TRAIN
from camcli.errors import CamcliError, first_line
from camcli.files import read_text
from camcli.packaged import DEFAULT_ARCH


def default_workers() -> int:
    """Decoding threads: one per core, at most 4."""
    return min(4, os.cpu_count() or 1)


@dataclass
class TrainConfig:
    """Everything ``camcli train`` needs; ``config.yaml`` in each run holds the resolved one."""

    data: str | None = None
    arch: str = DEFAULT_ARCH
    weights: str = TRAIN["weights"]
    epochs: int = TRAIN["epochs"]
    batch_size: int = TRAIN["batch_size"]
    lr: float = TRAIN["lr"]
    weight_decay: float = TRAIN["weight_decay"]
    img_size: int = TRAIN["img_size"]
    resize: str = TRAIN["resize"]
    val_split: float = TRAIN["val_split"]
    seed: int = TRAIN["seed"]
    device: str = TRAIN["device"]
    backend: str = TRAIN["backend"]
    amp: bool = True
    augment: bool = False
    workers: int = dataclasses.field(default_factory=default_workers)
    out: str | None = None
    exist_ok: bool = False
    exclude: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, sources: dict[str, str] | None = None) -> "TrainConfig":
        """Check every value; ``sources`` (key -> ``option`` or the config file's path) lets the
        message name the flag or the file a bad value came from."""
        checks = [
            ("epochs", self.epochs >= 1, f"must be at least 1, got {self.epochs}"),
            ("batch_size", self.batch_size >= 1, f"must be at least 1, got {self.batch_size}"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, f"must be a positive finite number, got {self.lr}"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"must be a finite number, 0 or more, got {self.weight_decay}"),
            # AdamW multiplies the weights by 1 - lr * weight_decay every step: at 1 or more they vanish or flip sign
            ("weight_decay", not self.lr * self.weight_decay >= 1,
             f"times lr must be below 1 (each step scales the weights by 1 - lr * weight_decay), got {self.weight_decay:g} "
             f"with lr {self.lr:g}"),
            ("img_size", MIN_IMG_SIZE <= self.img_size <= MAX_IMG_SIZE,
             f"must be from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}, got {self.img_size}"),
            ("val_split", 0 < self.val_split < 1, f"must be between 0 and 1, got {self.val_split}"),
            ("workers", self.workers >= 0, f"must be 0 or more, got {self.workers}"),
            ("seed", 0 <= self.seed < 2**63, f"must be from 0 to 2**63 - 1, got {self.seed}"),
            ("resize", self.resize in RESIZE_MODES, f"must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}"),
            ("device", self.device in DEVICES, f"must be one of {', '.join(DEVICES)}, got {self.device!r}"),
            ("backend", self.backend in BACKENDS, f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}"),
            ("weights", self.weights in ("imagenet", "none") or os.path.lexists(self.weights),
             f"is imagenet, none or a state dict file; no file {_short(self.weights)} exists"),
        ]
        for name, ok, message in checks:
            if not ok:
                where = (sources or {}).get(name)
                subject = f"--{name.replace('_', '-')}" if where == "option" else f"config {where}: {name}" if where else name
                raise CamcliError(f"{subject} {message}")
        if self.data is None:
            raise CamcliError("no dataset given: camcli train DATA (see camcli train --help)")
        self.sources = dict(sources or {})  # not a field: never saved; what messages name (the flag, or the file)
        return self


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _coerce(name: str, kind: type, value: object, source: str) -> object:
    """``value`` as the field's type; ``source`` is ``option`` (a flag) or ``config FILE``."""
    where = f"--{name.replace('_', '-')}" if source == "option" else f"{source}: {name}"
    if value is None:
        return None
    if kind is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise CamcliError(f"{where} must be a list of glob patterns, got {_short(value)}")
    if kind is float and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as text
        except ValueError:
            raise CamcliError(f"{where} must be a number, got {_short(value)}") from None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise CamcliError(f"{where} must be a finite number, got {_short(value)}")
        return float(value)
    if kind is str and isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise CamcliError(f"{where} must be {kind.__name__}, got {_short(value)}")


def _field_types() -> dict[str, type]:
    types = {"int": int, "float": float, "bool": bool, "str": str, "str | None": str, "list[str]": list}
    return {f.name: types[str(f.type)] for f in fields(TrainConfig)}


CONFIG_LIMIT = 1 << 20  # bytes: a config is a few lines


def load_yaml(path: Path) -> dict:
    """Read a config file: a mapping of TrainConfig keys; unknown keys are an error."""
    path = Path(path)
    text = read_text(path, CONFIG_LIMIT, "config")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CamcliError(f"config {path} is not valid YAML: {first_line(exc)}") from exc
    except RecursionError:
        raise CamcliError(f"config {path} is nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise CamcliError(f"config {path} must be a mapping of option: value")
    types = _field_types()
    unknown = sorted(str(k)[:40] for k in data if k not in types)
    if unknown:
        raise CamcliError(f"config {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(types)}")
    return {k: _coerce(k, types[k], v, f"config {path}") for k, v in data.items()}


def resolve_train_config(config_file: Path | None = None, **flags: object) -> TrainConfig:
    """Defaults, overridden by the file's values, overridden by flags that were given (not None)."""
    values = load_yaml(config_file) if config_file is not None else {}
    sources = {key: str(config_file) for key in values}
    types = _field_types()
    for key, value in flags.items():
        if key not in types:
            raise ValueError(f"unknown config key {key!r}")
        if value is not None:
            values[key] = _coerce(key, types[key], value, "option")
            sources[key] = "option"
    return TrainConfig(**values).validate(sources)
