"""Every training method, declared once: the classic samplers and the LLM-based methods.

A `Method` names a method, says in one line what it does, owns its settings dataclass (the defaults are
typed there and nowhere else, each field with a one-line help: `field(default=..., metadata={"help": ...})`,
shown by `hnlm methods NAME`), lists the resources it trains with (an SNS bank, profile embeddings, a
fine-tuned run's emitted vectors) and builds its (sampler, extension) from (data, settings, resources, seed).
`hnlm train --sampler NAME` and the study's CF grid are two doors onto these declarations.

A `Variant` is a method with some settings changed (`variant("sns", alpha=0.1)`): one row of a results
table, with a typed identity instead of a string grammar.

Each module of this package declares its methods with `register(Method(...))`; the package imports every
module in its folder, so a new method is one new file here (and its test).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from dataclasses import dataclass
from typing import Any, Callable

from hnlm.errors import UserFacingError

FAMILIES = ("classic", "llm")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str                       # one line, shown by `hnlm methods`
    settings: type                     # a dataclass; its field defaults are the method's defaults
    build: Callable                    # build(data, settings, resources, seed) -> (sampler, extension | None)
    needs: Callable[[Any], tuple] = lambda settings: ()   # its inputs (resources.Need), from the settings
    family: str = "classic"            # "classic" sampler or "llm"-based (tables and figures group by it)
    ablation_of: str | None = None     # the method whose idea this one removes
    search: dict = dataclasses.field(default_factory=dict)   # {setting: hnlm.cf.search.Axis} the tuning searches

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {FAMILIES}")
        if not dataclasses.is_dataclass(self.settings):
            raise TypeError(f"{self.name}: settings must be a dataclass")
        unknown = set(self.search) - {f.name for f in dataclasses.fields(self.settings)}
        if unknown:
            raise ValueError(f"{self.name}: search names unknown settings {sorted(unknown)}")

    def make_settings(self, **overrides):
        """The settings dataclass with `overrides` applied; unknown names are an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(self.settings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UserFacingError(f"method {self.name!r} has no setting {', '.join(unknown)}; its settings: "
                                  f"{', '.join(sorted(known)) or 'none'} (see `hnlm methods {self.name}`)")
        return self.settings(**overrides)


def setting_help(f: dataclasses.Field) -> str:
    """The one-line help of a settings field ("" when it has none)."""
    return f.metadata.get("help", "")


def setting_like(settings_cls: type, name: str) -> Any:
    """A field with the default and help of `settings_cls`'s setting `name`: one source for a setting that
    two methods share."""
    f = {f.name: f for f in dataclasses.fields(settings_cls)}[name]
    return dataclasses.field(default=f.default, metadata=f.metadata)


def describe_settings(method: Method) -> list[str]:
    """One line per setting: `--set NAME=DEFAULT  help`."""
    fields = dataclasses.fields(method.settings)
    width = max((len(f"{f.name}={f.default}") for f in fields), default=0)
    return [f"  --set {f'{f.name}={f.default}':<{width}}  {setting_help(f)}" for f in fields]


_REGISTRY: dict[str, Method] = {}
_ALL_IMPORTED = False      # a method module imported on its own registers only its methods


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is declared twice")
    _REGISTRY[method.name] = method
    return method


def _registry() -> dict[str, Method]:
    """Every declared method; the first call imports the method modules (and torch), so a parser that only
    names this package stays light (hnlm.cli)."""
    global _ALL_IMPORTED
    if not _ALL_IMPORTED:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "commands":      # the CLI door, not a method
                importlib.import_module(f"{__name__}.{info.name}")
        _ALL_IMPORTED = True
    return _REGISTRY


def get_method(name: str) -> Method:
    if name not in _registry():
        raise UserFacingError(f"unknown method {name!r}: choose one of {', '.join(_REGISTRY)} "
                              "(`hnlm methods` lists them)")
    return _REGISTRY[name]


def method_of(label: str) -> Method:
    """The method a results label stands for: a method name ("dns-mn"), or one followed by the study's label
    parts: "-<signal>" ("hnlmrec-text"), "@<llm>" ("sns@smollm2-135m"), ":<option>" or " <setting>=<value>"
    (`Variant.name`). The longest method name that fits wins ("sns-random" is not "sns")."""
    name = re.split(r"[@: ]", str(label), maxsplit=1)[0].lower()
    for method in sorted(_registry(), key=len, reverse=True):
        if name == method or name.startswith(method + "-"):
            return _REGISTRY[method]
    raise UserFacingError(f"{label!r} names no method: a method label starts with a method name "
                          f"({', '.join(_REGISTRY)}; `hnlm methods` lists them)")


def method_names(family: str | None = None) -> list[str]:
    return [m.name for m in _registry().values() if family is None or m.family == family]


def describe_methods() -> str:
    """One line per method, for `--help`."""
    width = max(map(len, _registry()))
    return "\n".join(f"  {m.name:<{width}}  {m.summary}" for m in _REGISTRY.values())


@dataclass(frozen=True)
class Variant:
    """A method with some settings changed; `label` names it in tables (default: name plus overrides). `train`
    overrides the run's hnlm.cf.TrainConfig (a tuned learning rate and batch size, `hnlm.study.tuning`)."""

    method: str
    overrides: tuple[tuple[str, Any], ...] = ()
    label: str | None = None
    train: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return " ".join([self.method, *(f"{k}={v}" for k, v in self.overrides)])

    @property
    def declaration(self) -> Method:
        return get_method(self.method)

    def settings(self):
        return self.declaration.make_settings(**dict(self.overrides))

    def needs(self) -> tuple:
        return tuple(self.declaration.needs(self.settings()))

    def build(self, data, resources, seed: int):
        return self.declaration.build(data, self.settings(), resources, seed)


def variant(method: str, label: str | None = None, **overrides) -> Variant:
    """`variant("sns", alpha=0.1)`; settings are checked against the method's dataclass now, not at training."""
    get_method(method).make_settings(**overrides)
    return Variant(method, tuple(sorted(overrides.items())), label)


def as_variant(spec) -> Variant:
    """A Variant, or a method name (its default settings)."""
    return spec if isinstance(spec, Variant) else variant(str(spec))
