"""The config system: YAML + --set overrides into typed schemas, and every error path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from datascale.config import (config_keys, dump_yaml, load_config, read_yaml, require,
                              resolve_config_path, to_dict)
from datascale.errors import ConfigError


@dataclass
class Noise:
    rate: float = 0.2
    kind: Literal["sibling", "uniform"] = "sibling"

    def validate(self) -> None:
        require(0.0 <= self.rate <= 1.0, "rate", f"must be in [0, 1], got {self.rate}")


@dataclass
class World:
    name: str
    classes: int = 10
    noise: Noise = field(default_factory=Noise)
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    shape: tuple[int, int] = (64, 64)
    seed: Optional[int] = None
    enabled: bool = True
    extra: dict[str, float] = field(default_factory=dict)


def test_yaml_file_and_overrides_are_typed(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("name: demo\nclasses: 30\nnoise:\n  rate: 0.1\n")
    cfg = load_config(World, path, ["noise.rate=0.25", "sizes=10,30,100", "seed=7",
                                    "shape=[32, 48]", "enabled=false", "extra.a=1"])
    assert cfg.name == "demo" and cfg.classes == 30
    assert cfg.noise.rate == 0.25 and isinstance(cfg.noise.rate, float)
    assert cfg.sizes == [10, 30, 100]
    assert cfg.shape == (32, 48)
    assert cfg.seed == 7 and cfg.enabled is False
    assert cfg.extra == {"a": 1.0}


def test_exponent_without_dot_is_a_float():
    assert load_config(World, {"name": "x"}, ["noise.rate=1e-1"]).noise.rate == 0.1


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(World, {"name": "x", "noise": {"rate": 1}}).noise.rate == 1.0
    with pytest.raises(ConfigError, match="'classes' expects int, got float 2.5"):
        load_config(World, {"name": "x", "classes": 2.5})


@pytest.mark.parametrize("data, overrides, message", [
    ({"name": "x", "clases": 3}, [], "unknown config key 'clases' (did you mean 'classes'?)"),
    ({"name": "x", "noise": {"rtae": 0.1}}, [], "unknown config key 'noise.rtae' (did you mean 'rate'?)"),
    ({"name": "x"}, ["noise.rat=0.3"], "unknown config key 'noise.rat' (did you mean 'rate'?)"),
    ({}, [], "missing required config key 'name'"),
    ({"name": "x"}, ["classes=many"], "'classes' expects int, got str 'many'"),
    ({"name": "x"}, ["enabled=3"], "'enabled' expects bool"),
    ({"name": "x"}, ["noise.kind=random"], "'noise.kind' must be one of sibling, uniform"),
    ({"name": "x"}, ["noise.rate=1.5"], "noise.rate: must be in [0, 1], got 1.5"),
    ({"name": "x", "noise": 3}, [], "'noise' must be a mapping"),
    ({"name": "x"}, ["classes"], "--set expects KEY=VALUE"),
    ({"name": "x"}, ["classes.sub=1"], "'classes' is a value, not a section"),
    ({"name": "x"}, ["shape=[1,2,3]"], "'shape' expects 2 values, got 3"),
])
def test_errors_name_the_key(data, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(World, data, overrides)
    assert message in str(info.value)


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        load_config(World, {"name": "x", "zzz": 1})
    assert "valid keys: classes, enabled, extra, name, noise, seed, shape, sizes" in str(info.value)


def test_bad_yaml_and_non_mapping_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_yaml(listy)
    assert read_yaml(_empty(tmp_path)) == {}


def _empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return path


def test_yaml_safe_load_refuses_python_objects(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(evil)


def test_missing_config_file_lists_builtins():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        resolve_config_path("nope.yaml")


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(World, {"name": "x", "sizes": [3], "shape": [8, 9]})
    path = tmp_path / "rt.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(World, path)
    assert again == cfg
    assert to_dict(cfg)["shape"] == [8, 9]


def test_config_keys_are_dotted():
    keys = config_keys(World)
    assert "noise.rate" in keys and "noise.kind" in keys and "name" in keys


def test_a_run_folders_lineage_record_serves_as_its_config(tmp_path):
    from datascale.lineage import config_record

    cfg = load_config(World, {"name": "x", "classes": 7, "noise": {"rate": 0.3}})
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config_record("world", cfg)))
    again = load_config(World, path, ["classes=9"])
    assert again.noise.rate == 0.3 and again.classes == 9 and again.name == "x"
    # A plain config that merely has a key named "config" is not taken for a record.
    with pytest.raises(ConfigError, match="config"):
        load_config(World, {"name": "x", "config": {"classes": 3}})
