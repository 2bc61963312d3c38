"""Gates: requirements on a run's metrics that a pipeline can act on (``--require "accuracy>=0.95"``).

A requirement is ``METRIC OP VALUE``: METRIC is the dotted path of a number in ``metrics.json``
(``accuracy``, ``by_method.gradcam.faithfulness.deletion_auc``, ``per_class.Egyptian cat.recall``:
any printable text but ``<``, ``>`` and ``=``), OP one of ``>=``, ``<=``, ``>``,
``<``, ``==``, VALUE a decimal number. Requirements are parsed with one regular expression, never
evaluated as code. A metric that is NaN (or missing from a result) fails every requirement.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from camcli.errors import CamcliError, suggestions

OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
UNGATED = ("settings", "seconds_per_image")  # what a run is, and what it cost: not verdicts
MAX_REQUIREMENTS = 100
# METRIC: anything printable up to the operator but <, > and = (a class name may hold spaces, dots or accents:
# per_class.Egyptian cat.recall); VALUE: a decimal number
_REQUIREMENT = re.compile(
    r"\s*(?P<metric>[^\s<>=\x00-\x1f\x7f](?:[^<>=\x00-\x1f\x7f]*[^\s<>=\x00-\x1f\x7f])?)\s*(?P<op>>=|<=|==|>|<)\s*"
    r"(?P<value>[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*")


@dataclass(frozen=True)
class Requirement:
    """One gate: ``metric op value``."""

    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:.10g}"


def parse(text: str) -> Requirement:
    """``"accuracy >= 0.95"`` (spaces around OP optional) as a :class:`Requirement`.

    Raises:
        CamcliError: anything else (one line that shows the form).
    """
    if len(text) > 300:
        raise CamcliError(f"`require` is {len(text)} characters long: at most 300")
    match = _REQUIREMENT.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise CamcliError(f"`require` {shown!r} is not METRIC OP VALUE (OP one of {', '.join(OPERATORS)}; "
                          "e.g. \"accuracy>=0.95\" or \"by_method.cam.pointing_game > 0.8\")")
    value = float(match["value"])
    if not math.isfinite(value) or (value == 0 and any(c in "123456789" for c in match["value"].split("e")[0].split("E")[0])):
        raise CamcliError(f"`require` {text!r}: the value must be a finite number a float holds")
    return Requirement(match["metric"], match["op"], value)


def parse_all(texts: Sequence[str]) -> tuple[Requirement, ...]:
    """Every ``--require`` of a command (at most :data:`MAX_REQUIREMENTS`)."""
    if len(texts) > MAX_REQUIREMENTS:
        raise CamcliError(f"at most {MAX_REQUIREMENTS} `require` options, got {len(texts)}")
    return tuple(parse(t) for t in texts)


def numbers(result: Mapping, prefix: str = "") -> dict[str, float]:
    """The gateable numbers of a result, by dotted path: every int or float leaf of its nested
    dicts (not booleans, not lists), outside :data:`UNGATED`."""
    out: dict[str, float] = {}
    for key, value in result.items():
        path = f"{prefix}{key}"
        if not prefix and key in UNGATED:
            continue
        if isinstance(value, Mapping):
            out.update(numbers(value, path + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def check_known(requirements: Iterable[Requirement], names: Iterable[str], what: str = "this run", hint: str = "") -> None:
    """Refuse a requirement on a metric ``what`` will not compute, naming the nearest ones (else
    the top-level ones) and ``hint`` (what computes the others).

    Raises:
        CamcliError: one line, for the first unknown metric.
    """
    known = sorted(names, key=lambda n: (n.count("."), n))
    for requirement in requirements:
        if requirement.metric not in known:
            near = suggestions(requirement.metric, known) or known[:6]
            raise CamcliError(f"`require` {requirement}: {what} computes no metric {requirement.metric!r} "
                              f"({'nearest' if len(near) < 6 else 'it has'}: {', '.join(near)}{', ...' * (len(near) == 6)}"
                              f"{'; ' + hint if hint else ''})")


def verdicts(requirements: Iterable[Requirement], result: Mapping) -> list[dict]:
    """Each requirement against ``result``: ``{"metric", "op", "value", "got", "passed"}`` (``got``
    None where the metric is missing; NaN, missing or infinite against a finite bound: it fails
    unless the comparison holds for an infinity, which is a number)."""
    found = numbers(result)
    out = []
    for requirement in requirements:
        got = found.get(requirement.metric)
        passed = got is not None and not math.isnan(got) and bool(OPERATORS[requirement.op](got, requirement.value))
        out.append({"metric": requirement.metric, "op": requirement.op, "value": requirement.value,
                    "got": None if got is None or math.isnan(got) else got, "passed": passed})
    return out


def describe(verdict: Mapping) -> str:
    """``PASS accuracy 0.9833333333 >= 0.95`` / ``FAIL ...`` (``nan`` when the metric had no value)."""
    got = "nan" if verdict["got"] is None else f"{verdict['got']:.10g}"  # enough digits to tell it from the bound
    return f"{'PASS' if verdict['passed'] else 'FAIL'} {verdict['metric']} {got} {verdict['op']} {verdict['value']:.10g}"
