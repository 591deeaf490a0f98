"""Models: the hypernetwork and hyper-convolutions (:mod:`.hypernetwork`), the registration networks
(:mod:`.networks`), the spatial model's conditioning variants (:mod:`.conditioning`), the checkpoint format (:mod:`.checkpoints`) and trained models as the stages load them
(:mod:`.trained`). Imports :mod:`..core` and :mod:`..files` only, never :mod:`..data`.
"""
__all__: list[str] = []
