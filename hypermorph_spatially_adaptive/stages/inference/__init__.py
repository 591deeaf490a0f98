"""The inference stage: :mod:`.pairs` (one pair: parameters, registration, scores, files), :mod:`.report`
(``metrics.csv``, ``summary.{csv,md}``), :mod:`.figures`, :mod:`.oracle` (the ``tissue_oracle`` bound's parameters),
:mod:`.command` (flags, entry point), :mod:`.context` (the resolved run) and :mod:`.stage` (the run over all pairs).
Imports go pairs, oracle <- report, figures, context <- stage <- command.
"""
from .command import build_parser, main
from .stage import run

__all__ = ["build_parser", "main", "run"]
