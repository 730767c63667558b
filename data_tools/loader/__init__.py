"""The streaming training pipeline over shards and subsets, with exact resume.

Modules: ``pipeline`` (train/eval loaders, label encoding, batches),
``streams`` (shard order, worker split, shuffle buffer, exact positions),
``transforms`` (image transforms by name).
"""
