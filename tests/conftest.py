"""Shared test settings: no progress bars, a non-interactive matplotlib backend."""

import os

os.environ.setdefault("LATENTBOOK_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
