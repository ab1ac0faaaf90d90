"""The classic negative samplers of hnlm.cf.samplers as methods. Each sampler's constructor defaults are its
settings' defaults (one source); its `summary` attribute (else its docstring's
first line) is its one-line description."""

from __future__ import annotations

import dataclasses
import inspect

from hnlm.cf.samplers import SAMPLERS
from hnlm.methods import Method, register


def settings_of(sampler_cls) -> type:
    """A dataclass whose fields are the sampler constructor's keyword arguments and defaults."""
    params = [p for p in inspect.signature(sampler_cls.__init__).parameters.values()
              if p.name != "self" and p.default is not inspect.Parameter.empty]
    return dataclasses.make_dataclass(f"{sampler_cls.__name__}Settings",
                                      [(p.name, type(p.default), dataclasses.field(default=p.default))
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

DNSMN_DEFAULTS = settings_of(SAMPLERS["dns-mn"])()     # DNS(M,N)'s defaults, for the methods built on it
