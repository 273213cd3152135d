"""Models fine-tuned in this napari session, offered to every Annotate widget.

The Fine-tune widget registers each model it saves; Annotate widgets list the registered
models in their model menu (existing ones when they are created, new ones as they come)
and switch to one when ``use`` is called.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QObject, Signal


class FineTunedModels(QObject):
    """Registered models as ``(label, path)`` pairs, oldest first.

    Signals: ``added(label, path)`` when a model is registered, ``use_requested(path)``
    when the user asks for one in the Annotate widget.
    """

    added = Signal(str, str)
    use_requested = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self._models: dict[str, str] = {}  # path -> label

    def add(self, path: str | Path) -> str:
        """Register a saved model file; returns its menu label (``fine-tuned: <file stem>``)."""
        path = str(Path(path).resolve())
        if path not in self._models:
            self._models[path] = f"fine-tuned: {Path(path).stem}"
            self.added.emit(self._models[path], path)
        return self._models[path]

    def use(self, path: str | Path) -> None:
        """Register ``path`` if needed and ask the Annotate widgets to switch to it."""
        self.add(path)
        self.use_requested.emit(str(Path(path).resolve()))

    def items(self) -> list[tuple[str, str]]:
        return [(label, path) for path, label in self._models.items()]


_REGISTRY: FineTunedModels | None = None


def finetuned_models() -> FineTunedModels:
    """The process-wide registry (created on first use, in the Qt main thread)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = FineTunedModels()
    return _REGISTRY
