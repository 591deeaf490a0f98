"""``--refine``: improve the per-class parameter vector jointly with the spatially adaptive model (beyond the paper).

The grid search scores each class with the *global* model, one (lam, mu) for the whole image. The spatially
adaptive model sees all classes' values at once, so the best vector for it may differ. :func:`refine_vector`
starts from the grid choice and runs a coordinate (compass) search: for each foreground class, the six
neighbours of its (lam, mu) on the triangular lattice of spacing ``step`` (inside the simplex, never (0, 0))
are tried with the other classes fixed, all candidates in one batched pass per pair; the best is accepted
when it improves the :func:`.choice.objective` (Dice, TRE or EPE) over the tuning pairs. A sweep without improvement halves
the step. The result is never worse than the start on those pairs: both are re-evaluated alone at the end and
the start is kept unless the refined vector scores strictly better.

Vectors are ``[K, 2C]``, all lambdas then all mus (class 0 = background, left as given). Inference's
``tissue_oracle`` method runs the same search by EPE on pairs with a true displacement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ...core.hyperparams import TOLERANCE, join_hyperparams
from .choice import best_index, objective
from .scoring import evaluate_pair

__all__ = ["Refinement", "evaluate_vectors", "neighbours", "refine_vector"]

#: Lattice directions in (lam, mu): along each axis and along the simplex edge lam + mu = const.
_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, -1), (-1, 1))


@dataclass(frozen=True)
class Refinement:
    """Result of :func:`refine_vector`: per-class ``lam``, ``mu`` ``[C]``, objective at the start and the end,
    per-class mean ``dice``, ``tre_mm`` and ``epe_mm`` ``[C]`` over the pairs at the returned vector (NaN where
    undefined), and the work done."""

    lam: torch.Tensor
    mu: torch.Tensor
    start_score: float
    score: float
    dice: torch.Tensor
    tre_mm: torch.Tensor
    epe_mm: torch.Tensor
    sweeps: int
    evaluations: int

    def class_score(self, class_id: int, criterion: str) -> tuple[str, float]:
        """``(kind, value)`` of one class at the returned vector: ``criterion``'s mean score, or Dice where the
        class has no TRE or EPE (the fallback of :func:`.choice.class_criterion`)."""
        values = {"dice": self.dice, "tre": self.tre_mm, "epe": self.epe_mm}
        value = float(values[criterion][class_id])
        return (criterion, value) if not math.isnan(value) else ("dice", float(self.dice[class_id]))


def evaluate_vectors(model: torch.nn.Module, items: Sequence[dict[str, Any]], hyper: torch.Tensor,
                     num_classes: int, batch: int | None = None) -> dict[str, torch.Tensor]:
    """Per-class ``dice``, ``tre_mm`` and ``epe_mm`` (mm) of the spatial ``model`` at ``K`` vectors ``hyper``
    ``[K, 2C]`` on every item (:func:`.scoring.evaluate_pair`, ``batch`` vectors per forward pass, None: its
    default): column name -> float64 ``[P, K, C]``."""
    scores = [evaluate_pair(model, item, hyper, num_classes, batch) for item in items]
    return {name: torch.stack([s[name] for s in scores]) for name in ("dice", "tre_mm", "epe_mm")}


def neighbours(lam: float, mu: float, step: float) -> list[tuple[float, float]]:
    """Lattice neighbours of ``(lam, mu)`` at ``step`` inside the simplex, excluding (0, 0)."""
    out = []
    for dl, dm in _DIRECTIONS:
        a, b = round(lam + dl * step, 12), round(mu + dm * step, 12)
        if a >= -TOLERANCE and b >= -TOLERANCE and a + b <= 1.0 + TOLERANCE and (a > TOLERANCE or b > TOLERANCE):
            out.append((max(a, 0.0), max(b, 0.0)))
    return out


def refine_vector(model: torch.nn.Module, items: Sequence[dict[str, Any]], lam: torch.Tensor, mu: torch.Tensor,
                  step: float, criterion: str = "dice", sweeps: int = 3) -> Refinement:
    """Coordinate search from ``lam``, ``mu`` ``[C]`` over the foreground classes (see the module docstring).

    ``items`` are the tuning pairs (with the labels that choose); ``criterion`` ``dice`` (maximise the mean
    foreground Dice), ``tre`` (minimise the class-averaged TRE) or ``epe`` (minimise the mean over the foreground
    classes of the per-class end-point error; the items need ``gt_displacement``), as :func:`.choice.objective`.
    """
    num_classes = lam.numel()
    higher = criterion == "dice"

    def evaluate(vectors: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        hyper = join_hyperparams(torch.stack([v[0] for v in vectors]), torch.stack([v[1] for v in vectors]))
        return evaluate_vectors(model, items, hyper, num_classes)

    def better(a: float, b: float) -> bool:
        return a > b if higher else a < b

    start = (lam.to(torch.float64).clone(), mu.to(torch.float64).clone())
    start_scores = evaluate([start])
    start_score = float(objective(start_scores, criterion)[0])
    current, current_score, evaluations, done = start, start_score, 1, 0
    for done in range(1, sweeps + 1):
        improved = False
        for class_id in range(1, num_classes):
            candidates = []
            for a, b in neighbours(float(current[0][class_id]), float(current[1][class_id]), step):
                candidate = (current[0].clone(), current[1].clone())
                candidate[0][class_id], candidate[1][class_id] = a, b
                candidates.append(candidate)
            if not candidates:
                continue
            values = objective(evaluate(candidates), criterion)
            evaluations += len(candidates)
            best = best_index(values, torch.ones_like(values, dtype=torch.bool), higher)
            if better(float(values[best]), current_score):
                current, current_score, improved = candidates[best], float(values[best]), True
        if not improved:
            step /= 2.0
    # Scores above came from batches of candidates; compare start and end each evaluated alone, as a caller would.
    scores = evaluate([current])
    final_score = float(objective(scores, criterion)[0])
    evaluations += 1
    if not better(final_score, start_score):
        current, final_score, scores = start, start_score, start_scores
    means = {name: values[:, 0].nanmean(0) for name, values in scores.items()}
    return Refinement(current[0], current[1], start_score, final_score, means["dice"], means["tre_mm"],
                      means["epe_mm"], done, evaluations)
