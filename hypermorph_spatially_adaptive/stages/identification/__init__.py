"""The parameter identification stage, organised by concept.

- :mod:`.grid`: the (lam, mu) grid; :mod:`.scoring`: Dice, TRE and EPE per class of many grid points per pass;
- :mod:`.grid_scores`: ``grid_scores.csv`` and shards; :mod:`.choice`: parameters per scope from the scores;
- :mod:`.refinement`: the per-class vector tuned with the spatial model (``--refine``);
- :mod:`.figures`: heatmaps; :mod:`.summary`: ``summary.md``;
- :mod:`.command` (flags, entry point), :mod:`.context` (the resolved run), :mod:`.stage` (the run).
"""
from .command import build_parser, main
from .stage import run

__all__ = ["build_parser", "main", "run"]
