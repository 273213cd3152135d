"""Progress and cancellation for one encoder run (headless: torch only).

The encoder is one long forward pass. Forward hooks on its blocks report how many
blocks ran and stop the pass at the next block once cancellation is requested; the
model itself is untouched and the hooks are removed afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn


class EncodingCancelled(Exception):
    """Raised inside the encoder when its run was cancelled."""


def encoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder's blocks in order: the members of every ``blocks`` list in it.

    ViT encoders have one ``blocks`` list; TinyViT one per stage.
    """
    encoder = model.image_encoder
    return [
        block
        for name, module in encoder.named_modules()
        if name.split(".")[-1] == "blocks" and isinstance(module, nn.ModuleList)
        for block in module
    ]


@contextmanager
def watch_encoder(
    model: nn.Module,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[None]:
    """Within the block: ``progress(done, total)`` after each encoder block, and
    :class:`EncodingCancelled` raised before the next block once ``cancel`` is set.

    Only the calling thread's forward passes are watched.
    """
    owner = threading.get_ident()
    blocks = encoder_blocks(model)
    total = len(blocks)
    done = 0

    def before(module, args):
        if threading.get_ident() == owner and cancel is not None and cancel.is_set():
            raise EncodingCancelled()

    def after(module, args, output):
        nonlocal done
        if threading.get_ident() == owner:
            done += 1
            if progress is not None:
                progress(min(done, total), total)

    handles = [block.register_forward_pre_hook(before) for block in blocks]
    handles += [block.register_forward_hook(after) for block in blocks]
    try:
        if cancel is not None and cancel.is_set():
            raise EncodingCancelled()
        yield
    finally:
        for handle in handles:
            handle.remove()
