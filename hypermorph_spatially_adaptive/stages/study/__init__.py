"""The study: seeds x spatial-model variants on the phantom, every method of the pipeline plus a control and two
oracles, aggregated with 95% intervals into a report (:mod:`.command`)."""
from .command import StudyOptions, build_parser, main, run_study, study

__all__ = ["StudyOptions", "build_parser", "main", "run_study", "study"]
