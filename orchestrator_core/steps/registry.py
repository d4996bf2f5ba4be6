"""The Step type registry: wire type -> the class that implements it (PLACE-5006).

:func:`discover` imports every module of :mod:`orchestrator_core.steps` except the
infrastructure ones (``base``, ``registry``, ``runner``, ``admission`` and any module
whose name starts with ``_``) and collects the classes each lists in ``KINDS``. Adding a
Step type is therefore one module here plus its wire Struct in ``contracts/steps.py``
(``specs/90_adding_a_step_type.md``): nothing else names the types. :class:`StepKinds`
refuses to start when a member of the ``StepSubmit`` union has no class, or two classes
claim one type.

:meth:`StepKinds.replay_table` is the replay table of
``specs/20_stream_and_replay.md`` §5 (a unit test compares the two).
"""

from __future__ import annotations

import importlib
import pkgutil
import typing
from collections.abc import Iterable

import msgspec

import orchestrator_core.steps as steps_package
from contracts.steps import StepSubmit
from orchestrator_core.steps.base import StepContext, StepKind

__all__ = ["INFRASTRUCTURE", "StepKinds", "discover", "type_name"]

INFRASTRUCTURE = frozenset({"admission", "base", "registry", "runner"})
"""Modules of the package that are not Step types."""


def type_name(submit: type[msgspec.Struct]) -> str:
    """The wire type of a submission Struct: its tag (``type`` field), e.g. ``fs_op``."""
    return str(submit.__struct_config__.tag)


def discover() -> tuple[type[StepKind], ...]:
    """Every Step class listed in a ``KINDS`` of a step module, in module-name order."""
    kinds: list[type[StepKind]] = []
    for info in sorted(pkgutil.iter_modules(steps_package.__path__), key=lambda m: m.name):
        if info.name in INFRASTRUCTURE or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{steps_package.__name__}.{info.name}")
        kinds.extend(getattr(module, "KINDS", ()))
    return tuple(kinds)


class StepKinds:
    """Each wire type and the instance of its class, built on one context.

    Args:
        ctx: the step context every class is constructed with.
        kinds: the classes (default: :func:`discover`).

    Raises:
        RuntimeError: a ``StepSubmit`` member has no class, or two classes claim it.
    """

    def __init__(self, ctx: StepContext, kinds: Iterable[type[StepKind]] | None = None) -> None:
        self._by_submit: dict[type, tuple[str, StepKind]] = {}
        self.kinds: list[StepKind] = []
        for cls in discover() if kinds is None else kinds:
            kind = cls(ctx)  # type: ignore[call-arg]  # a StepKind is built on the context
            self.kinds.append(kind)
            for submit in cls.submits:
                if submit in self._by_submit:
                    raise RuntimeError(f"step type {type_name(submit)} has two classes")
                self._by_submit[submit] = (type_name(submit), kind)
        missing = sorted(type_name(s) for s in typing.get_args(StepSubmit)
                         if s not in self._by_submit)
        if missing:
            raise RuntimeError(f"no step module implements {', '.join(missing)}")

    def of(self, body: StepSubmit) -> tuple[str, StepKind]:
        """``(wire type, implementation)`` of a submission."""
        return self._by_submit[type(body)]

    def kind(self, cls: type[StepKind]) -> StepKind:
        """The instance of one class (e.g. to read its breakers in a test).

        Raises:
            KeyError: no such class is registered.
        """
        for kind in self.kinds:
            if type(kind) is cls:
                return kind
        raise KeyError(cls.__name__)

    def replay_table(self) -> list[tuple[str, str, str, str]]:
        """One row per class: ``(types, record, replay, strict_replay)``, the types as
        ``` `llm_call`, `llm_plan` ```, in the order of the ``StepSubmit`` union."""
        order = {s: i for i, s in enumerate(typing.get_args(StepSubmit))}
        rows = []
        for kind in sorted(self.kinds, key=lambda k: min(order[s] for s in k.submits)):
            names = ", ".join(f"`{type_name(s)}`"
                              for s in sorted(kind.submits, key=order.__getitem__))
            rule = kind.replay
            rows.append((names, rule.record, "serves the recording", rule.strict_replay))
        return rows
