"""Self-training (Zoph et al. 2020): pseudo-labels from a teacher run, a student trained on both."""
