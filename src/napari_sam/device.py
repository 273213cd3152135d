"""Choosing the torch device the model runs on.

One rule everywhere: an explicit ``device`` argument wins, then the ``NAPARI_SAM_DEVICE``
environment variable, then the best available accelerator (cuda > mps > cpu). A device
that is asked for but not usable is an error, never a silent fallback: a user who asked
for the GPU and gets the CPU waits minutes without knowing why.
"""

from __future__ import annotations

import os

import torch

__all__ = ["DEVICE_ENV_VAR", "select_device"]

DEVICE_ENV_VAR = "NAPARI_SAM_DEVICE"

# "auto" (or an empty environment variable) means: pick the best available device.
_AUTO = ("", "auto")


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on.

    Parameters
    ----------
    device : str, torch.device or None
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device``, or ``"auto"``.
        ``None`` reads the ``NAPARI_SAM_DEVICE`` environment variable, and when that is
        unset (or ``"auto"``) picks cuda, else mps, else cpu.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        When the device string is not a device, or names a device this machine cannot
        use (e.g. ``"cuda"`` on a machine without a usable CUDA GPU). The message says
        where the request came from (the argument or the environment variable).
    """
    if device is None:
        requested = os.environ.get(DEVICE_ENV_VAR)
        source = f"The environment variable {DEVICE_ENV_VAR}"
    else:
        requested = device
        source = "The device argument"
    if requested is None or (isinstance(requested, str) and requested.strip().lower() in _AUTO):
        return _best_available()

    if isinstance(requested, torch.device):
        parsed = requested
    else:
        try:
            parsed = torch.device(str(requested).strip().lower())
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"{source} asks for device {requested!r}, which is not a torch device; "
                "use 'cpu', 'cuda', 'cuda:<index>', 'mps' or 'auto'."
            ) from err
    _check_usable(parsed, source)
    return parsed


def _best_available() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _check_usable(device: torch.device, source: str) -> None:
    hint = f"Use 'cpu' or 'auto' instead (or unset {DEVICE_ENV_VAR})."
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            reason = (
                "this PyTorch build has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible (driver missing, or CUDA_VISIBLE_DEVICES hides it)"
            )
            raise ValueError(f"{source} asks for device '{device}', but {reason}. {hint}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"{source} asks for device '{device}', but only {count} CUDA device(s) "
                f"exist (indices 0..{count - 1})."
            )
        return
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"{source} asks for device 'mps', but Apple's Metal backend is not available "
                f"on this machine. {hint}"
            )
        return
    raise ValueError(
        f"{source} asks for device '{device}', which napari-sam does not support; "
        "use 'cpu', 'cuda', 'cuda:<index>', 'mps' or 'auto'."
    )
