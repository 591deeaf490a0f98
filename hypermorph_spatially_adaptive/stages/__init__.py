"""The stages of the pipeline, each a command with a ``main(argv) -> int``: :mod:`.training`,
:mod:`.identification`, :mod:`.inference` and the :mod:`.demo` that runs them all. :mod:`.cli` holds the flags and
plumbing they share and :mod:`.parameter_table` the ``parameters.csv`` handed from identification to inference.
The top layer: nothing else in the package imports it.
"""
__all__: list[str] = []
