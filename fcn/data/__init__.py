"""What every data set reader yields (DESIGN.md, Item), how it reports problems, and the two top-50 tag lists.

Readers: fcn.data.mtat.read, fcn.data.msd.read -> (tags, items, problems). Built-in data: fcn.data.synth.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from fcn.errors import UserError

SPLITS = ("train", "valid", "test")

# PAPER.md, MagnaTagATune top-50, in the standard order (= Won's tags.npy; names exactly as annotations_final.csv
# spells them). Lee's top50_tags.txt uses camelCase and swaps positions 47-48; we follow PAPER.md.
MTAT_TOP50 = (
    "guitar",
    "classical",
    "slow",
    "techno",
    "strings",
    "drums",
    "electronic",
    "rock",
    "fast",
    "piano",
    "ambient",
    "beat",
    "violin",
    "vocal",
    "synth",
    "female",
    "indian",
    "opera",
    "male",
    "singing",
    "vocals",
    "no vocals",
    "harpsichord",
    "loud",
    "quiet",
    "flute",
    "woman",
    "male vocal",
    "no vocal",
    "pop",
    "soft",
    "sitar",
    "solo",
    "man",
    "classic",
    "choir",
    "voice",
    "new age",
    "dance",
    "male voice",
    "female vocal",
    "beats",
    "harp",
    "cello",
    "no voice",
    "weird",
    "country",
    "metal",
    "female voice",
    "choral",
)

# Choi's MSD top50_tags.txt, verbatim (Last.fm spelling and case: 'Mellow', 'Hip-Hop', 'House', 'Progressive rock').
# Embedded so the synthetic MSD set and a user without the split folder need no outside file.
MSD_TOP50 = (
    "rock",
    "pop",
    "alternative",
    "indie",
    "electronic",
    "female vocalists",
    "dance",
    "00s",
    "alternative rock",
    "jazz",
    "beautiful",
    "metal",
    "chillout",
    "male vocalists",
    "classic rock",
    "soul",
    "indie rock",
    "Mellow",
    "electronica",
    "80s",
    "folk",
    "90s",
    "chill",
    "instrumental",
    "punk",
    "oldies",
    "blues",
    "hard rock",
    "ambient",
    "acoustic",
    "experimental",
    "female vocalist",
    "guitar",
    "Hip-Hop",
    "70s",
    "party",
    "country",
    "easy listening",
    "sexy",
    "catchy",
    "funk",
    "electro",
    "heavy metal",
    "Progressive rock",
    "60s",
    "rnb",
    "indie pop",
    "sad",
    "House",
    "happy",
)


class DataError(UserError, ValueError):
    """A malformed index file (missing column, wrong list lengths...): the message names the file and what is wrong.

    A UserError, so entry points print it as one line; a ValueError, so callers may catch it as bad input."""


class DataFileMissing(UserError, FileNotFoundError):
    """A required index file (CSV, split list, tag database) is not where it was looked for."""


@dataclass(frozen=True)
class Item:
    """One clip of a data set. `labels` is uint8 (50,) in the reader's tag order; it takes no part in ==/hash
    (numpy arrays are not hashable), so two Items are equal when clip_id, path and split are."""

    clip_id: str
    path: str  # absolute
    labels: np.ndarray = field(compare=False, repr=False)
    split: str  # 'train' | 'valid' | 'test'


class Problem(str):
    """One line of a reader's problem list: a plain str ("<key>: <reason>") that also keeps its parts."""

    key: str
    reason: str

    def __new__(cls, key, reason: str):
        self = super().__new__(cls, f"{key}: {reason}")
        self.key, self.reason = str(key), reason
        return self


class Report:
    """Collects the rows a reader skipped or doubted. `lines()` renders them as the readers' `problems` list:
    one line per entry, except that a reason with more than `max_per_reason` entries becomes one summary line
    (count + the first few keys), so 25,000 missing files do not make 25,000 lines."""

    def __init__(self, source: str = ""):
        self.source = source
        self._by_reason: dict[str, list[str]] = defaultdict(list)
        self._order: list[tuple[str, object]] = []  # ("one", reason) or ("group", line), in the order added

    def add(self, key, reason: str) -> None:
        if reason not in self._by_reason:
            self._order.append(("one", reason))
        self._by_reason[reason].append(str(key))

    def summary(self, reason: str, keys, total: int | None = None, show: int = 5) -> None:
        """One line for a whole group: '<n> [of <total>] <reason> (first: a, b, ...)'. Nothing when keys is empty."""
        keys = [str(k) for k in keys]
        if not keys:
            return
        of = f" of {total}" if total is not None else ""
        more = ", ..." if len(keys) > show else ""
        self._order.append(("group", Problem(f"{len(keys)}{of}", f"{reason} (first: {', '.join(keys[:show])}{more})")))

    def count(self, reason: str | None = None) -> int:
        if reason is not None:
            return len(self._by_reason.get(reason, []))
        return sum(len(v) for v in self._by_reason.values()) + sum(1 for k, _ in self._order if k == "group")

    def lines(self, max_per_reason: int = 20) -> list[Problem]:
        out: list[Problem] = []
        for kind, what in self._order:
            if kind == "group":
                out.append(what)
                continue
            keys = self._by_reason[what]
            if len(keys) <= max_per_reason:
                out += [Problem(k, what) for k in keys]
            else:
                out.append(Problem(f"{len(keys)} rows", f"{what} (first: {', '.join(keys[:5])}, ...)"))
        return out
