"""Every setting explains itself: each method setting reachable from the registry (the classic samplers'
constructor arguments included) and each TrainConfig field carries a one-line help, and `hnlm methods NAME`
prints it beside the default."""

import dataclasses

import pytest

from hnlm.cf.samplers import SAMPLERS, Sampler
from hnlm.cf.trainer import TrainConfig
from hnlm.cli import main
from hnlm.methods import get_method, method_names, setting_help
from hnlm.methods.classic import settings_of


@pytest.mark.parametrize("name", method_names())
def test_every_method_setting_has_a_one_line_help(name):
    fields = dataclasses.fields(get_method(name).settings)
    missing = [f.name for f in fields if not setting_help(f)]
    assert not missing, f"{name}: settings without a help line: {missing}"
    assert all("\n" not in setting_help(f) for f in fields)


def test_every_classic_sampler_argument_has_a_help():
    for cls in SAMPLERS.values():
        assert {f.name for f in dataclasses.fields(settings_of(cls))} == set(getattr(cls, "settings_help", {}))


def test_a_sampler_argument_without_help_is_refused():
    class Undocumented(Sampler):
        settings_help = {"a": "documented"}

        def __init__(self, a: int = 1, b: float = 2.0):
            self.a, self.b = a, b

    with pytest.raises(ValueError, match="no help for b"):
        settings_of(Undocumented)


def test_every_train_config_field_has_a_help():
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not setting_help(f)]
    assert not missing, f"TrainConfig fields without a help line: {missing}"


def test_methods_command_prints_each_setting_with_default_and_help(capsys):
    assert main(["methods", "dnsmn-guard"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(get_method("dnsmn-guard").settings):
        line = next(line for line in out.splitlines() if f"--set {f.name}={f.default} " in line)
        assert line.rstrip().endswith(setting_help(f))


def test_train_help_shows_the_train_config_helps(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert setting_help({f.name: f for f in dataclasses.fields(TrainConfig)}["patience"]) in out
    assert "`hnlm methods NAME` lists them with their defaults and helps" in out
