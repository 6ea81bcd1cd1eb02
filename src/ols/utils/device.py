"""Which device a run uses, and the one line that says so before its first epoch."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but CUDA is not available here; use --device cpu "
                         "(or auto)")
    return device


def device_name(device: torch.device) -> str:
    """A readable name: the GPU's model for CUDA, the processor's for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{_cpu_model()}, {torch.get_num_threads()} threads"
    return device.type


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def settings_line(device: torch.device, *, amp: bool, channels_last: bool, compile: bool = False,
                  cuda_graph: bool = False, what: str = "training") -> str:
    """``training on cuda:0 (NVIDIA H200): bf16 AMP on, channels_last on, compile off, CUDA graph off``.

    The flags are those in effect on ``device`` (AMP and channels_last apply on CUDA only).
    """
    def word(flag: bool) -> str:
        return "on" if flag else "off"

    return (f"{what} on {device} ({device_name(device)}): bf16 AMP {word(amp)}, channels_last "
            f"{word(channels_last)}, compile {word(compile)}, CUDA graph {word(cuda_graph)}")
