"""datascale core: errors, the config system, lineage and atomic file output.

The stage code lives in the sibling packages ``data_tools`` (images, labels,
shards, subsets, loader, dedup), ``scaling`` (models, training, CLI) and
``analysis`` (results, fits, plots).
"""

__version__ = "0.1.0"
