"""Where the tests' real reference files are: the split and tag lists shipped inside the package (fcn/data/splits/,
provenance in its README.md). Tests read nothing outside the repository, so a clone with nothing beside it passes."""

from fcn.data.lists import MSD_LISTS, MTAT_LISTS, PACKAGED

SPLITS = PACKAGED
__all__ = ["MSD_LISTS", "MTAT_LISTS", "PACKAGED", "SPLITS"]
