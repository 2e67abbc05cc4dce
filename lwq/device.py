"""The one place that decides where models run and in which dtype."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU; an explicit device that is absent is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={requested} asked for but no CUDA device is visible; use auto")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` means bfloat16 on CUDA (the paper models' native dtype), float32 on CPU."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if requested not in _DTYPES:
        raise ValueError(f"unknown dtype {requested!r}; use auto or one of {', '.join(_DTYPES)}")
    return _DTYPES[requested]
