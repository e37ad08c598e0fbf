"""Tests for the video sources of stage one (stages/video/sources.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from stages.core.errors import InvalidIdError, LabelError, SourceError
from stages.video import synth
from stages.video.sources import VideoItem, open_bytes, read_source, validate_id


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, task="appearance", videos=4, seed=0, size=32, frames=4, classes=2)
    return out


@pytest.fixture(scope="module")
def folder_tree(synth_dir, tmp_path_factory) -> Path:
    """ROOT/<class>/<video>, built from the synthetic set."""
    root = tmp_path_factory.mktemp("tree")
    for line in (synth_dir / "labels.csv").read_text().splitlines()[1:]:
        rel, label = line.split(",")
        (root / label).mkdir(exist_ok=True)
        shutil.copy(synth_dir / rel, root / label / Path(rel).name)
    return root


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(tree: Path, pattern: str, n_shards: int, cls=lambda label, i: label.encode()) -> None:
    """Webdataset shards of the folder tree: key ``<class>/<name>``, members ``.mp4`` + ``.cls``."""
    videos = sorted(tree.rglob("*.mp4"))
    for s in range(n_shards):
        mode = "w:gz" if pattern.endswith(".gz") else "w"
        with tarfile.open(pattern.format(s), mode) as tar:
            for i, video in enumerate(videos[s::n_shards]):
                key = f"{video.parent.name}/{video.stem}"
                add_member(tar, f"{key}.mp4", video.read_bytes())
                add_member(tar, f"{key}.cls", cls(video.parent.name, i))
                add_member(tar, f"{key}.json", json.dumps({"url": "x", "label": "ignored"}).encode())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- lists


def test_csv_relative_paths_ids_and_trims(tmp_path):
    text = "path,label,end,start\ncat/000.mp4,cat,2.5,1\ndog/000.mp4,dog,,\n"
    lst = write(tmp_path / "lists" / "train.csv", text)
    items, classes = read_source(str(lst))
    assert classes == ["cat", "dog"]
    assert [i.id for i in items] == ["cat__000", "dog__000"]  # same file name in two folders: no collision
    assert items[0].path == str(tmp_path / "lists" / "cat" / "000.mp4")
    assert (items[0].start, items[0].end, items[1].start, items[1].end) == (1.0, 2.5, None, None)
    assert open_bytes(items[0]) == items[0].path  # local files: the path, not bytes


def test_jsonl_matches_csv_and_explicit_ids(tmp_path):
    recs = [{"path": "../v/a.mp4", "label": 3, "id": "clip-a"}, {"path": "b.avi", "label": 10}]
    recs.append({"path": "c.mp4"})
    lst = write(tmp_path / "l" / "x.jsonl", "\n".join(json.dumps(r) for r in recs) + "\n\n")
    items, classes = read_source(str(lst))
    assert [i.id for i in items] == ["clip-a", "b", "c"]
    assert [i.label for i in items] == ["3", "10", None]
    assert classes == ["3", "10"]  # integer labels sort numerically
    assert items[0].path == str(tmp_path / "v" / "a.mp4")


def test_id_outside_the_list_folder_drops_dotdot(tmp_path):
    text = f"path,label\n../v/a.mp4,x\n{tmp_path}/l/in/b.mp4,x\n/data/c.mkv,x\n"
    items, _ = read_source(str(write(tmp_path / "l" / "x.csv", text)))
    assert [i.id for i in items] == ["v__a", "in__b", "data__c"]
    assert items[2].path == "/data/c.mkv"


def test_synth_folder_uses_labels_csv_and_classes_txt(tmp_path):
    synth.generate(tmp_path, task="direction", videos=4, seed=0, size=32, frames=3)
    items, classes = read_source(str(tmp_path))
    assert classes == ["left", "right", "up", "down"]  # classes.txt order, not sorted
    assert [i.id for i in items] == [f"videos__{n:06d}" for n in range(4)]
    assert all(os.path.isfile(i.path) for i in items)


def test_explicit_classes_override_order(synth_dir):
    _, classes = read_source(str(synth_dir / "labels.csv"), classes=["digit1", "digit0", "digit7"])
    assert classes == ["digit1", "digit0", "digit7"]


# ----------------------------------------------------------------------------- folders and shards


def test_class_folders(folder_tree):
    items, classes = read_source(str(folder_tree))
    assert classes == ["digit0", "digit1"]
    assert {i.id: i.label for i in items} == {
        f"{p.parent.name}__{p.stem}": p.parent.name for p in folder_tree.rglob("*.mp4")
    }


def test_flat_folder_is_unlabelled(tmp_path):
    for name in ("b.MP4", "a.webm", "notes.txt", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"x")
    items, classes = read_source(str(tmp_path))
    assert [(i.id, i.label) for i in items] == [("a", None), ("b", None)] and classes == []


@pytest.mark.parametrize("pattern,n_shards", [("shard-{:06d}.tar", 2), ("one-{:d}.tar.gz", 1)])
def test_webdataset_equals_folder_input(folder_tree, tmp_path, pattern, n_shards):
    write_shards(folder_tree, str(tmp_path / pattern), n_shards)
    spec = str(tmp_path / ("shard-{000000..000001}.tar" if n_shards == 2 else "one-0.tar.gz"))
    tar_items, tar_classes = read_source(spec)
    dir_items, dir_classes = read_source(str(folder_tree))
    assert tar_classes == dir_classes
    assert len(set(tar_items)) == len(tar_items)  # items hash (meta is left out of the hash)
    assert {i.id: i.label for i in tar_items} == {i.id: i.label for i in dir_items}  # .cls wins over .json
    by_id = {i.id: i for i in dir_items}
    for item in tar_items:
        assert item.path.startswith("tar://" + str(tmp_path))
        assert item.meta["key"].replace("/", "__") == item.id
        assert open_bytes(item) == Path(by_id[item.id].path).read_bytes()


def test_webdataset_int_cls_and_missing_shard(folder_tree, tmp_path):
    write_shards(folder_tree, str(tmp_path / "s{}.tar"), 1, cls=lambda label, i: str(i * 5).encode())
    items, classes = read_source(str(tmp_path / "s0.tar"))
    assert classes == ["0", "5", "10", "15"]
    with pytest.raises(SourceError, match=r"1 tar shard\(s\) do not exist: .*s1\.tar"):
        read_source(str(tmp_path / "s{0..1}.tar"))


@pytest.mark.parametrize("bad_name", ["../evil.mp4", "/abs/evil.mp4", "a/../../evil.mp4"])
def test_unsafe_tar_member_rejected_and_nothing_written(tmp_path, bad_name):
    work = tmp_path / "work"
    work.mkdir()
    shard = work / "bad.tar"
    with tarfile.open(shard, "w") as tar:
        add_member(tar, "ok.mp4", b"fine")
        add_member(tar, bad_name, b"evil")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SourceError, match=r"unsafe members \[.*evil\.mp4.*\].*refusing"):
        read_source(str(shard))
    assert sorted(tmp_path.rglob("*")) == before
    assert not Path("/abs/evil.mp4").exists()
    forged = VideoItem("x", f"tar://{shard}#{bad_name}", None)  # no offset: goes through tarfile
    with pytest.raises(SourceError, match="is unsafe"):
        open_bytes(forged)


def test_tar_symlink_member_rejected(tmp_path):
    shard = tmp_path / "link.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("v.mp4")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(SourceError, match=r"unsafe members \['v\.mp4'\]"):
        read_source(str(shard))


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("video_id", ["", "../x", "a/b", "a\\b", "..", "x\x00y", "tab\there", "x" * 201])
def test_validate_id_rejects(video_id):
    with pytest.raises(InvalidIdError, match="is invalid"):
        validate_id(video_id)


@pytest.mark.parametrize("video_id", ["a", "cat__000", "v-1.2_x", "x" * 200])
def test_validate_id_accepts(video_id):
    assert validate_id(video_id) == video_id


@pytest.mark.parametrize(
    "text,error,match",
    [
        ("id,path,label\n../x,a.mp4,c\n", InvalidIdError, r"x\.csv:2: video id '\.\./x' is invalid"),
        ("id,path,label\na/b,a.mp4,c\n", InvalidIdError, r"'a/b' is invalid: it contains '/'"),
        ("path,label\na..b.mp4,c\n", InvalidIdError, r"'a\.\.b' is invalid: .*give an explicit 'id' column"),
        ("file,label\na.mp4,c\n", SourceError, r"no 'path' column; found columns \['file', 'label'\]"),
        ("path,label\n", SourceError, "holds no videos"),
        (
            "id,path\nd,a.mp4\nd,b.mp4\ne,c.mp4\ne,e.mp4\n",
            SourceError,
            r"2 duplicate video id\(s\): \['d', 'e",
        ),
        ("path\na/1.mp4\na__1.mp4\n", SourceError, r"duplicate video id\(s\): \['a__1'\]"),
        ("path,start\na.mp4,soon\n", SourceError, r"x\.csv:2: start='soon' is not a number"),
        ("path,start,end\na.mp4,3,1\n", SourceError, "end=1.0 is not after start=3.0"),
        ("path,label\n,c\n", SourceError, r"x\.csv:2: empty 'path'"),
    ],
)
def test_bad_csv(tmp_path, text, error, match):
    with pytest.raises(error, match=match):
        read_source(str(write(tmp_path / "x.csv", text)))


@pytest.mark.parametrize(
    "text,match",
    [
        ('{"path": "a.mp4"}\nnot json\n', r"x\.jsonl:2: invalid JSON"),
        ('{"file": "a.mp4"}\n', r"x\.jsonl:1: no 'path' key; found \['file'\]"),
        ("[1, 2]\n", r"no 'path' key; found list"),
    ],
)
def test_bad_jsonl(tmp_path, text, match):
    with pytest.raises(SourceError, match=match):
        read_source(str(write(tmp_path / "x.jsonl", text)))


def test_label_not_in_classes(tmp_path):
    lst = write(tmp_path / "x.csv", "path,label\na.mp4,cat\nb.mp4,cow\n")
    match = r"label 'cow' of video 'b' \(.*x\.csv:3\).*known classes: \['cat', 'dog'\]"
    with pytest.raises(LabelError, match=match):
        read_source(str(lst), classes=["cat", "dog"])
    write(tmp_path / "classes.txt", "dog\ncat\n")  # classes.txt next to the list applies too
    with pytest.raises(LabelError, match="label 'cow'"):
        read_source(str(lst))


@pytest.mark.parametrize(
    "spec,match",
    [("missing.csv", "does not exist"), ("list.txt", "unknown type '.txt'"), ("empty", "holds no videos")],
)
def test_bad_source(tmp_path, spec, match):
    write(tmp_path / "list.txt", "a.mp4\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=match):
        read_source(str(tmp_path / spec))


def test_stray_videos_next_to_class_folders(folder_tree, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(folder_tree, root)
    (root / "stray.mp4").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"videos \['stray\.mp4'\] lie directly in the root"):
        read_source(str(root))
