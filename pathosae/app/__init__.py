"""Data access for the Streamlit app: a guarded, cached, read-only view of a run directory.

Kept free of Streamlit so it can be tested and benchmarked on its own; ``apps/`` holds the pages.
"""

from pathosae.app.access import AccessError, PathGuard
from pathosae.app.activations import UnitActivations, build_unit_cache
from pathosae.app.runview import RunView
from pathosae.app.status import StageStatus
from pathosae.app.tags import TAGS, TagStore

__all__ = [
    "TAGS",
    "AccessError",
    "PathGuard",
    "RunView",
    "StageStatus",
    "TagStore",
    "UnitActivations",
    "build_unit_cache",
]
