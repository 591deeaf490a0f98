"""The training stage: :mod:`.command` (flags, entry points), :mod:`.context` (the resolved run) and :mod:`.stage`
(the loop, validation, checkpoints, resume)."""
from .command import build_parser, main, main_global, main_spatial
from .stage import LOG_COLUMNS, MODEL_TYPES, TrainingError, scheduled_lr, train

__all__ = ["build_parser", "main", "main_global", "main_spatial", "train", "scheduled_lr", "TrainingError",
           "MODEL_TYPES", "LOG_COLUMNS"]
