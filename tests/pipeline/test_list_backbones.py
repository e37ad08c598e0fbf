"""``twostage --list-backbones``: each entry's description, its pretrained tags and the pass-through name."""

from __future__ import annotations

import contextlib
import io

import pytest

from pipeline.cli import main
from stages.models import BACKBONES


@pytest.fixture(scope="module")
def listing() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--list-backbones"]) == 0
    return out.getvalue()


def entry_block(listing: str, name: str) -> str:
    """The lines of one entry: its name line up to the next unindented line."""
    lines = listing.splitlines()
    start = lines.index(name)
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), None)
    return "\n".join(lines[start:end])


def test_every_registered_backbone_is_listed_with_its_description(listing):
    for name in BACKBONES.names():
        first_words = " ".join((BACKBONES.get(name).__doc__ or "").split()[:6])
        assert first_words in " ".join(entry_block(listing, name).split()), name


@pytest.mark.parametrize(
    ("name", "default", "other", "same"),
    [
        ("openclip_vit_b16.laion2b", "laion2b_s34b_b88k*", "openai,",
         "backbone.name=open_clip:ViT-B-16 backbone.pretrained=laion2b_s34b_b88k"),
        ("timm_vit_small_patch16_224.augreg_in21k_ft_in1k", "augreg_in21k_ft_in1k*", "dino",
         "backbone.name=timm:vit_small_patch16_224 backbone.pretrained=augreg_in21k_ft_in1k"),
    ],
)  # fmt: skip
def test_open_clip_and_timm_entries_show_their_tags_and_the_pass_through_name(listing, name, default, other,
                                                                              same):  # fmt: skip
    block = " ".join(entry_block(listing, name).split())
    assert "pretrained tags (* = default): " in block and default in block and other in block
    assert same in block


def test_test_entries_say_random_init_and_the_unregistered_forms_are_explained(listing):
    assert "pretrained: random init" in entry_block(listing, "test_timm_vit")
    assert "shipped with the package" in entry_block(listing, "synth_vit_tiny.pretrained")
    assert "open_clip:<model>  backbone.pretrained=<tag>" in listing
    assert "timm:<model>       backbone.pretrained=<tag>" in listing
    assert "backbone.random_init=true" in listing
