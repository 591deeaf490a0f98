"""The demo: the whole pipeline on the 2D (or 3D) phantom (:mod:`.pipeline`) and its verdict on the paper's claim
(:mod:`.verdict`)."""
from .pipeline import PRESETS, DemoOptions, build_parser, demo, main, run_demo
from .verdict import DemoVerdict, judge, write_summary

__all__ = ["PRESETS", "DemoOptions", "build_parser", "demo", "main", "run_demo", "DemoVerdict", "judge", "write_summary"]
