"""Test-only stand-ins for the few torchvision and timm names the reference SAM code imports.

The parity tests compare this project's model with the reference packages
`segment_anything` and `mobile_sam`. Those import `torchvision` (and `mobile_sam` also
`timm`) at import time, but PyPI's torchvision is a CUDA build that does not import beside
the CPU torch used here, and timm imports torchvision throughout. Only a handful of names
are needed, so `install()` puts small modules holding exactly those names into
`sys.modules`, and only where the real package cannot be imported.

Nothing here is used outside tests.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

# Marks a module in sys.modules as one of ours, so install() can tell it is done.
_STAND_IN_FLAG = "__napari_sam_stand_in__"


# --- torchvision.transforms.functional ---------------------------------------------------


def to_pil_image(pic, mode=None):
    """Stand-in for torchvision's `to_pil_image` on uint8 images.

    Parameters
    ----------
    pic : np.ndarray or torch.Tensor or PIL.Image.Image
        A uint8 numpy image (H, W) or (H, W, C), a uint8 tensor (C, H, W) or (H, W), or a
        PIL image (returned unchanged).
    mode : str, optional
        PIL mode, as in torchvision.

    Returns
    -------
    PIL.Image.Image
    """
    if isinstance(pic, Image.Image):
        return pic
    if isinstance(pic, torch.Tensor):
        # torchvision takes tensors channels-first.
        array = pic.detach().cpu()
        if array.ndim == 3:
            array = array.permute(1, 2, 0)
        pic = array.numpy()
    if not isinstance(pic, np.ndarray):
        raise TypeError(f"pic should be a numpy array, tensor or PIL image, got {type(pic)}")
    if pic.dtype != np.uint8:
        # The reference only passes uint8 images; other dtypes follow rules we do not need.
        raise TypeError(f"this stand-in converts uint8 images only, got dtype {pic.dtype}")
    if pic.ndim == 3 and pic.shape[2] == 1:
        pic = pic[:, :, 0]
    if pic.ndim not in (2, 3):
        raise ValueError(f"pic should be 2 or 3 dimensional, got shape {pic.shape}")
    return Image.fromarray(np.ascontiguousarray(pic), mode=mode)


def resize(img, size, interpolation=None, max_size=None, antialias=True):
    """Stand-in for torchvision's `resize` on PIL images (its PIL path, bilinear).

    Parameters
    ----------
    img : PIL.Image.Image
    size : (h, w) sequence or int
        Output size; an int sets the shorter side and keeps the aspect ratio.
    interpolation : PIL resampling filter, optional
        Default bilinear, as torchvision's default.

    Returns
    -------
    PIL.Image.Image
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"this stand-in resizes PIL images only, got {type(img)}")
    if max_size is not None:
        raise NotImplementedError("max_size is not supported by this stand-in")
    resample = Image.BILINEAR if interpolation is None else interpolation
    width, height = img.size
    if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 1):
        short = size if isinstance(size, int) else size[0]
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
    else:
        new_h, new_w = size
    if (new_w, new_h) == (width, height):
        return img
    return img.resize((int(new_w), int(new_h)), resample)


class ToTensor:
    """Stand-in for torchvision's `ToTensor` on uint8 (H, W, C) arrays: float (C, H, W) in [0, 1]."""

    def __call__(self, pic) -> torch.Tensor:
        array = np.asarray(pic)
        if array.dtype != np.uint8:
            raise TypeError(f"this stand-in converts uint8 images only, got dtype {array.dtype}")
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div(255.0)


class Resize(torch.nn.Module):
    """Stand-in for torchvision's `Resize((h, w))` on float tensors (its tensor path:
    bilinear, antialiased, half-pixel centres). Scriptable, as SAM 2 scripts it."""

    def __init__(self, size: list[int]):
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batched = x.dim() == 4
        y = x if batched else x.unsqueeze(0)
        y = torch.nn.functional.interpolate(
            y, size=self.size, mode="bilinear", align_corners=False, antialias=True
        )
        return y if batched else y.squeeze(0)


class Normalize(torch.nn.Module):
    """Stand-in for torchvision's `Normalize(mean, std)` on (..., C, H, W) float tensors."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std


# --- torchvision.ops.boxes ------------------------------------------------------------------


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of (N, 4) xyxy boxes -> (N,)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter / union


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of kept boxes, by decreasing score."""
    order = torch.argsort(scores, descending=True)
    iou = _box_iou(boxes, boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        # torchvision suppresses strictly above the threshold.
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Non-maximum suppression within each category `idxs`: kept indices, by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    # Shift each category far away from the others so boxes of different categories
    # never overlap; one NMS then does all categories (torchvision's trick).
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# --- timm -----------------------------------------------------------------------------------


class DropPath(torch.nn.Module):
    """Stochastic depth per sample; the identity in eval mode or with drop_prob 0."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.drop_prob or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if self.scale_by_keep and keep_prob > 0.0:
            mask.div_(keep_prob)
        return x * mask


def to_2tuple(x):
    """`(x, x)`, or `tuple(x)` when x is already an iterable (not a string)."""
    if isinstance(x, Iterable) and not isinstance(x, str):
        return tuple(x)
    return (x, x)


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Fill `tensor` from a normal distribution truncated to [a, b]."""
    return torch.nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def register_model(fn):
    """timm's model registry decorator; the reference only needs it to return `fn`."""
    return fn


# --- installation ---------------------------------------------------------------------------


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    setattr(module, _STAND_IN_FLAG, True)
    return module


def _stand_ins_for(package: str) -> dict[str, types.ModuleType]:
    """The stand-in modules of `package`, by full name, parents linked to children."""
    if package == "torchvision":
        functional = _module(
            "torchvision.transforms.functional", resize=resize, to_pil_image=to_pil_image
        )
        boxes = _module(
            "torchvision.ops.boxes", batched_nms=batched_nms, box_area=box_area, nms=nms
        )
        modules = {
            "torchvision": _module("torchvision"),
            "torchvision.transforms": _module(
                "torchvision.transforms",
                functional=functional,
                Normalize=Normalize,
                Resize=Resize,
                ToTensor=ToTensor,
            ),
            "torchvision.transforms.functional": functional,
            "torchvision.ops": _module(
                "torchvision.ops", boxes=boxes, batched_nms=batched_nms, box_area=box_area, nms=nms
            ),
            "torchvision.ops.boxes": boxes,
        }
        modules["torchvision"].transforms = modules["torchvision.transforms"]
        modules["torchvision"].ops = modules["torchvision.ops"]
        return modules
    if package == "timm":
        layers = _module(
            "timm.models.layers",
            DropPath=DropPath,
            to_2tuple=to_2tuple,
            trunc_normal_=trunc_normal_,
        )
        registry = _module("timm.models.registry", register_model=register_model)
        models = _module(
            "timm.models", layers=layers, registry=registry, register_model=register_model
        )
        return {
            "timm": _module("timm", models=models),
            "timm.models": models,
            "timm.models.layers": layers,
            "timm.models.registry": registry,
        }
    raise ValueError(f"no stand-ins for {package!r}")


def _real_package_imports(package: str) -> bool:
    """Whether the real `package` imports; a failed attempt leaves nothing in sys.modules."""
    try:
        importlib.import_module(package)
    except Exception:  # noqa: BLE001 - a broken install raises more than ImportError
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
        return False
    return True


def install() -> None:
    """Put the stand-ins into sys.modules where the real packages do not import.

    Idempotent. torchvision goes first because a real timm imports torchvision.
    """
    for package in ("torchvision", "timm"):
        installed = sys.modules.get(package)
        if installed is not None and getattr(installed, _STAND_IN_FLAG, False):
            continue
        if not _real_package_imports(package):
            sys.modules.update(_stand_ins_for(package))


REFERENCE_MODULES = (
    "segment_anything",
    "segment_anything.utils.transforms",
    "segment_anything.automatic_mask_generator",
    "mobile_sam",
    "mobile_sam.modeling",
)


def import_references() -> None:
    """Import the reference packages with the stand-ins, then take the stand-ins away.

    The references bind the few names they use at import time, so they keep working;
    other libraries that probe for torchvision (transformers, behind the text encoder)
    then see no torchvision instead of a stand-in they cannot use.
    """
    before = set(sys.modules)
    install()
    for name in REFERENCE_MODULES:
        importlib.import_module(name)
    for name in [n for n in sys.modules if n not in before]:
        if getattr(sys.modules[name], _STAND_IN_FLAG, False):
            del sys.modules[name]


SAM2_REFERENCE_MODULES = (
    "sam2",
    "sam2.build_sam",
    "sam2.sam2_image_predictor",
    "sam2.sam2_video_predictor",
    "sam2.automatic_mask_generator",
)


def import_sam2_reference() -> None:
    """Import the `sam2` reference package (SAM 2.1) with the stand-ins, as
    `import_references` does for SAM 1; raises ImportError when it is not installed."""
    before = set(sys.modules)
    install()
    try:
        for name in SAM2_REFERENCE_MODULES:
            importlib.import_module(name)
    finally:
        for name in [n for n in sys.modules if n not in before]:
            if getattr(sys.modules[name], _STAND_IN_FLAG, False):
                del sys.modules[name]
