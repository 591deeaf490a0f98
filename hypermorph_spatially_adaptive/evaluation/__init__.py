"""Evaluation between the models and data below it and the stages above it: the scores of one registered pair
(:mod:`.pair_metrics`: Dice, HD95, TRE, SDlogJ, folding, end-point error, per-class scores), the locality of a
spatially adaptive model (:mod:`.locality`) and paired statistics over pairs (:mod:`.statistics`) used by the
reports.
"""
__all__: list[str] = []
