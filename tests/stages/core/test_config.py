"""Tests for stages.core.config: YAML + overrides -> validated nested dataclasses, all problems at once."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from stages.core.config import config_keys, dump_yaml, fingerprint, from_dict, load_config, to_dict
from stages.core.errors import ConfigError

# Schemas live at module level: with `from __future__ import annotations` their hints must resolve.


@dataclass
class Optim:
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, ...] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Head:
    name: Literal["linear", "evl"]
    depth: int = 2
    dropout: float | None = None


@dataclass
class Train:
    optim: Optim = field(default_factory=Optim)
    head: Head = field(default_factory=lambda: Head(name="linear"))
    layers: list[int] = field(default_factory=lambda: [11])
    epochs: int = 10
    warmup: int = 0
    tag: str | None = None
    amp: bool = False
    seed: int | str = 0
    precision: Literal[16, 32] = 32
    crop: tuple[int, int] = (224, 224)
    extra: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.warmup >= self.epochs:
            raise ValueError(f"warmup ({self.warmup}) must be < epochs ({self.epochs})")


@dataclass
class Strict:
    head: Head  # no default: head.name becomes required
    epochs: int


@dataclass
class BadSchema:
    path: Path = Path(".")


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems_of(schema: type, text: str | None, overrides: list[str], tmp_path: Path) -> list[str]:
    path = None if text is None else write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(schema, path, overrides)
    return info.value.problems


# ---------------------------------------------------------------- loading


def test_defaults_without_file_or_overrides() -> None:
    cfg = load_config(Train, None)
    assert cfg == Train()
    assert cfg.head == Head(name="linear", depth=2)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(Train, write(tmp_path, "")) == Train()


def test_yaml_values_nested(tmp_path: Path) -> None:
    text = "optim:\n  lr: 0.001\nhead:\n  name: evl\n  depth: 4\nlayers: [8, 9]\nepochs: 20\namp: true\n"
    cfg = load_config(Train, write(tmp_path, text))
    assert cfg.optim == Optim(lr=0.001, weight_decay=0.05)  # omitted key keeps its default
    assert cfg.head == Head(name="evl", depth=4)
    assert (cfg.layers, cfg.epochs, cfg.amp) == ([8, 9], 20, True)


def test_overrides_nested_list_null_bool(tmp_path: Path) -> None:
    path = write(tmp_path, "tag: run1\nhead:\n  name: evl\n  dropout: 0.1\n")
    overrides = ["head.depth=6", "layers=[8,9,10,11]", "tag=null", "head.dropout=null", "amp=true"]
    cfg = load_config(Train, path, overrides)
    assert cfg.head == Head(name="evl", depth=6, dropout=None)
    assert (cfg.layers, cfg.tag, cfg.amp) == ([8, 9, 10, 11], None, True)


def test_override_beats_file_and_creates_missing_sections(tmp_path: Path) -> None:
    path = write(tmp_path, "epochs: 5\n")
    cfg = load_config(Train, path, ["epochs=7", "optim.weight_decay=0", "extra.note=hi"])
    assert (cfg.epochs, cfg.optim.weight_decay, cfg.extra) == (7, 0.0, {"note": "hi"})
    assert isinstance(cfg.optim.weight_decay, float)  # int accepted for float, stored as float


@pytest.mark.parametrize("source", ["yaml", "override"])
def test_float_from_exponent_string(tmp_path: Path, source: str) -> None:
    # PyYAML reads `3e-4` (no dot) as the string '3e-4'
    if source == "yaml":
        cfg = load_config(Train, write(tmp_path, "optim:\n  lr: 3e-4\n"))
    else:
        cfg = load_config(Train, None, ["optim.lr=3e-4"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)


def test_partial_section_keeps_the_default_instance_values() -> None:
    cfg = load_config(Train, None, ["head.depth=3"])  # Train's default head is Head(name="linear")
    assert cfg.head == Head(name="linear", depth=3)


def test_containers_are_typed() -> None:
    cfg = load_config(Train, None, ["optim.betas=[0.8, 1]", "crop=[112, 128]", "weights={a: 1, b: 0.5}"])
    assert cfg.optim.betas == (0.8, 1.0) and isinstance(cfg.optim.betas, tuple)
    assert cfg.crop == (112, 128)
    assert cfg.weights == {"a": 1.0, "b": 0.5}


def test_union_of_several_types() -> None:
    assert load_config(Train, None, ["seed=7"]).seed == 7
    assert load_config(Train, None, ["seed=abc"]).seed == "abc"


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        ("epochs: ten\n", [], r"^epochs: expected int, got str 'ten'$"),
        ("epochs: true\n", [], r"^epochs: expected int, got bool True$"),
        ("epochs: 2.5\n", [], r"^epochs: expected int, got float 2.5$"),
        ("amp: 'yes'\n", [], r"^amp: expected bool, got str 'yes'$"),
        ("tag: 3\n", [], r"^tag: expected str \| None, got int 3$"),
        ("seed: [1]\n", [], r"^seed: expected int \| str, got list \[1\]$"),
        (None, ["optim.lr=abc"], r"^optim.lr: expected float, got str 'abc'$"),
        (None, ["layers=[1, a]"], r"^layers\[1\]: expected int, got str 'a'$"),
        (None, ["layers=3"], r"^layers: expected list\[int\], got int 3$"),
        (None, ["crop=[1, 2, 3]"], r"^crop: expected 2 items \(tuple\[int, int\]\), got list \[1, 2, 3\]$"),
        (None, ["weights.a=x"], r"^weights.a: expected float, got str 'x'$"),
        (None, ["optim=3"], r"^optim: expected a mapping with keys lr, weight_decay, betas, got int 3$"),
        (None, ["epochs=null"], r"^epochs: expected int, got null$"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str | None, overrides: list[str], match: str) -> None:
    problems = problems_of(Train, text, overrides, tmp_path)
    assert len(problems) == 1
    assert re.search(match, problems[0]), problems[0]


@pytest.mark.parametrize(
    ("schema", "overrides", "match"),
    [
        (
            Train,
            ["head.name=evll"],
            r"head.name: expected one of 'linear', 'evl', got str 'evll'; did you mean 'evl'\?",
        ),
        (Train, ["precision=16.0"], r"^precision: expected one of 16, 32, got float 16.0$"),
        (Train, ["head.name=xyz"], r"head.name: expected one of 'linear', 'evl', got str 'xyz'$"),
        (Strict, ["epochs=1"], r"^head.name: missing required key \(expected 'linear' \| 'evl'\)$"),
        (Strict, ["head.name=evl"], r"^epochs: missing required key \(expected int\)$"),
        (Train, ["warmup=10"], r"^<top level>: warmup \(10\) must be < epochs \(10\)$"),
        (Train, ["optim.lr=-1"], r"^optim: lr must be > 0, got -1.0$"),
        (
            Train,
            ["optim.lrr=0.1"],
            r"^optim.lrr: unknown key in override 'optim.lrr=0.1'; did you mean 'optim.lr'\?",
        ),
        (
            Train,
            ["lr=0.1"],
            r"^lr: unknown key in override 'lr=0.1'; did you mean 'optim.lr'\? valid keys: optim,",
        ),
        (Train, ["head.depth.x=1"], r"^head.depth: expected int, got dict \{'x': 1\}$"),
        (Train, ["optim.lr"], r"^override 'optim.lr': write overrides as key=value, e.g. optim.lr=VALUE$"),
        (
            Train,
            ["--optim.lr=0.1"],
            r"^override '--optim.lr=0.1': write overrides as key=value, e.g. optim.lr=0.1$",
        ),
        (Train, ["optim..lr=1"], r"^override 'optim..lr=1': empty key part; write overrides as key=value$"),
        (Train, ["=1"], r"^override '=1': empty key part"),
    ],
)
def test_invalid_values_and_overrides(schema: type, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(schema, None, overrides)
    assert len(info.value.problems) == 1
    assert re.search(match, info.value.problems[0]), info.value.problems[0]


def test_unknown_yaml_key_names_close_match_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"optim.lrr: unknown key \(value 0.1\); did you mean 'optim.lr'\?"
    ) as info:
        load_config(Train, path)
    assert info.value.problems == [
        "optim.lrr: unknown key (value 0.1); did you mean 'optim.lr'? valid keys: lr, weight_decay, betas"
    ]
    assert str(path) in str(info.value)  # the message names the file


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    problems = problems_of(Train, "head:\n  zzzzzz: 1\n", [], tmp_path)
    assert problems == ["head.zzzzzz: unknown key (value 1); valid keys: name, depth, dropout"]


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = "epochs: ten\nhead:\n  name: evll\n  deph: 3\noptim:\n  lr: abc\n"
    problems = problems_of(Train, text, ["layers=[1, x]", "bogus=1", "amp"], tmp_path)
    assert problems == [
        "bogus: unknown key in override 'bogus=1'; valid keys: optim, head, layers, epochs, warmup, tag, "
        "amp, seed, precision, crop, extra, weights",
        "override 'amp': write overrides as key=value, e.g. amp=VALUE",
        "optim.lr: expected float, got str 'abc'",
        "head.deph: unknown key (value 3); did you mean 'head.depth'? valid keys: name, depth, dropout",
        "head.name: expected one of 'linear', 'evl', got str 'evll'; did you mean 'evl'?",
        "layers[1]: expected int, got str 'x'",
        "epochs: expected int, got str 'ten'",
    ]
    with pytest.raises(ConfigError, match=r"7 problems\n  - bogus"):
        load_config(Train, tmp_path / "cfg.yaml", ["layers=[1, x]", "bogus=1", "amp"])


def test_post_init_errors_collected_with_other_problems() -> None:
    problems = problems_of(Train, None, ["optim.lr=0", "head.depth=x"], Path("."))
    assert problems == ["optim: lr must be > 0, got 0.0", "head.depth: expected int, got str 'x'"]


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid config: epochs: expected int"):
        load_config(Train, None, ["epochs=x"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- 1\n- 2\n", r"expected a mapping of keys to values, got list \[1, 2\]"),
        ("a: [1,\n", r"not valid YAML"),
        ("_base_: 3\n", r"_base_: expected a path relative to this file, got int 3"),
        ("_base_: missing.yaml\n", r"cannot read .*missing.yaml: No such file"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(Train, write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"cannot read .*nope.yaml: No such file or directory; check the path"
    ):
        load_config(Train, tmp_path / "nope.yaml")


def test_unsupported_schema_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"config field path: unsupported type"):
        load_config(BadSchema, None)
    with pytest.raises(TypeError, match="must be a dataclass type"):
        load_config(dict, None)


# ---------------------------------------------------------------- _base_


def test_base_is_deep_merged_under_the_file(tmp_path: Path) -> None:
    write(tmp_path, "optim:\n  lr: 0.01\n  weight_decay: 0.1\nhead:\n  name: evl\nepochs: 30\n", "base.yaml")
    child = write(tmp_path, "_base_: ../base.yaml\noptim:\n  lr: 0.002\nlayers: [1]\n", "sub/child.yaml")
    cfg = load_config(Train, child, ["epochs=40"])
    assert cfg.optim == Optim(lr=0.002, weight_decay=0.1)  # merged key by key, not replaced
    assert (cfg.head.name, cfg.layers, cfg.epochs) == ("evl", [1], 40)


def test_base_chain_and_cycle(tmp_path: Path) -> None:
    write(tmp_path, "epochs: 3\n", "a.yaml")
    write(tmp_path, "_base_: a.yaml\nwarmup: 1\n", "b.yaml")
    cfg = load_config(Train, write(tmp_path, "_base_: b.yaml\n", "c.yaml"))
    assert (cfg.epochs, cfg.warmup) == (3, 1)
    write(tmp_path, "_base_: y.yaml\n", "x.yaml")
    write(tmp_path, "_base_: x.yaml\n", "y.yaml")
    with pytest.raises(ConfigError, match=r"_base_ cycle .*x.yaml -> .*y.yaml -> .*x.yaml"):
        load_config(Train, tmp_path / "x.yaml")


def test_base_key_errors_are_reported_in_merged_config(tmp_path: Path) -> None:
    write(tmp_path, "epoch: 3\n", "base.yaml")
    problems = problems_of(Train, "_base_: base.yaml\n", [], tmp_path)
    assert len(problems) == 1 and problems[0].startswith(
        "epoch: unknown key (value 3); did you mean 'epochs'?"
    )


# ---------------------------------------------------------------- output


def test_to_dict_is_plain_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(Train, None, ["head.name=evl", "tag=x", "optim.lr=1e-3", "extra.k=[1, 2]"])
    d = to_dict(cfg)
    assert d["optim"] == {"lr": 0.001, "weight_decay": 0.05, "betas": [0.9, 0.999]}  # tuples as lists
    assert d["crop"] == [224, 224]
    json.dumps(d)  # JSON-able
    assert from_dict(Train, d, ["epochs=12"]) == Train(**{**vars(cfg), "epochs": 12})
    assert from_dict(Train, d) == cfg and d["epochs"] == 10  # the input dict is not modified
    assert load_config(Train, write(tmp_path, dump_yaml(cfg))) == cfg


def test_fingerprint_stable_and_order_independent() -> None:
    a = {"optim": {"lr": 0.001, "wd": 0.1}, "epochs": 3}
    b = {"epochs": 3, "optim": {"wd": 0.1, "lr": 0.001}}
    expected = hashlib.sha256(b'{"epochs":3,"optim":{"lr":0.001,"wd":0.1}}').hexdigest()
    assert fingerprint(a) == fingerprint(b) == expected
    assert fingerprint({**a, "epochs": 4}) != expected
    assert fingerprint(Train()) == fingerprint(to_dict(load_config(Train, None)))


def test_config_keys_lists_every_leaf_with_type_and_default() -> None:
    keys = config_keys(Train)
    assert keys[:4] == [
        "optim.lr: float = 0.0003",
        "optim.weight_decay: float = 0.05",
        "optim.betas: tuple[float, ...] = (0.9, 0.999)",
        "head.name: 'linear' | 'evl' = 'linear'",  # the section's default instance supplies the value
    ]
    assert "tag: str | None = None" in keys and "extra: dict[str, Any] = {}" in keys
    assert config_keys(Strict) == [
        "head.name: 'linear' | 'evl' (required)",
        "head.depth: int = 2",
        "head.dropout: float | None = None",
        "epochs: int (required)",
    ]
