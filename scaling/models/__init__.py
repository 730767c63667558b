"""Backbones and heads: ``registry`` (BACKBONES, the only list of architectures),
``backbones`` (the trunks, the multi-label classifier, freezing and batch-norm
helpers), ``embedder`` (the dedup embedder of a backbone.pt) and ``files`` (backbone.pt /
backbone.json export and import, used by fine-tuning and the dedup embedder).
"""
