"""Recipe schema: strict keys, key paths in errors, overrides, built-in recipes validate."""

from __future__ import annotations

import pytest

from kdforge import recipes
from kdforge.errors import ConfigError
from kdforge.recipe import apply_overrides, load_yaml, parse_override, validate
from kdforge.runner import resolve

BASE = {"student": {"name": "mlp"}}


def test_unknown_key_names_path_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        validate({**BASE, "train": {"optimizer": {"lrr": 0.1}}})
    text = str(err.value)
    assert "train.optimizer.lrr: unknown key" in text
    assert "allowed keys: name, lr, momentum, nesterov, weight_decay" in text


def test_bad_literal_lists_allowed_values_and_missing_key_is_named():
    with pytest.raises(ConfigError, match=r"train\.schedule\.name: Input should be 'constant', 'step' or 'cosine'"):
        validate({**BASE, "train": {"schedule": {"name": "linear"}}})
    with pytest.raises(ConfigError, match=r"student: required key is missing"):
        validate({})
    with pytest.raises(ConfigError, match=r"data\.batch_size: Input should be greater than 0"):
        validate({**BASE, "data": {"batch_size": 0}})


def test_overrides_parse_yaml_values_and_replace_mappings():
    assert parse_override("train.optimizer.lr=0.1") == (["train", "optimizer", "lr"], 0.1)
    assert parse_override("student.params.hidden=[32, 16]")[1] == [32, 16]
    tree = apply_overrides({"objectives": {"ce": 0.5, "kd": 0.5}}, ["objectives={ce: 1.0}"])
    assert tree == {"objectives": {"ce": 1.0}}
    with pytest.raises(ConfigError, match=r"must look like key\.path=value"):
        parse_override("train.epochs")


def test_resolve_checks_registries_before_running():
    with pytest.raises(ConfigError, match=r"objectives\.kdd: unknown objective 'kdd'.*Valid objectives: .*kd"):
        resolve({**BASE, "objectives": {"kdd": 1.0}})
    with pytest.raises(ConfigError, match=r"student\.name: unknown model 'mpl'"):
        resolve({"student": {"name": "mpl"}})
    with pytest.raises(ConfigError, match=r"student\.params\.width: unknown parameter; valid: hidden, dropout"):
        resolve({"student": {"name": "mlp", "params": {"width": 3}}})
    with pytest.raises(ConfigError, match=r"data\.params\.rot: unknown parameter"):
        resolve({**BASE, "data": {"params": {"rot": 1}}})
    with pytest.raises(ConfigError, match=r"(?s)variant .bad.*train\.epochz: unknown key"):
        resolve({**BASE, "variants": {"bad": {"train.epochz": 1}}})


@pytest.mark.parametrize("name", sorted(recipes.builtin()))
def test_builtin_recipes_validate(name: str):
    recipe = resolve(load_yaml(recipes.find(name)))
    assert recipe.student.name


def test_unknown_builtin_recipe_lists_them():
    with pytest.raises(ConfigError, match=r"Built-in: .*fmnist-demo"):
        recipes.find("fmnist-dmeo")


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
