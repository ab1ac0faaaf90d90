"""The classic negative samplers of hnlm.cf.samplers as methods. Each sampler's constructor defaults are its
settings' defaults and its `settings_help` attribute their one-line helps (one source each); its `summary`
attribute (else its docstring's first line) is its one-line description."""

from __future__ import annotations

import dataclasses
import inspect

from hnlm.cf.samplers import SAMPLERS
from hnlm.methods import Method, register


def settings_of(sampler_cls) -> type:
    """A dataclass whose fields are the sampler constructor's keyword arguments, with their defaults and the
    helps of the sampler's `settings_help`; a keyword without a help is an error."""
    params = [p for p in inspect.signature(sampler_cls.__init__).parameters.values()
              if p.name != "self" and p.default is not inspect.Parameter.empty]
    helps = getattr(sampler_cls, "settings_help", {})
    missing = [p.name for p in params if not helps.get(p.name)]
    if missing:
        raise ValueError(f"{sampler_cls.__name__}.settings_help has no help for {', '.join(missing)}")
    return dataclasses.make_dataclass(f"{sampler_cls.__name__}Settings",
                                      [(p.name, type(p.default),
                                        dataclasses.field(default=p.default, metadata={"help": helps[p.name]}))
                                       for p in params])


def summary_of(sampler_cls) -> str:
    """The sampler's `summary` attribute, else the first line of its docstring."""
    return getattr(sampler_cls, "summary", None) or inspect.getdoc(sampler_cls).splitlines()[0].rstrip(".")


def declare(name: str, sampler_cls) -> Method:
    return register(Method(name=name, summary=summary_of(sampler_cls), settings=settings_of(sampler_cls),
                           family="classic", search=dict(sampler_cls.search),
                           build=lambda data, settings, resources, seed: (
                               sampler_cls(**dataclasses.asdict(settings)), None)))


for _name, _cls in SAMPLERS.items():
    declare(_name, _cls)
