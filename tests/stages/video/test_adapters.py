"""Annotation-format adapters (stages/video/adapters): each official format, written by hand in a tiny
sample, becomes the expected ids, labels, splits, segments and classes; ``twostage sources`` writes a list
that reads back as the same items; bad files and options are refused with messages that say what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.commands import sources as sources_cmd
from stages.core.errors import LabelError, RegistryError, SourceError
from stages.video import adapters
from stages.video.sources import read_source


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def touch(root: Path, *names: str) -> None:
    for name in names:
        write(root / name, "")


def by_id(items: list) -> dict:
    return {it.id: it for it in items}


# ----------------------------------------------------------------------------------------- samples


@pytest.fixture
def kinetics(tmp_path: Path) -> tuple[Path, Path]:
    ann = tmp_path / "kinetics400"
    write(
        ann / "train.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        'abseiling,--33Lscn6sk,4,14,train,0\n"air drumming",-VtLx-mcPds,0,10,train,0\n'
        "abseiling,0wR5jVB-WPk,417,427,train,1\n",
    )
    write(
        ann / "validate.csv", "label,youtube_id,time_start,time_end,split\nabseiling,3caPS4FHFF8,30,40,val\n"
    )
    write(ann / "test.csv", "youtube_id,time_start,time_end,split\n0Jk3Bx5lHm4,12,22,test\n")
    videos = tmp_path / "k400"
    touch(
        videos,
        "train/abseiling/--33Lscn6sk_000004_000014.mp4",
        "train/air_drumming/-VtLx-mcPds_000000_000010.mp4",
        "raw/0wR5jVB-WPk.mkv",
        "val/3caPS4FHFF8_000030_000040.mp4",
    )
    return ann, videos


def test_kinetics(kinetics):
    ann, videos = kinetics
    spec = f"kinetics:{ann / 'train.csv'},{ann / 'validate.csv'},{ann / 'test.csv'}#{videos}"
    with pytest.warns(UserWarning, match="1 of 5 videos are not under"):
        items, classes = read_source(spec)
    got = by_id(items)
    assert classes == ["abseiling", "air drumming"]
    clip = got["--33Lscn6sk_000004_000014"]
    assert (clip.label, clip.meta["split"], clip.start, clip.end) == ("abseiling", "train", None, None)
    assert clip.path == str(videos / "train/abseiling/--33Lscn6sk_000004_000014.mp4")  # found anywhere below
    whole = got["0wR5jVB-WPk_000417_000427"]  # only the untrimmed YouTube video is there: trimmed here
    assert (whole.path, whole.start, whole.end) == (str(videos / "raw/0wR5jVB-WPk.mkv"), 417.0, 427.0)
    assert got["-VtLx-mcPds_000000_000010"].label == "air drumming"
    assert got["3caPS4FHFF8_000030_000040"].meta["split"] == "val"
    test = got["0Jk3Bx5lHm4_000012_000022"]
    assert (test.label, test.meta["split"], test.path) == (
        None,
        "test",
        str(videos / "0Jk3Bx5lHm4_000012_000022.mp4"),
    )


def test_ssv2(tmp_path):
    labels = {
        "Approaching something with your camera": "0",
        "Holding something next to something": "2",
        "Pushing something from left to right": "1",
    }
    train = [
        {
            "id": "78687",
            "label": "holding potato next to vicks vaporub bottle",
            "template": "Holding [something] next to [something]",
            "placeholders": ["potato", "vicks"],
        },
        {
            "id": "42326",
            "label": "pushing a cup from left to right",
            "template": "Pushing [something] from left to right",
            "placeholders": ["a cup"],
        },
    ]
    val = [
        {
            "id": "74225",
            "label": "approaching a chair with your camera",
            "template": "Approaching [something] with your camera",
            "placeholders": ["a chair"],
        }
    ]
    ann = tmp_path / "labels"
    docs = {"labels": labels, "train": train, "validation": val, "test": [{"id": "1420"}]}
    files = [
        write(ann / f"something-something-v2-{name}.json", json.dumps(doc)) for name, doc in docs.items()
    ]
    videos = tmp_path / "20bn-something-something-v2"
    touch(videos, "78687.webm", "42326.webm", "74225.webm", "1420.webm")
    items, classes = read_source(f"ssv2:{','.join(map(str, files))}#{videos}")
    assert classes == [
        "Approaching something with your camera",
        "Pushing something from left to right",
        "Holding something next to something",
    ]
    got = by_id(items)
    assert got["78687"].label == "Holding something next to something"
    assert got["78687"].meta == {
        "split": "train",
        "caption": "holding potato next to vicks vaporub bottle",
        "placeholders": ["potato", "vicks"],
    }
    assert got["74225"].meta["split"] == "val" and got["1420"].meta["split"] == "test"
    assert got["1420"].label is None and got["42326"].path == str(videos / "42326.webm")


@pytest.fixture
def ucf(tmp_path: Path) -> tuple[Path, Path]:
    ann = tmp_path / "ucfTrainTestlist"
    write(ann / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n")
    write(
        ann / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\nYoYo/v_YoYo_g25_c05.avi 3\r\n",
    )
    write(
        ann / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nYoYo/v_YoYo_g01_c01.avi\r\n"
    )
    write(ann / "trainlist02.txt", "YoYo/v_YoYo_g01_c01.avi 3\n")
    write(ann / "testlist02.txt", "YoYo/v_YoYo_g25_c05.avi\n")
    videos = tmp_path / "UCF-101"
    touch(
        videos,
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "YoYo/v_YoYo_g25_c05.avi",
        "YoYo/v_YoYo_g01_c01.avi",
    )
    return ann, videos


def test_ucf101_folds(ucf):
    ann, videos = ucf
    items, classes = read_source(f"ucf101:{ann}#{videos}")
    assert classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]  # classInd.txt order
    got = {it.id: (it.label, it.meta["split"]) for it in items}
    assert got == {
        "v_ApplyEyeMakeup_g08_c01": ("ApplyEyeMakeup", "train"),
        "v_HandStandPushups_g08_c01": ("HandstandPushups", "train"),
        "v_YoYo_g25_c05": ("YoYo", "train"),
        "v_ApplyEyeMakeup_g01_c01": ("ApplyEyeMakeup", "test"),
        "v_YoYo_g01_c01": ("YoYo", "test"),
    }
    assert by_id(items)["v_YoYo_g25_c05"].path == str(videos / "YoYo/v_YoYo_g25_c05.avi")
    fold2, _ = read_source(f"ucf101:{ann}#{videos}#fold=2")
    assert {it.id: it.meta["split"] for it in fold2} == {"v_YoYo_g01_c01": "train", "v_YoYo_g25_c05": "test"}


def test_hmdb51(tmp_path):
    ann = tmp_path / "testTrainMulti_7030_splits"
    lines = [
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 ",
        "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 2 ",
        "brushing_hair_2_brush_hair_h_nm_np1_le_goo_0.avi 0 ",
    ]
    write(ann / "brush_hair_test_split1.txt", "\n".join(lines) + "\n")
    write(ann / "cartwheel_test_split1.txt", "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_le_bad_8.avi 1 \n")
    write(ann / "cartwheel_test_split2.txt", "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_le_bad_8.avi 2 \n")
    videos = tmp_path / "hmdb51"
    videos.mkdir()
    with pytest.warns(UserWarning, match="3 of 3 videos are not under .*missing=drop to leave them out"):
        items, classes = read_source(f"hmdb51:{ann}#{videos}#missing=keep")
    assert classes == ["brush_hair", "cartwheel"]
    got = {it.id: (it.label, it.meta["split"]) for it in items}
    assert got == {
        "April_09_brush_hair_u_nm_np1_ba_goo_0": ("brush_hair", "train"),
        "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0": ("brush_hair", "test"),
        "Acrobacias_de_un_fenomeno_cartwheel_f_cm_np1_le_bad_8": ("cartwheel", "train"),
    }
    assert by_id(items)["April_09_brush_hair_u_nm_np1_ba_goo_0"].path == str(
        videos / "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi"
    )


EPIC_HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
    "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
)
EPIC_TRAIN = [
    "P01_01_0,P01,P01_01,00:00:00.64,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,3,['door'],[3]",
    "P01_01_1,P01,P01_01,00:00:04.00,00:00:04.37,00:00:06.17,262,370,turn on light,turn-on,6,light,114,"
    "['light'],[114]",
    "P01_01_2,P01,P01_01,00:00:06.98,00:00:06.98,00:00:09.49,418,569,pick up tap and water,pick-up,0,tap,"
    "12,\"['tap', 'water']\",\"[12, 27]\"",
]
EPIC_VAL = (
    "P02_03_5,P02,P02_03,00:01:01.00,00:01:01.50,00:01:02.25,3690,3735,open door,open,3,door,3,['door'],[3]"
)
EPIC_TEST = (
    "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,start_frame,stop_frame\n"
    "P01_11_0,P01,P01_11,00:00:00.00,00:00:01.50,0,90\n"
)
EPIC_VERBS = [
    "id,key,instances,category",
    "0,take,\"['take', 'pick-up']\",retrieve",
    "1,put,\"['put']\",leave",
    "2,wash,\"['wash']\",clean",
    "3,open,\"['open']\",access",
    "4,close,\"['close']\",access",
    "5,insert,\"['insert']\",leave",
    "6,turn-on,\"['turn-on']\",manipulate",
]


@pytest.fixture
def epic(tmp_path: Path) -> tuple[list[Path], Path]:
    ann = tmp_path / "epic-kitchens-100-annotations"
    files = [
        write(ann / "EPIC_100_train.csv", EPIC_HEADER + "\n".join(EPIC_TRAIN) + "\n"),
        write(ann / "EPIC_100_validation.csv", EPIC_HEADER + EPIC_VAL + "\n"),
        write(ann / "EPIC_100_test_timestamps.csv", EPIC_TEST),
        write(ann / "EPIC_100_verb_classes.csv", "\n".join(EPIC_VERBS) + "\n"),
    ]
    videos = tmp_path / "EPIC-KITCHENS"
    touch(videos, "P01/videos/P01_01.MP4", "P02/videos/P02_03.MP4", "P01/videos/P01_11.MP4")
    return files, videos


def test_epic100_segments_and_labels(epic):
    files, videos = epic
    items, classes = read_source(f"epic100:{','.join(map(str, files))}#{videos}")
    assert classes == ["take", "put", "wash", "open", "close", "insert", "turn-on"]  # the official verb order
    got = by_id(items)
    first = got["P01_01_0"]
    assert (first.label, first.start, first.end, first.meta["split"]) == ("open", 0.14, 3.37, "train")
    assert first.meta["labels"] == {"verb": "open", "noun": "3"} and first.meta["label_index"] == {
        "verb": 3,
        "noun": 3,
    }
    assert first.meta["narration"] == "open door"
    assert first.meta["targets"] == {"verb": "open", "noun": "3"}  # data.targets: [verb, noun]
    video = str(videos / "P01/videos/P01_01.MP4")
    assert all(
        got[f"P01_01_{k}"].path == video and got[f"P01_01_{k}"].meta["group"] == video for k in range(3)
    )
    assert got["P01_01_2"].label == "take"  # pick-up is class 0, "take"
    assert (got["P02_03_5"].start, got["P02_03_5"].meta["split"]) == (61.5, "val")
    assert "group" not in got["P02_03_5"].meta  # the only segment of its video
    assert (got["P01_11_0"].label, got["P01_11_0"].meta["split"]) == (None, "test")
    nouns, noun_classes = read_source(f"epic100:{files[0]}#{videos}#label=noun")
    assert [it.label for it in nouns] == ["3", "114", "12"] and noun_classes == ["3", "12", "114"]
    actions, _ = read_source(f"epic100:{files[0]},{files[3]}#{videos}#label=action")
    assert [it.label for it in actions] == ["open:3", "turn-on:114", "take:12"]


def test_charades_multilabel(tmp_path):
    header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    ann = tmp_path / "Charades"
    train = write(
        ann / "Charades_v1_train.csv",
        header
        + "46GP8,HR43,Kitchen,6,7,Yes,A person cooks.,food;stove,A person cooks food.,"
        + "c092 11.90 21.20;c147 0.00 12.60;c092 25.00 29.00,24.83\n"
        + "N11GT,0KZ7,Stairs,6,7,Yes,A person walks.,stairs,A person walks.,,17.00\n",
    )
    test = write(
        ann / "Charades_v1_test.csv", header + "YSKX3,1ZPQ,Hallway,7,7,Yes,x,door,x,c006 0.00 5.10,31.21\n"
    )
    names = write(
        ann / "Charades_v1_classes.txt",
        "c000 Holding some clothes\nc006 Closing a door\nc092 Cooking something\nc147 Standing at a stove\n",
    )
    videos = tmp_path / "Charades_v1_480"
    touch(videos, "46GP8.mp4", "N11GT.mp4", "YSKX3.mp4")
    items, classes = read_source(f"charades:{train},{test},{names}#{videos}")
    assert classes == ["c000", "c006", "c092", "c147"]
    got = by_id(items)
    cooking = got["46GP8"]
    assert cooking.label == "c092"  # 9.3 + 4.0 s of c092 (in two actions) against 12.6 s of c147
    assert cooking.meta["multilabel"] == ["c092", "c147"] and cooking.meta["split"] == "train"
    assert cooking.meta["actions"][1] == ["c147", 0.0, 12.6] and cooking.meta["scene"] == "Kitchen"
    assert got["N11GT"].label is None and got["N11GT"].meta["multilabel"] == []
    assert cooking.meta["targets"] == {"labels": ["c092", "c147"]}  # data.targets: [labels]
    assert (got["YSKX3"].label, got["YSKX3"].meta["split"]) == ("c006", "test")


# ----------------------------------------------------------------------------------------- the command


def test_sources_command_writes_a_list_that_reads_back_the_same(epic, tmp_path, capsys):
    files, videos = epic
    out = tmp_path / "lists" / "epic.csv"
    out.parent.mkdir()
    assert sources_cmd.main(["epic100", *map(str, files), str(videos), "-o", str(out)]) == 0
    assert "5 videos (test 1, train 3, val 1; 3 segments; 7 classes)" in capsys.readouterr().err
    assert (out.parent / "classes.txt").read_text().splitlines()[0] == "take"
    direct = read_source(f"epic100:{','.join(map(str, files))}#{videos}")
    assert read_source(str(out)) == direct  # ids, paths, labels, segments, splits, meta, classes
    assert (
        sources_cmd.main(["epic100", *map(str, files), str(videos), "-o", str(out.with_suffix(".jsonl"))])
        == 0
    )
    assert read_source(str(out.with_suffix(".jsonl"))) == direct


def test_sources_command_filters_a_split_and_prints_csv(ucf, capsys):
    ann, videos = ucf
    assert sources_cmd.main(["ucf101", str(ann), str(videos), "--split", "test", "-O", "fold=1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "id,path,label,split,start,end,meta"
    assert [ln.split(",")[0] for ln in lines[1:]] == ["v_ApplyEyeMakeup_g01_c01", "v_YoYo_g01_c01"]


def test_sources_command_lists_formats(capsys):
    assert sources_cmd.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("kinetics", "ssv2", "ucf101", "hmdb51", "epic100", "charades"))
    assert "fold='1'" in out and "missing='keep'" in out


def test_missing_videos_can_be_dropped(ucf):
    ann, videos = ucf
    (videos / "YoYo/v_YoYo_g01_c01.avi").unlink()
    with pytest.warns(UserWarning, match="left out 1 rows whose video is not under"):
        items, _ = read_source(f"ucf101:{ann}#{videos}#missing=drop")
    assert "v_YoYo_g01_c01" not in by_id(items) and len(items) == 4


# ----------------------------------------------------------------------------------------- refusals


EPIC_ROW = "P01_01_0,P01,P01_01,0,{start},00:00:03.37,8,202,x,x,3,x,3,[],[]\n"
KINETICS_HEADER = "label,youtube_id,time_start,time_end,split\n"
BAD_FILES = [
    ("kinetics", "train.csv", KINETICS_HEADER + "x,abc,4.5,14,train\n", "whole seconds"),
    (
        "kinetics",
        "train.csv",
        "label,youtube_id,start\nx,abc,4\n",
        r"no column\(s\) \['time_start', 'time_end'\]",
    ),
    ("kinetics", "train.csv", KINETICS_HEADER + "x,abc,4,14,holdout\n", "not a known split"),
    ("ssv2", "train.json", '[{"label": "x"}]', "has no 'id'"),
    ("ssv2", "train.json", "[{", "not valid JSON"),
    ("ucf101", "trainlist01.txt", "v_YoYo_g25_c05.avi 3\n", "expected 'Class/v_Class_g08_c01.avi"),
    ("ucf101", "classInd.txt", "1 YoYo\n3 Fencing\n", r"expected 1\.\.2"),
    ("hmdb51", "cartwheel_test_split1.txt", "a.avi 3\n", "expected '<video>.avi <0|1|2>'"),
    ("hmdb51", "cartwheel_split1.txt", "a.avi 1\n", "not an HMDB51 split file"),
    ("epic100", "EPIC_100_train.csv", EPIC_HEADER + EPIC_ROW.format(start="00:00:aa"), "not HH:MM:SS.ff"),
    (
        "epic100",
        "EPIC_100_train.csv",
        EPIC_HEADER + EPIC_ROW.format(start="00:00:05"),
        "end=3.37 is not after",
    ),
    ("epic100", "notes.csv", "a,b\n1,2\n", "expected an EPIC-Kitchens-100 action CSV"),
    ("charades", "Charades_v1_train.csv", "id,actions\nX,c092 11.90\n", "expected '<class code> <start s>"),
]


@pytest.mark.filterwarnings("ignore:.*videos are not under")
@pytest.mark.parametrize(("fmt", "name", "text", "match"), BAD_FILES)
def test_bad_annotation_files_are_refused(tmp_path, fmt, name, text, match):
    ann = write(tmp_path / "ann" / name, text)
    (tmp_path / "videos").mkdir()
    with pytest.raises(SourceError, match=match):
        read_source(f"{fmt}:{ann}#{tmp_path / 'videos'}")


def test_bad_specs_and_options_are_refused(ucf, tmp_path):
    ann, videos = ucf
    cases = [
        (f"ucf101:{ann}", SourceError, "expected FORMAT:ANNOTATIONS"),
        (f"ucf101:{ann}#{videos}#fold=4", SourceError, r"fold='4'; expected one of \[1, 2, 3\]"),
        (f"ucf101:{ann}#{videos}#folds=2", SourceError, r"no option\(s\) \['folds'\]; its options: fold"),
        (f"ucf101:{ann}#{videos}#fold", SourceError, "is not key=value"),
        (f"ucf101:{tmp_path / 'nope'}#{videos}", SourceError, r"annotation file\(s\) .*nope.* do not exist"),
        (f"ucf101:{ann}#{tmp_path / 'nope'}", SourceError, "video folder .*nope.* does not exist"),
        (f"ucf101:{ann}#{videos}#missing=maybe", SourceError, "expected keep or drop"),
        (f"epic100:{ann / 'classInd.txt'}#{videos}#label=object", SourceError, "label='object'; expected"),
    ]
    for spec, error, match in cases:
        with pytest.raises(error, match=match):
            read_source(spec)
    with pytest.raises(RegistryError, match="unknown source format 'ucf'.*'ucf101'.*twostage sources --list"):
        adapters.adapt("ucf", [ann], videos)


@pytest.mark.filterwarnings("ignore:.*videos are not under")
def test_labels_that_disagree_with_the_class_list_are_refused(ucf, tmp_path):
    ann, videos = ucf
    write(ann / "trainlist01.txt", "YoYo/v_YoYo_g25_c05.avi 1\n")
    with pytest.raises(SourceError, match="folder 'YoYo' but class 1 is 'ApplyEyeMakeup'"):
        read_source(f"ucf101:{ann}#{videos}")
    labels = write(tmp_path / "labels.json", json.dumps({"Opening something": "0"}))
    split = write(tmp_path / "train.json", json.dumps([{"id": "1", "template": "Closing [something]"}]))
    with pytest.raises(LabelError, match="label 'Closing something' of video '1'.*train.json"):
        read_source(f"ssv2:{labels},{split}#{tmp_path}")
