"""Video sources for stage one: list files, class folders and webdataset tar shards.

:func:`read_source` turns a source spec into :class:`VideoItem` rows plus the ordered class names; nothing
is decoded here, and a video path that does not exist is left for extraction to record as a failure.

Accepted specs:

- ``list.csv`` / ``list.jsonl``: ``path`` (relative to the list's folder), optional ``label``, ``id``,
  ``start``, ``end`` (seconds), ``split`` (``train``/``val``/``test``: stage two trains on ``train``,
  validates on ``val``, ``twostage eval --split test``), ``meta`` (a JSON object kept with the video in
  the store) and **targets** beyond the one ``label``: columns ``label:<name>`` (one class each, e.g.
  ``label:verb,label:noun``) and a multi-label column ``labels`` (class names separated by ``;``, or a
  JSON list in JSONL), kept as ``meta["targets"]`` for stage two's ``data.targets`` (a list without a
  ``label`` column takes its first ``label:<name>`` column as the label). A ``classes.txt`` next to
  the list fixes the class order. Rows that name the same file several times are **segments** of it
  (e.g. the actions of a long video): each is its own item, with ``meta["group"]`` = the file (so its
  decoding can be shared) and, unless the row has an ``id``, the id ``<file id>__<start>-<end>``
  (``P01_01__12.5-15.25``). Duplicate ids stay an error.
- ``FORMAT:ANNOTATIONS[,MORE]#VIDEO_ROOT[#option=value...]``: a data set's official annotation files,
  read by the ``FORMAT`` adapter (``kinetics``, ``ssv2``, ``ucf101``, ``hmdb51``, ``epic100``,
  ``charades``; see :mod:`stages.video.adapters`), e.g.
  ``ucf101:/data/ucf101/ucfTrainTestlist#/data/ucf101/UCF-101#fold=2``. ``twostage sources`` writes the
  same rows as a list file.
- ``ROOT/``: ``ROOT/<class>/<video files>``; or, when ``ROOT/labels.csv`` exists, that list.
- ``shard-{000000..000009}.tar`` or ``one.tar``: webdataset shards as video2dataset writes them. Members
  are grouped by key (name up to the first dot of the basename); the video member is read in memory by
  :func:`open_bytes`, never unpacked to disk.

Example:
    >>> items, classes = read_source("data/synth/labels.csv")  # doctest: +SKIP
    >>> items[0].id, items[0].label, classes  # doctest: +SKIP
    ('videos__000000', 'right', ['left', 'right', 'up', 'down'])
"""

from __future__ import annotations

import csv
import json
import os
import re
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from stages.core.errors import InvalidIdError, LabelError, SourceError
from stages.video import adapters
from stages.video.adapters.common import VIDEO_EXTENSIONS, normalise_split, parse_meta, segment_id

TAR_PREFIX = "tar://"
MAX_ID_LENGTH = 200  # ids become store keys and file names: keep them well under filesystem limits
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_EXPECTED = "a .csv/.jsonl list, a ROOT/<class>/<video> folder tree, or webdataset .tar shards"


@dataclass(frozen=True)
class VideoItem:
    """One video to extract.

    Attributes:
        id: unique id, safe as a file or key name (see :func:`validate_id`).
        path: absolute local path, or ``tar://<abs tar path>#<member name>`` for a tar member.
        label: class name, or ``None`` for unlabelled videos.
        start: optional trim start in seconds.
        end: optional trim end in seconds.
        meta: extra facts, e.g. ``{"shard", "key", "member", "offset", "size"}`` for webdataset members;
            ``split`` (train/val/test) and ``group`` (the file several segments share) from lists.
    """

    id: str
    path: str
    label: str | None
    start: float | None = None
    end: float | None = None
    meta: dict = field(default_factory=dict, hash=False)


def validate_id(video_id: str) -> str:
    """Return ``video_id`` if it is safe as a store key and file name, else raise :class:`InvalidIdError`.

    Rejected: empty, longer than 200 characters, containing ``/``, ``\\``, ``..``, NUL or control chars.
    """
    problem = None
    if not isinstance(video_id, str) or not video_id:
        problem = "it is empty"
    elif len(video_id) > MAX_ID_LENGTH:
        problem = f"it has {len(video_id)} characters (at most {MAX_ID_LENGTH})"
    elif "/" in video_id or "\\" in video_id or ".." in video_id:
        problem = "it contains '/', '\\' or '..' and could escape the store directory"
    elif any(ord(c) < 32 or ord(c) == 127 for c in video_id):
        problem = "it contains NUL or control characters"
    if problem:
        raise InvalidIdError(
            f"video id {video_id!r} is invalid: {problem}; use letters, digits, '_', '-', '.' "
            "(give an explicit 'id' column to override the id derived from the path)"
        )
    return video_id


def read_source(spec: str, *, classes: Sequence[str] | None = None) -> tuple[list[VideoItem], list[str]]:
    """Read a video source into items and the ordered class names.

    Args:
        spec: a ``.csv``/``.jsonl`` list, a class-per-folder directory, webdataset tar shard(s)
            (``shard-{000..009}.tar``), or ``FORMAT:ANNOTATIONS#VIDEO_ROOT`` (see the module docstring).
        classes: the class names in index order; every label must be one of them. ``None``: a
            ``classes.txt`` next to the list if present, else the sorted unique labels (numerically when
            all labels are integers).

    Returns:
        ``(items, class_names)``; ``class_names.index(item.label)`` is the stable class index.

    Raises:
        SourceError: missing source, unreadable list, missing ``path`` column, duplicate ids, no videos.
        InvalidIdError: an unsafe id.
        LabelError: a label not in ``classes``.
    """
    spec = os.fspath(spec)
    if adapters.is_format_spec(spec):
        name, annotations, videos, options = adapters.parse_spec(spec)
        return read_listing(adapters.adapt(name, annotations, videos, **options), spec, classes=classes)
    if _is_tar_spec(spec):
        items, origins, class_file = _read_shards(expand_braces(spec)), {}, None
    else:
        path = Path(spec)
        if path.is_dir() and (path / "labels.csv").is_file():
            path = path / "labels.csv"
        if path.is_dir():
            items, origins, class_file = _read_folders(path), {}, None
        else:
            items, origins = _read_list(path)
            class_file = path.parent / "classes.txt"
    if not items:
        raise SourceError(f"source {spec!r} holds no videos; expected {_EXPECTED}")
    _check_duplicates(items, spec)
    if classes is None and class_file is not None and class_file.is_file():
        classes = [ln.strip() for ln in class_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return items, _resolve_classes(items, classes, origins, spec)


def read_listing(
    listing: adapters.Listing, origin: str, *, classes: Sequence[str] | None = None
) -> tuple[list[VideoItem], list[str]]:
    """Items and class names of an adapter's rows, checked like a list file's; ``classes`` (else the
    format's own class order, else the sorted labels) fixes the class order. Notes become warnings."""
    for note in listing.notes:
        warnings.warn(f"{origin}: {note}", stacklevel=2)
    rows = ((r.get("where") or f"{origin} row {n}", r) for n, r in enumerate(listing.rows, 1))
    items, origins = _items(rows, Path(os.sep))
    if not items:
        raise SourceError(f"source {origin!r} holds no videos; check the annotation files and options")
    _check_duplicates(items, origin)
    return items, _resolve_classes(items, listing.classes if classes is None else classes, origins, origin)


def _is_tar_spec(spec: str) -> bool:
    return spec.endswith(_TAR_SUFFIXES) or bool(re.search(r"\{[^}]*(\.\.|,)[^}]*\}", spec))


# ----------------------------------------------------------------------------- list files (csv / jsonl)


def _read_list(path: Path) -> tuple[list[VideoItem], dict[str, str]]:
    """Items of a csv/jsonl list and, per id, where it came from (``file:line``)."""
    if not path.is_file():
        raise SourceError(f"video source {str(path)!r} does not exist; expected {_EXPECTED}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _csv_records(path)
    elif suffix in (".jsonl", ".ndjson"):
        records = _jsonl_records(path)
    else:
        raise SourceError(f"video source {str(path)!r} has an unknown type {suffix!r}; expected {_EXPECTED}")
    return _items(((f"{path}:{line}", rec) for line, rec in records), path.parent)


def _items(records: Iterable[tuple[str, dict]], root: Path) -> tuple[list[VideoItem], dict[str, str]]:
    """Items of ``(where, row)`` records and, per id, where it came from. Rows naming one file several
    times are its segments: ``meta["group"]`` = the file; without an ``id``: ``<file id>__<start>-<end>``."""
    records = list(records)
    items = [_item_from_record(rec, root, where) for where, rec in records]
    uses = Counter(it.path for it in items)
    origins: dict[str, str] = {}
    for n, ((where, rec), item) in enumerate(zip(records, items, strict=True)):
        if uses[item.path] > 1:
            video_id = item.id if _text(rec.get("id")) else segment_id(item.id, item.start, item.end)
            item = items[n] = replace(item, id=validate_id(video_id), meta={**item.meta, "group": item.path})
        origins.setdefault(item.id, where)
    return items, origins


def _csv_records(path: Path) -> Iterable[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "path" not in fields:
            raise SourceError(
                f"{path}: no 'path' column; found columns {fields}; expected a header like 'path,label'"
            )
        reader.fieldnames = fields
        rows = [(reader.line_num, row) for row in reader]
    return rows


def _jsonl_records(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}:{n}: invalid JSON ({e.msg}); expected one object per line") from e
            if not isinstance(rec, dict) or "path" not in rec:
                found = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
                raise SourceError(f"{path}:{n}: no 'path' key; found {found}; expected {{\"path\": ...}}")
            rows.append((n, rec))
    return rows


def _item_from_record(rec: dict, root: Path, where: str) -> VideoItem:
    for key, allowed in (("path", (str,)), ("id", (str, int)), ("label", (str, int))):
        value = rec.get(key)  # JSONL cells may be any JSON value; a list must not become a file name
        if value is not None and (isinstance(value, bool) or not isinstance(value, allowed)):
            raise SourceError(
                f"{where}: {key}={value!r} is a {type(value).__name__}; expected text (the video's {key})"
            )
    raw = str(rec.get("path") or "").strip()
    if not raw:
        raise SourceError(f"{where}: empty 'path'; expected a video file path relative to the list")
    video_id = _text(rec.get("id")) or _id_from_path(raw, root)
    label = _text(rec.get("label"))
    start, end = _seconds(rec.get("start"), "start", where), _seconds(rec.get("end"), "end", where)
    if start is not None and end is not None and end <= start:
        raise SourceError(f"{where}: end={end} is not after start={start}; expected start < end (seconds)")
    try:
        validate_id(video_id)
    except InvalidIdError as e:
        raise InvalidIdError(f"{where}: {e}") from None
    meta = parse_meta(rec.get("meta"), where)
    split = normalise_split(rec.get("split") or meta.pop("split", None), where)
    targets = check_targets(meta.pop("targets", None), where) | _target_columns(rec, where)
    if label is None and "label" not in rec:  # a list of label:<name> columns only: the first is the label
        label = next((v for k, v in targets.items() if isinstance(v, str) and f"label:{k}" in rec), None)
    meta = meta | ({"split": split} if split else {}) | ({"targets": targets} if targets else {})
    return VideoItem(video_id, os.path.abspath(os.path.join(root, raw)), label, start, end, meta)


def _target_columns(rec: dict, where: str) -> dict[str, str | list[str]]:
    """``label:<name>`` cells (one class each) and the multi-label ``labels`` cell of a list row."""
    out: dict[str, str | list[str]] = {}
    for key, value in rec.items():
        if isinstance(key, str) and key.startswith("label:"):
            name = key[len("label:") :].strip()
            if isinstance(value, list | dict | bool):
                raise SourceError(f"{where}: {key}={value!r}; expected one class name")
            if (text := _text(value)) is not None:
                out[name] = text
    value = rec.get("labels")
    if isinstance(value, str):
        value = [v for v in (p.strip() for p in value.split(";")) if v]
    if value is not None:
        out["labels"] = value
    return check_targets(out, where)


def check_targets(value: object, where: str) -> dict[str, str | list[str]]:
    """``{name: class name | [class names]}`` (a video's targets), checked; ``None`` -> ``{}``."""
    if value is None:
        return {}
    expected = 'expected {name: class name, or a list of class names} like {"verb": "open"}'
    if not isinstance(value, dict):
        raise SourceError(f"{where}: targets={value!r}; {expected}")
    out: dict[str, str | list[str]] = {}
    for name, v in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name == "label":
            raise SourceError(
                f"{where}: target name {name!r}; expected letters, digits or '_' (not 'label', which is the "
                "label column), like 'verb'"
            )
        if isinstance(v, list) and all(isinstance(c, str | int) and not isinstance(c, bool) for c in v):
            out[name] = sorted({str(c).strip() for c in v if str(c).strip()})
        elif isinstance(v, str | int) and not isinstance(v, bool) and str(v).strip():
            out[name] = str(v).strip()
        else:
            raise SourceError(f"{where}: target {name}={v!r}; {expected}")
    return out


def _text(value: object) -> str | None:
    """A cell as stripped text; empty or missing -> None."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _seconds(value: object, name: str, where: str) -> float | None:
    text = _text(value)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise SourceError(f"{where}: {name}={text!r} is not a number; expected seconds") from None
    if not seconds >= 0:  # also rejects NaN
        raise SourceError(f"{where}: {name}={text!r}; expected seconds >= 0")
    return seconds


def _id_from_path(raw: str, root: Path) -> str:
    """``cat/000.mp4`` -> ``cat__000``: the path relative to the list, without extension, '/' -> '__'.

    ``..`` parts are dropped; an absolute path outside the list's folder keeps all its parts.
    """
    path = Path(os.path.normpath(raw))
    if path.is_absolute():
        try:
            path = path.relative_to(os.path.abspath(root))
        except ValueError:
            path = Path(*path.parts[1:])
    parts = [p for p in path.parts if p not in ("", ".", "..")]
    if parts:
        parts[-1] = os.path.splitext(parts[-1])[0]
    return "__".join(parts).replace("\\", "__")


# ----------------------------------------------------------------------------- class folders


def _is_video(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in VIDEO_EXTENSIONS and "." in name


def _read_folders(root: Path) -> list[VideoItem]:
    """``ROOT/<class>/**/<video>``: label = class folder name; id = relative path without extension."""
    strays = sorted(
        p.name for p in root.iterdir() if p.is_file() and _is_video(p.name) and not p.name.startswith(".")
    )
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for video in sorted(class_dir.rglob("*")):
            rel = video.relative_to(root)
            if video.is_file() and _is_video(video.name) and not any(s.startswith(".") for s in rel.parts):
                items.append(VideoItem(_id_from_path(str(rel), root), str(video.absolute()), class_dir.name))
    if strays and items:
        raise SourceError(
            f"{root}: videos {strays[:5]} lie directly in the root next to class folders; expected "
            "ROOT/<class>/<video>: move them into a class folder"
        )
    if strays:  # a flat folder of videos: unlabelled
        items = [VideoItem(_id_from_path(n, root), str((root / n).absolute()), None) for n in strays]
    for item in items:
        validate_id(item.id)
    return items


# ----------------------------------------------------------------------------- webdataset shards


def expand_braces(pattern: str) -> list[str]:
    """``a-{00..02}.tar`` -> ``[a-00.tar, a-01.tar, a-02.tar]``; also ``{x,y}`` lists."""
    try:
        from braceexpand import braceexpand  # ships with webdataset
    except ImportError:
        return _expand_braces(pattern)
    return list(braceexpand(pattern))


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [out for opt in options for out in _expand_braces(head + opt + tail)]


def _read_shards(shards: list[str]) -> list[VideoItem]:
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise SourceError(f"{len(missing)} tar shard(s) do not exist: {missing[:5]}; check the pattern")
    items: list[VideoItem] = []
    for shard in shards:
        items.extend(_read_shard(os.path.abspath(shard)))
    return items


def _unsafe_member(m: tarfile.TarInfo) -> bool:
    name = m.name.replace("\\", "/")
    return name.startswith("/") or ".." in PurePosixPath(name).parts or not (m.isfile() or m.isdir())


def _read_shard(shard: str) -> list[VideoItem]:
    """One shard's samples; members are only listed and small label members read, nothing is extracted."""
    try:
        tar = tarfile.open(shard, "r:")  # uncompressed: member offsets let open_bytes seek directly
        plain = True
    except tarfile.ReadError:
        tar, plain = tarfile.open(shard, "r:*"), False
    with tar:
        members = [m for m in tar.getmembers() if not m.isdir()]
        unsafe = [m.name for m in members if _unsafe_member(m)]
        if unsafe:
            raise SourceError(
                f"tar shard {shard} has unsafe members {unsafe[:5]} (absolute, '..' or links); refusing "
                "the shard: rebuild it with relative member names"
            )
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        for m in members:
            key, ext = _split_key(m.name)
            samples.setdefault(key, {})[ext] = m
        return [it for key, group in samples.items() if (it := _sample_item(tar, shard, key, group, plain))]


def _split_key(name: str) -> tuple[str, str]:
    """``dir/000.mp4`` -> (``dir/000``, ``mp4``): the key ends at the basename's first dot (webdataset)."""
    while name.startswith("./"):
        name = name[2:]
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _sample_item(tar: tarfile.TarFile, shard: str, key: str, group: dict, plain: bool) -> VideoItem | None:
    videos = sorted(ext for ext in group if ext.rsplit(".", 1)[-1] in VIDEO_EXTENSIONS)
    if not videos:
        return None  # metadata-only sample (e.g. a failed download): nothing to extract
    if len(videos) > 1:
        raise SourceError(f"{shard}: sample {key!r} has several video members {videos}; expected one")
    member = group[videos[0]]
    meta = {"shard": shard, "key": key, "member": member.name, "size": member.size}
    if plain:
        meta["offset"] = member.offset_data
    video_id = validate_id(key.replace("/", "__"))
    path = f"{TAR_PREFIX}{shard}#{member.name}"
    return VideoItem(video_id, path, _sample_label(tar, shard, key, group), meta=meta)


def _sample_label(tar: tarfile.TarFile, shard: str, key: str, group: dict) -> str | None:
    """Label from ``.cls`` (int or text), else ``.json`` key ``label``, else ``.txt``."""
    if "cls" in group:
        return _text(_read_member(tar, group["cls"]).decode("utf-8"))
    if "json" in group:
        try:
            record = json.loads(_read_member(tar, group["json"]))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SourceError(f"{shard}: {group['json'].name} is not valid JSON ({e})") from e
        if isinstance(record, dict) and record.get("label") is not None:
            return _text(record["label"])
    if "txt" in group:
        return _text(_read_member(tar, group["txt"]).decode("utf-8"))
    return None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    return f.read() if f is not None else b""


def open_bytes(item: VideoItem) -> bytes | str:
    """The local file path for ordinary videos, or the tar member's bytes, read in memory.

    A tar member is read by its recorded offset when the shard is an uncompressed tar, else through
    :mod:`tarfile`; it is never written to disk.
    """
    if not item.path.startswith(TAR_PREFIX):
        return item.path
    shard, sep, name = item.path[len(TAR_PREFIX) :].rpartition("#")
    if not sep or not shard:
        raise SourceError(f"tar path {item.path!r} is malformed; expected 'tar://<shard>#<member>'")
    if "offset" in item.meta and "size" in item.meta:
        with open(shard, "rb") as f:
            f.seek(item.meta["offset"])
            return f.read(item.meta["size"])
    with tarfile.open(shard, "r:*") as tar:
        try:
            member = tar.getmember(name)
        except KeyError:
            raise SourceError(f"{shard} has no member {name!r}; was the shard rewritten?") from None
        if _unsafe_member(member):
            raise SourceError(f"{shard}: member {name!r} is unsafe (absolute, '..' or a link); refusing it")
        return _read_member(tar, member)


def _check_duplicates(items: list[VideoItem], spec: str) -> None:
    dupes = sorted(i for i, n in Counter(it.id for it in items).items() if n > 1)
    if dupes:
        raise SourceError(
            f"source {spec!r} has {len(dupes)} duplicate video id(s): {dupes}; ids must be unique "
            "(add an 'id' column or rename the files)"
        )


def _resolve_classes(
    items: list[VideoItem], classes: Sequence[str] | None, origins: dict[str, str], spec: str
) -> list[str]:
    labels = [it.label for it in items if it.label is not None]
    if classes is None:
        unique = set(labels)
        numeric = all(re.fullmatch(r"-?\d+", lab) for lab in unique)
        return sorted(unique, key=int) if numeric else sorted(unique)
    names = [str(c) for c in classes]
    known = set(names)
    for it in items:
        if it.label is not None and it.label not in known:
            where = origins.get(it.id, it.path)
            raise LabelError(
                f"label {it.label!r} of video {it.id!r} ({where}) is not a known class; known classes: "
                f"{names}; fix the label or add it to the class list (classes.txt)"
            )
    return names
