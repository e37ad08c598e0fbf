"""``stages.bench.pretrain`` and the ``synth_vit_tiny`` weights it ships: the build is deterministic, the
shipped file loads only with its recorded sha256, and its frozen CLS carries digit class and position
(a linear probe on held-out frames, issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages.bench import pretrain as sp
from stages.core.errors import WeightsError
from stages.models import TensorRequest, build_backbone, synth_vit
from stages.models.weights import sha256_file

PROBE_TRAIN, PROBE_TEST = 1500, 1000  # frames; seeds below are neither pretraining's nor its check's
PROBE_MIN = 0.90


@pytest.fixture(autouse=True)
def _threads():
    """``pretrain`` (and the probe) run on one thread; give the other tests their threads back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_two_short_builds_give_the_same_weights_and_sha256(tmp_path: Path) -> None:
    a = sp.pretrain(steps=3, batch=8, pool=24)
    b = sp.pretrain(steps=3, batch=8, pool=24)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sp.save(a, tmp_path / "a.safetensors") == sp.save(b, tmp_path / "b.safetensors")
    c = sp.pretrain(steps=3, batch=8, pool=24, seed=sp.SEED + 7)  # the seed matters
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_shifted_frame_shows_the_same_sprite_at_its_new_corner_inside_the_room() -> None:
    x, _, corner, room, cue = sp.stills(12, 5)
    assert cue.any() and (corner >= 0).all() and (corner <= room[:, None]).all()
    move = ~cue
    out, at = sp.shifted(x, corner, room, move, torch.Generator().manual_seed(0))
    assert (at >= 0).all() and (at <= room[:, None]).all() and (at[~move] == corner[~move]).all()
    assert (at[move] != corner[move]).any(dim=1).any()
    for i in range(len(x)):
        s = synth_vit.SIZE - int(room[i])  # sprite side
        (x0, y0), (x1, y1) = corner[i].tolist(), at[i].tolist()
        assert torch.equal(x[i, :, y0 : y0 + s, x0 : x0 + s], out[i, :, y1 : y1 + s, x1 : x1 + s])


def test_the_shipped_weights_load_with_their_sha256() -> None:
    assert sha256_file(synth_vit.WEIGHTS) == synth_vit.SHA256
    bb = build_backbone("synth_vit_tiny.pretrained")
    assert bb.spec["pretrained"] == "pretrained"
    assert (bb.spec["input_size"], bb.spec["width"], bb.spec["depth"]) == (synth_vit.SIZE, synth_vit.WIDTH, 4)
    from safetensors.torch import load_file

    shipped = load_file(str(synth_vit.WEIGHTS))
    own = bb.model.state_dict()
    assert all(torch.equal(own[k], v.float()) for k, v in shipped.items())


def test_a_corrupted_copy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(synth_vit.WEIGHTS.read_bytes())
    data[-1] ^= 1  # one bit in the last tensor's data
    bad = tmp_path / "synth_vit_tiny.safetensors"
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(synth_vit, "WEIGHTS", bad)
    with pytest.raises(WeightsError, match="sha256"):
        build_backbone("synth_vit_tiny.pretrained")


def probe(train: torch.Tensor, y: torch.Tensor, test: torch.Tensor, classes: int) -> torch.Tensor:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS, a little L2);
    returns the predicted classes of ``test``."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    a, b = (train - mean) / std, (test - mean) / std
    w = torch.zeros(a.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    a, b = a.double(), b.double()
    opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, y) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (b @ w + bias).argmax(1)


def cls_features(bb, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen final CLS [N, width], digits [N], and 3 x 3 position cells [N] of ``count`` new frames."""
    x, digit, xy, _ = sp.frames(count, seed)
    with torch.no_grad():
        feats = torch.cat(
            [bb.forward_tensors(x[i : i + 250], [TensorRequest("final", "cls")])["final.cls"] for i in
             range(0, count, 250)]
        )  # fmt: skip
    return feats.float(), digit, sp.cells(xy)


def test_the_frozen_cls_separates_digits_and_positions() -> None:
    torch.set_num_threads(1)
    bb = build_backbone("synth_vit_tiny.pretrained")
    f_train, d_train, c_train = cls_features(bb, PROBE_TRAIN, 777)
    f_test, d_test, c_test = cls_features(bb, PROBE_TEST, 778)
    digit = (probe(f_train, d_train, f_test, 10) == d_test).double().mean().item()
    cell = (probe(f_train, c_train, f_test, 9) == c_test).double().mean().item()
    assert digit >= PROBE_MIN, f"held-out digit probe {digit:.3f}"
    assert cell >= PROBE_MIN, f"held-out position probe {cell:.3f}"
