"""Nested random subsets as hash-rank prefixes of a shard set (``datascale subsets``).

Modules: ``subset`` (the Subset record, its config, loading and size
parsing), ``make`` (the streaming passes that cut every subset in one read),
``stats`` (label statistics per subset), ``cli`` (the command).
"""
