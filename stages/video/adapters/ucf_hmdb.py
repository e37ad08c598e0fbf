"""UCF101 and HMDB51 split files -> source-list rows.

UCF101 (``ucfTrainTestlist/``)::

    classInd.txt      1 ApplyEyeMakeup            (1-based class index, class name)
    trainlist01.txt   ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1
    testlist01.txt    ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi

Videos: ``<video root>/<Class>/<v_...>.avi`` (``UCF-101/``). Rows: id the file stem; label the class
folder of the line (checked against the index when the line has one); split train / test from the list;
classes in ``classInd.txt`` order. Give the folder (with the option ``fold=1|2|3``, default 1) or files.

HMDB51 (``testTrainMulti_7030_splits/``)::

    brush_hair_test_split1.txt   April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1

``1`` = train, ``2`` = test, ``0`` = not in this split (left out). Videos: ``<video root>/<class>/<name>``.
Rows: id the file stem; label the class named by the split file; classes sorted.
"""

from __future__ import annotations

import re
from pathlib import Path

from stages.core.errors import SourceError
from stages.video.adapters.base import ADAPTERS, Listing, files_in, positive_int, row
from stages.video.adapters.common import VideoIndex


def _lines(path: Path) -> list[tuple[str, list[str]]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(f"{path}:{n}", ln.split()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]


def _class_index(path: Path) -> list[str]:
    classes: dict[int, str] = {}
    for where, cells in _lines(path):
        if len(cells) != 2 or not cells[0].isdigit():
            raise SourceError(f"{where}: {' '.join(cells)!r}; expected '<index> <ClassName>' (classInd.txt)")
        classes[int(cells[0])] = cells[1]
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise SourceError(f"{path}: class indices {sorted(classes)[:5]}...; expected 1..{len(classes)}")
    return [classes[i] for i in sorted(classes)]


@ADAPTERS.register("ucf101")
def ucf101(annotations: list[Path], videos: Path, *, fold: str = "1") -> Listing:
    """UCF101 (classInd.txt + trainlistNN.txt / testlistNN.txt) -> one row per video."""
    k = positive_int(fold, "fold", "ucf101", (1, 2, 3))
    files = files_in(annotations, f"*list0{k}.txt") + files_in(
        [a for a in annotations if a.is_dir()], "classInd.txt"
    )
    classes = next((_class_index(f) for f in files if f.name.lower().startswith("classind")), None)
    canonical = {c.lower(): c for c in classes or []}  # e.g. HandstandPushups: one spelling for all lines
    index, rows = VideoIndex(videos), []
    for path in files:
        name = path.name.lower()
        if name.startswith("classind"):
            continue
        split = "train" if name.startswith("trainlist") else "test" if name.startswith("testlist") else None
        if split is None:
            raise SourceError(
                f"{path}: not a UCF101 split file; expected classInd.txt, trainlistNN.txt, testlistNN.txt"
            )
        for where, cells in _lines(path):
            rel = cells[0].replace("\\", "/")
            folder, _, base = rel.rpartition("/")
            if not folder or len(cells) > 2:
                raise SourceError(
                    f"{where}: {' '.join(cells)!r}; expected 'Class/v_Class_g08_c01.avi [index]'"
                )
            if len(cells) == 2 and classes is not None:
                number = positive_int(cells[1], "class index", "ucf101", tuple(range(1, len(classes) + 1)))
                if classes[number - 1].lower() != folder.lower():
                    raise SourceError(
                        f"{where}: folder {folder!r} but class {number} is {classes[number - 1]!r} "
                        "in classInd.txt; expected the two to agree"
                    )
            stem = base.rsplit(".", 1)[0]
            label = canonical.get(folder.lower(), folder)
            rows.append(row(where, index.find(stem, rel), stem, label, split))
    if not rows:
        raise SourceError(
            f"ucf101: no trainlist0{k}.txt / testlist0{k}.txt among {[str(a) for a in annotations]}"
        )
    return Listing(rows, classes)


_HMDB_FILE = re.compile(r"(.+)_test_split(\d)\.txt$")
_HMDB_SPLITS = {"1": "train", "2": "test"}


@ADAPTERS.register("hmdb51")
def hmdb51(annotations: list[Path], videos: Path, *, fold: str = "1") -> Listing:
    """HMDB51 (``<class>_test_split<k>.txt``: ``<video> 0|1|2``) -> one row per video of the split."""
    k = positive_int(fold, "fold", "hmdb51", (1, 2, 3))
    index, rows, classes = VideoIndex(videos), [], set()
    for path in files_in(annotations, f"*_test_split{k}.txt"):
        m = _HMDB_FILE.match(path.name)
        if not m:
            raise SourceError(f"{path}: not an HMDB51 split file; expected '<class>_test_split<1|2|3>.txt'")
        label = m.group(1)
        classes.add(label)
        for where, cells in _lines(path):
            if len(cells) != 2 or cells[1] not in ("0", "1", "2"):
                raise SourceError(
                    f"{where}: {' '.join(cells)!r}; expected '<video>.avi <0|1|2>' "
                    "(0 unused, 1 train, 2 test)"
                )
            if cells[1] == "0":
                continue
            stem = cells[0].rsplit(".", 1)[0]
            rows.append(
                row(where, index.find(stem, f"{label}/{cells[0]}"), stem, label, _HMDB_SPLITS[cells[1]])
            )
    if not rows:
        raise SourceError(
            f"hmdb51: no '<class>_test_split{k}.txt' rows among {[str(a) for a in annotations]}"
        )
    return Listing(rows, sorted(classes))
