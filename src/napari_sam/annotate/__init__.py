"""The annotation loop without a GUI: prompts -> candidates -> labels (see ``session``).

Later features plug in as one module each (``automatic.py``: segment everything;
``propagate.py``: through z / t) and a button in the widget.
"""

from .commit import CommitPlan, PlaneEdit, paint, plan_commit
from .prompt_set import PromptSet
from .session import AnnotationSession, Request, Result

__all__ = ["AnnotationSession", "CommitPlan", "PlaneEdit", "PromptSet", "Request", "Result", "paint", "plan_commit"]
