"""Training and evaluation data: image folders, pairs and triplets, exposure stacks.

Submodules are imported where they are used (``textmef.data.folders``,
``textmef.data.pairs``, ``textmef.data.triplets``, ``textmef.data.stacks``), so that the
command line can read option defaults from ``textmef.data.pair_options`` cheaply.
"""
