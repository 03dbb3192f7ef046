"""Problems: what parsing, validation and analysis say about one object.

A problem names a field path inside the object (``spec.routeRules[0].httpRoute.destinations``) and says
what is wrong in words a user can act on. Errors refuse the object; warnings are advice (for example a
reference to an object that is not known yet: creation order is free). The object's identity is added
when a problem is reported (:func:`format_problem`), so validators never repeat it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about one field of one object."""

    path: str
    message: str
    severity: Severity = Severity.ERROR

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def error(path: str, message: str) -> Problem:
    return Problem(path, message, Severity.ERROR)


def warning(path: str, message: str) -> Problem:
    return Problem(path, message, Severity.WARNING)


def has_errors(problems: list[Problem] | tuple[Problem, ...]) -> bool:
    return any(p.is_error for p in problems)


def format_problem(kind: str, namespace: str, name: str, problem: Problem) -> str:
    """The one-line form every tool prints: ``Kind namespace/name: path: message``.

    Warnings carry a ``warning:`` tag after the path so that a reader of mixed output can tell them
    apart; errors carry none, because they are the common case and the line is long enough.
    """
    tag = "warning: " if problem.severity is Severity.WARNING else ""
    where = f"{problem.path}: " if problem.path else ""
    return f"{kind} {namespace}/{name}: {where}{tag}{problem.message}"
