"""Shards: any image collection -> WebDataset tars in hash-rank order (``datascale shards``).

Modules: ``sources`` (input readers: folders, manifests, tars, a synthetic
world), ``buckets`` (the bounded-memory external shuffle by rank), ``write``
(parallel shard writing, manifest), ``report`` (label tallies, card.md,
``verify``), ``cli`` (the commands). The tar member format itself is
:mod:`datascale.formats.wds`.
"""
