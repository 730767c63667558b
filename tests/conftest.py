"""Shared fixtures. Tests run on the CPU with few threads so that the suite
behaves the same on a 2-core CI machine as on a workstation."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
