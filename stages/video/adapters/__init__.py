"""Adapters for the usual annotation formats: each turns a data set's official annotation files and
its video folder into source-list rows (ids, labels, splits, segments, extra labels in ``meta``).

    twostage sources FORMAT ANNOTATIONS... VIDEO_ROOT [-o list.csv]      # a list file to read or edit
    source: "FORMAT:ANNOTATIONS[,MORE]#VIDEO_ROOT[#option=value...]"     # directly in an extract config

======== ================================================ ==========================================
format   annotations                                      rows
======== ================================================ ==========================================
kinetics train.csv / validate.csv / test.csv               one per 10-s clip, split column
ssv2     labels JSON + train / validation / test JSON      one per video, template classes
ucf101   ucfTrainTestlist/ (option fold=1|2|3) or files    one per video, train / test
hmdb51   testTrainMulti_7030_splits/ (fold=1|2|3)          one per video, train / test
epic100  EPIC_100_{train,validation}.csv (+ class CSVs)    one per action segment (label=verb|noun|action)
charades Charades_v1_{train,test}.csv (+ classes txt)      one per video, multi-label in meta
======== ================================================ ==========================================

Every format also takes ``missing=keep|drop`` (videos that are not on disk). Each module's docstring
shows its files and says which label it picks. Add a format with one decorated function::

    @ADAPTERS.register("myformat")
    def myformat(annotations: list[Path], videos: Path, *, split: str = "") -> Listing: ...

Example:
    >>> listing = adapt("ucf101", ["/data/ucfTrainTestlist"], "/data/UCF-101", fold="1")  # doctest: +SKIP
    >>> listing.rows[0]["id"], listing.rows[0]["label"], listing.rows[0]["split"]  # doctest: +SKIP
    ('v_ApplyEyeMakeup_g08_c01', 'ApplyEyeMakeup', 'train')
"""

from stages.video.adapters import charades, epic, kinetics, ssv2, ucf_hmdb  # noqa: F401 - they register
from stages.video.adapters.base import ADAPTERS, Listing, adapt, is_format_spec, options_of, parse_spec

__all__ = ["ADAPTERS", "Listing", "adapt", "is_format_spec", "options_of", "parse_spec"]
