"""Several targets per video (``data.targets``, stages/train/targets.py): one classifier per label column,
multi-label with a sigmoid loss and mAP, recorded in checkpoints, scored again by ``twostage eval``, and
covered by the store's checksum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.commands import evaluate as eval_cmd
from pipeline.commands.predict import write_rows
from stages.core.errors import ConfigError
from stages.predict.videos import predict
from stages.train.evaluate import evaluate_checkpoint
from stages.train.metrics import average_precision, multilabel_metrics
from stages.train.stage import run_train
from stages.train.targets import Targets
from store import FeatureStore, verify
from store.index import read_log, write_log_line
from tests.stages.train.conftest import make_cfg


def video_targets(label: int) -> dict:
    """The direction store's class k as separate targets: its axis, its sign, and a set of tags."""
    axis, rising = label // 2, label % 2 == 0
    return {
        "axis": f"a{axis}",
        "sign": "plus" if rising else "minus",
        "tags": sorted({f"axis{axis}"} | ({"rising"} if rising else set())),
    }


@pytest.fixture(scope="module")
def targets_store(tmp_path_factory):
    from tests.stages.train.conftest import make_store

    return make_store(tmp_path_factory.mktemp("targets") / "t.zarr", videos=48, targets=video_targets)


def test_targets_are_read_from_the_store_and_encoded_per_video(targets_store):
    fs = FeatureStore(targets_store)
    t = Targets.from_store(fs, ["axis", "label", "tags"])
    assert [(x.name, list(x.classes), x.multi) for x in t.items] == [
        ("axis", ["a0", "a1"], False),
        ("label", list(fs.classes), False),
        ("tags", ["axis0", "axis1", "rising"], True),
    ]
    assert (t.num_outputs, t.width) == (2 + 4 + 3, 1 + 1 + 3)
    ids = [v.id for v in fs.videos[:4]]  # labels 0, 1, 2, 3
    assert t.encode(fs, ids).tolist() == [
        [0, 0, 1, 0, 1],
        [0, 1, 1, 0, 0],
        [1, 2, 0, 1, 1],
        [1, 3, 0, 1, 0],
    ]
    assert Targets.from_description(t.describe()).describe() == t.describe()
    with pytest.raises(
        ConfigError, match=r"no video of .* has a target 'verb'; it has: label, axis, sign, tags"
    ):
        Targets.from_store(fs, ["verb"])
    with pytest.raises(ConfigError, match=r"names a target twice"):
        Targets.from_store(fs, ["axis", "axis"])


def test_loss_is_each_targets_loss_summed_and_ignores_missing_labels():
    t = Targets([("a", ["x", "y", "z"], False), ("m", ["p", "q"], True)])
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[0, 1, 0], [2, 0, 0], [-1, 1, 1], [1, 0, 1]])
    want = F.cross_entropy(
        logits[[0, 1, 3], :3], torch.tensor([0, 2, 1])
    ) + F.binary_cross_entropy_with_logits(logits[:, 3:], labels[:, 1:].float())
    assert torch.allclose(t.loss(logits, labels), want)
    # the loop's running top-1 of a multi-label lead target is precision@1: the top class present or -1
    m = Targets([("m", ["p", "q"], True)])
    x, y = m.lead(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([[1, 0], [1, 0]]))
    assert y.tolist() == [0, -1] and (x.argmax(1) == y).tolist() == [True, False]


def test_average_precision_and_map_by_hand():
    scores, positive = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([True, False, True, False])
    assert average_precision(scores, positive) == pytest.approx((1 / 1 + 2 / 3) / 2)
    probs = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.6, 0.3, 0.1]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0]])  # class 2 has no positive: not scored
    m = multilabel_metrics(probs, labels)
    ap1 = average_precision(probs[:, 1], labels[:, 1] > 0)  # ranks 1 and 3 -> (1 + 2/3) / 2
    assert m["classes_scored"] == 2 and m["mAP"] == pytest.approx((1.0 + ap1) / 2)
    assert m["precision_at_1"] == pytest.approx(2 / 3)  # video 2's top class (0) is absent


def test_per_target_metrics_by_hand():
    t = Targets([("verb", ["a", "b"], False), ("noun", ["x", "y", "z"], False), ("tags", ["p", "q"], True)])
    probs = torch.tensor([  # verb | noun | tags (averaged probabilities of 4 videos)
        [0.9, 0.1, 0.2, 0.7, 0.1, 0.9, 0.2],
        [0.3, 0.7, 0.6, 0.3, 0.1, 0.8, 0.6],
        [0.6, 0.4, 0.1, 0.1, 0.8, 0.1, 0.7],
        [0.2, 0.8, 0.5, 0.4, 0.1, 0.3, 0.9],
    ], dtype=torch.float64)  # fmt: skip
    labels = torch.tensor([[0, 1, 1, 1], [1, 2, 1, 0], [0, 2, 0, 1], [0, -1, 0, 0]])
    m = t.metrics(probs, labels)
    assert m["verb_top1"] == pytest.approx(3 / 4)  # video 3 says b, is a
    assert m["noun_top1"] == pytest.approx(2 / 3)  # video 1 says x, is z; video 3 has no noun: not scored
    assert m["targets"]["noun"]["videos"] == 3 and m["targets"]["noun"]["mean_class_acc"] == pytest.approx(
        0.75
    )
    assert m["joint_top1"] == pytest.approx(2 / 3)  # videos 0 and 2 of the 3 with both labels
    # p: scores 0.9 (v0 +), 0.8 (v1 +), 0.3, 0.1 -> AP 1; q: 0.9 (v3 -), 0.7 (v2 +), 0.6 (v1 -), 0.2 (v0 +)
    # -> precisions 1/2 and 2/4 at its positives -> AP 0.5
    assert m["tags_mAP"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["targets"]["tags"]["precision_at_1"] == pytest.approx(3 / 4)  # top tags p, p, q, q: v3 lacks q
    assert m["top1"] == m["verb_top1"] and m["mean_class_acc"] == m["targets"]["verb"]["mean_class_acc"]


def test_a_head_trains_on_several_targets_and_eval_scores_each_again(tmp_path, targets_store, capsys):
    head = {"name": "vivit_fe", "options": {"depth": 1}}
    cfg = make_cfg(tmp_path, targets_store, head=head, data={"targets": ["axis", "sign", "tags"]},
                   optim={"epochs": 10, "lr": 1e-2}, run={"eval_every": 100})  # fmt: skip
    result = run_train(cfg)
    for key in ("axis_top1", "sign_top1", "tags_mAP", "joint_top1"):
        assert result[key] is not None, key
    assert result["top1"] == result["axis_top1"]  # the first target leads (and picks best.pt)
    assert result["joint_top1"] <= min(result["axis_top1"], result["sign_top1"]) + 1e-12
    # the sign is only in the frames' order, the axis in their direction: both are learnt
    assert result["sign_top1"] >= 0.75 and result["axis_top1"] >= 0.75 and result["tags_mAP"] >= 0.8
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["head"]["num_classes"] == 2 + 2 + 3
    assert [d["name"] for d in ckpt["head"]["targets"]] == ["axis", "sign", "tags"]
    again = evaluate_checkpoint(str(tmp_path / "last.pt"), str(targets_store), workers=0)
    for key in ("axis_top1", "sign_top1", "tags_mAP", "joint_top1", "videos"):
        assert again[key] == pytest.approx(result[key]), key
    assert again["targets"]["tags"]["classes_scored"] == 3
    assert eval_cmd.main([str(tmp_path / "last.pt"), str(targets_store), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"  axis: top1 {again['axis_top1']:.4f}" in printed and "  tags: mAP " in printed
    assert f"every single-label target right: {again['joint_top1']:.4f}" in printed
    # twostage predict: every target's top-k per video, the first one leading; CSV columns per target
    rows = predict(str(tmp_path / "last.pt"), [str(targets_store)], topk=2, device="cpu")["predictions"]
    fs = FeatureStore(targets_store)
    truth = {v.id: video_targets(v.label) for v in fs.videos}
    assert all(
        r["top"] == r["targets"]["axis"] and list(r["targets"]) == ["axis", "sign", "tags"] for r in rows
    )
    right = [r["targets"]["sign"][0][0] == truth[r["id"]]["sign"] for r in rows]
    assert len(rows) == 48 and sum(right) >= 0.75 * len(rows)
    tags = rows[0]["targets"]["tags"]  # sigmoid scores: they need not sum to 1
    assert len(tags) == 2 and all(0 < p < 1 for _, p in tags)
    write_rows(rows, str(tmp_path / "p.csv"))
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert header[2:6] == ["class_1", "prob_1", "class_2", "prob_2"] and header[6:8] == [
        "sign_class_1",
        "sign_prob_1",
    ]
    assert header[-2:] == ["tags_class_2", "tags_prob_2"]


def test_targets_are_refused_for_a_memory_head_and_a_store_without_them(tmp_path, targets_store):
    memvit = {"name": "memvit", "options": {"depth": 1, "memory": 1}}
    with pytest.raises(ConfigError, match=r"memory head 'memvit' trains on the store's one label only"):
        run_train(make_cfg(tmp_path, targets_store, head=memvit, data={"targets": ["axis"]}))
    with pytest.raises(ConfigError, match=r"has a target 'unknown'; it has: label, axis, sign, tags"):
        run_train(make_cfg(tmp_path, targets_store, data={"targets": ["unknown"]}))
    with pytest.raises(ConfigError, match=r"data.targets: expected list\[str\], got str 'axis'"):
        make_cfg(tmp_path, targets_store, data={"targets": "axis"})
    with pytest.raises(ConfigError, match=r"targets must be a list of names like \[verb, noun\], got \[''\]"):
        make_cfg(tmp_path, targets_store, data={"targets": [""]})


def test_an_edited_target_fails_the_videos_checksum(tmp_path):
    from tests.stages.train.conftest import make_store

    path = make_store(tmp_path / "s.zarr", videos=4, targets=video_targets)
    assert verify(path) == []
    log = path / "parts/p0000/commits.jsonl"
    records, _ = read_log(log)
    records[2]["meta"]["targets"]["sign"] = (
        "plus" if records[2]["meta"]["targets"]["sign"] == "minus" else "minus"
    )
    log.unlink()
    for r in records:  # valid line CRCs: only the video digest can tell
        write_log_line(log, r)
    assert [p["id"] for p in verify(path)] == [records[2]["id"]]
