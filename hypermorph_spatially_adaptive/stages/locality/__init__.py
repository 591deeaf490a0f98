"""The locality stage (``locality.py``, ``hypermorph-locality``): how locally a spatial model's per-class parameters
act, measured on a dataset split (:mod:`...evaluation.locality`)."""
from .command import COLUMNS, build_parser, main, measure

__all__ = ["COLUMNS", "build_parser", "main", "measure"]
