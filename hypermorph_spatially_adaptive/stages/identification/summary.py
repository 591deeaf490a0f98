"""``summary.md`` of an identification run: what was run on which data, and the shared scopes' choices."""
from __future__ import annotations

import argparse
from typing import Sequence

from ..parameter_table import GLOBAL, POPULATION, POPULATION_REFINED, ParameterRow
from .choice import BACKGROUND_NOTES
from .context import StageContext
from .grid import grid_index
from .grid_scores import GridScores
from .refinement import Refinement

__all__ = ["summary_markdown", "run_summary"]

_CRITERION_NOTES = {
    "dice": "higher is better",
    "tre": "lower, in mm, is better; classes without keypoints fall back to dice",
    "epe": "the end-point error against the true displacement, lower, in mm, is better: an oracle bound that only "
           "synthetic data allows; classes without voxels fall back to dice",
}


def summary_markdown(scores: GridScores, rows: Sequence[ParameterRow], notes: Sequence[str],
                     closing: Sequence[str] = ()) -> str:
    """``summary.md``: ``notes`` as bullets, then the shared scopes' choices with their score under the labels that
    chose and, when other labels chose (``dice_eval`` in ``scores``), the dataset labels' mean Dice at that point."""
    scored = "dice_eval" in scores.metrics
    lines = ["# Parameter identification", ""] + [f"- {note}" for note in notes] + [
        "", "| scope | class | lam | mu | criterion | score (choosing labels) | Dice (scoring labels) |",
        "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.scope not in (GLOBAL, POPULATION, POPULATION_REFINED):
            continue
        evaluation = "same" if not scored else "n/a"  # a refined or fixed value off the grid has no grid score
        at = grid_index(scores.grid, row.lam, row.mu)
        if scored and row.scope != POPULATION_REFINED and at is not None:
            evaluation = f"{float(scores.metrics['dice_eval'][:, at, row.class_id].nanmean()):.4f}"
        lines.append(f"| {row.scope} | {row.class_name} | {row.lam:.4g} | {row.mu:.4g} | {row.criterion} | "
                     f"{row.score:.4f} | {evaluation} |")
    return "\n".join(lines + [""] + [f"{text}\n" for text in closing])


def run_summary(args: argparse.Namespace, ctx: StageContext, scores: GridScores, rows: list[ParameterRow],
               refinement: Refinement | None, extra: Sequence[str] = ()) -> str:
    """The text of ``summary.md`` for a finished run (:func:`summary_markdown` with the run's notes; ``extra``
    closing paragraphs last)."""
    options = ctx.shard_options or vars(args)
    chose = f"`{options['selection_labels']}` (--selection-labels)" if options["selection_labels"] else \
        "the dataset's labels"
    source = f"merged from shards {', '.join(f'`{d}`' for d in args.merge)}" if args.merge else "one run"
    notes = [
        f"Global model: `{options['global_model']}`; scores {source}",
        f"Data: {options['dataset']} `{options['data_root']}`, split `{options['split']}`: "
        f"{len(scores.pair_ids)} pairs",
        f"Grid: {scores.grid.shape[0]} (lam, mu) points with lam + mu <= 1; (0, 0) is evaluated but never chosen",
        f"Criterion: {args.criterion} ({_CRITERION_NOTES[args.criterion]})",
        f"Background class (--background {args.background}): it {BACKGROUND_NOTES[args.background]}",
        f"Labels that chose: {chose}",
        "Labels that scored: the dataset's labels" + (" (grid_scores.csv columns dice_eval, tre_mm_eval; last "
                                                       "column below)" if "dice_eval" in scores.metrics else ""),
    ]
    closing = [f"Subject-specific scopes: {len(scores.pair_ids)} (one per pair id) in parameters.csv."]
    if refinement is not None:
        closing.append(f"Refinement (--refine with `{args.spatial_model}`, objective {args.criterion} over the "
                       f"{len(scores.pair_ids)} tuning pairs, choosing labels): start {refinement.start_score:.4f} -> "
                       f"refined {refinement.score:.4f} ({refinement.score - refinement.start_score:+.4f}) after "
                       f"{refinement.sweeps} sweep(s), {refinement.evaluations} vectors evaluated.")
    return summary_markdown(scores, rows, notes, closing + list(extra))
