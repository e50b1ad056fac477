"""results/ tables and figures from the MLflow runs of one sweep experiment, beside the paper's numbers.

One job per module: read.py (finished cell runs and their artifacts, through fcn/tracking.py), summarise.py (one
Cell per full cell identity, with its interval; paired tests), render.py (Markdown/CSV, the paper's tables),
render_fractions.py (the RQ4 depth × training-fraction table), plot.py (figures), index.py (results/index.md),
build.py (`write_tables`: all of it for one experiment), __main__.py (`python -m harness.tables`).
"""

from harness.tables.build import write_tables

__all__ = ["write_tables"]
