"""Images and labels: the synthetic world, shards, nested subsets, labels, the streaming loader, dedup."""
