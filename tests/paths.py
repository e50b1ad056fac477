"""Where the shared, read-only reference files are: CI clones the repository with `shared/` beside it."""
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
# real split files: MTAT in won_sota_split/mtat, MSD in choi_MSD_split_for_tagging (+ won_sota_split/msd)
SPLITS = SHARED / "data" / "splits"
