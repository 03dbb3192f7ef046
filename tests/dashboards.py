"""Reading Grafana dashboards in tests: their queries, and the metric and label names those queries use.

``queries`` collects every PromQL expression of a dashboard (panel targets, panels nested in collapsed
rows, and template variable queries); ``metric_names`` and ``label_names`` read one expression with a
small PromQL tokenizer and recursive-descent parser, so function names, keywords, label names,
string literals, durations, numbers and Grafana variables (``$service``, ``${datasource}``,
``$__rate_interval``) are never mistaken for metrics. Grafana's variable query functions
(``label_values``, ``label_names``, ``query_result``, ``metrics``) are understood at the top level.
It reads PromQL only as far as names go and refuses what it does not know (an unknown function, an
unbalanced bracket) with :class:`PromQLError`; metric names starting with ``:`` are not supported.

``ENVOY_METRICS`` is the set of Envoy stats the dashboard may use, with the labels the project relies
on. An end-to-end test compares it with a real proxy's ``/stats/prometheus`` scrape: each name must be
served, and each series carries a subset of its labels (plus Envoy's own, such as
``envoy_cluster_name``): a sidecar's series carry ``proxy_deployment``, an ingress
gateway's ``proxy_gateway``, and only outbound mesh clusters carry ``destination_service`` and
``destination_deployment``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "meshplane.json"

DESTINATION_LABELS = frozenset({"destination_service", "destination_deployment"})
"""On a proxy's outbound mesh clusters: the virtual service and virtual deployment called ("namespace/name")."""
SIDECAR_LABELS = frozenset({"proxy_deployment"})
"""On every series of a sidecar: the virtual deployment of the proxy reporting it."""
GATEWAY_LABELS = frozenset({"proxy_gateway"})
"""On every series of an ingress gateway proxy: the gateway reporting it."""
_CLUSTER_LABELS = DESTINATION_LABELS | SIDECAR_LABELS | GATEWAY_LABELS

ENVOY_METRICS: Mapping[str, frozenset[str]] = MappingProxyType({
    "envoy_cluster_upstream_rq_total": _CLUSTER_LABELS,
    "envoy_cluster_upstream_rq_xx": _CLUSTER_LABELS | {"envoy_response_code_class"},  # "1".."5"
    "envoy_cluster_upstream_rq_time_bucket": _CLUSTER_LABELS | {"le"},  # milliseconds
    "envoy_cluster_upstream_rq_time_sum": _CLUSTER_LABELS,
    "envoy_cluster_upstream_rq_time_count": _CLUSTER_LABELS,
})
"""Envoy stat names (as Prometheus names, on each proxy's :15006/stats/prometheus) → labels relied on."""

GRAFANA_VARIABLES = frozenset({"__interval", "__interval_ms", "__rate_interval", "__range", "__range_s",
                               "__range_ms", "__from", "__to", "__dashboard", "__org", "__user"})
"""Grafana's built-in variables, usable in any query without being defined by the dashboard."""


class PromQLError(ValueError):
    """An expression this reader cannot parse (a typo in the dashboard, or PromQL it does not know)."""


# Loading and walking a dashboard -------------------------------------------------------------------------------


def load(path: str | Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard's JSON model."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a dashboard is a JSON object, not {type(data).__name__}")
    return data


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel in layout order, rows included, with the panels of collapsed rows after their row."""
    found: list[dict[str, Any]] = []

    def walk(items: Any) -> None:
        for panel in items or ():
            found.append(panel)
            walk(panel.get("panels"))

    walk(dashboard.get("panels"))
    for row in dashboard.get("rows") or ():  # the layout of dashboards older than schema 16
        walk(row.get("panels"))
    return found


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's template variables."""
    return list((dashboard.get("templating") or {}).get("list") or ())


def variable_query(variable: Mapping[str, Any]) -> str:
    """A query variable's query: a string, or ``{"query": ...}`` as newer Grafana versions save it."""
    query = variable.get("query")
    if isinstance(query, Mapping):
        query = query.get("query")
    return query if isinstance(query, str) else ""


def queries(dashboard: Mapping[str, Any]) -> list[str]:
    """Every ``expr`` of every panel target (rows' nested panels included), then every query variable's query."""
    found = [target["expr"] for panel in panels(dashboard) for target in panel.get("targets") or ()
             if isinstance(target.get("expr"), str) and target["expr"].strip()]
    found += [query for variable in variables(dashboard) if variable.get("type") == "query"
              if (query := variable_query(variable)).strip()]
    return found


_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?:[:.][^}]*)?\}|([A-Za-z_]\w*))|\[\[([A-Za-z_]\w*)(?::\w+)?\]\]")


def referenced_variables(text: str) -> set[str]:
    """Names of the Grafana variables a query refers to (``$name``, ``${name}``, ``${name:format}``, ``[[name]]``)."""
    return {next(group for group in match.groups() if group) for match in _VARIABLE.finditer(text)}


# PromQL ------------------------------------------------------------------------------------------------------

AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
    "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing", "exp",
    "first_over_time", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "info",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label",
    "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan",
    "tanh", "time", "timestamp", "ts_of_first_over_time", "ts_of_last_over_time", "ts_of_max_over_time",
    "ts_of_min_over_time", "vector", "year",
})
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                      "and", "or", "unless", "atan2"})
_PRECEDENCE = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
               "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}
_MATCH_OPERATORS = frozenset({"=", "!=", "=~", "!~"})

_TOKENS = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)(?!\w)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?!\w)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<identifier>[a-zA-Z_][\w:]*)
  | (?P<operator>==|!=|<=|>=|=~|!~|[-+*/%^<>=@])
  | (?P<punctuation>[(){}\[\],:])
""", re.VERBOSE)


@dataclass(frozen=True)
class _Token:
    kind: str  # string, duration, number, variable, identifier, operator, punctuation, end
    text: str
    position: int


Matcher = tuple[str, str, str]
"""A label matcher of a selector: (label, operator, value), the value unquoted."""


@dataclass
class _Selector:
    name: str | None
    matchers: list[Matcher] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)  # matcher labels, then by/without/on/ignoring/group_x ones


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKENS.match(text, position)
        if match is None:
            raise PromQLError(f"unexpected {text[position]!r} at {position} in {text!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append(_Token(kind, match.group(), position))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _unquote(text: str) -> str:
    """A string literal's value: backquoted strings are raw, the others undo backslash escapes."""
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", lambda match: _ESCAPES.get(match.group(1), match.group(1)), text[1:-1])


class _Parser:
    """PromQL, only as far as telling which names are metrics and which labels each is used with."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    # tokens

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.peek()
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at(self, text: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind in {"operator", "punctuation"} and token.text == text

    def at_keyword(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "identifier" and token.text.lower() in words

    def expect(self, text: str) -> _Token:
        if not self.at(text):
            raise self.error(f"expected {text!r}")
        return self.advance()

    def error(self, message: str) -> PromQLError:
        token = self.peek()
        found = repr(token.text) if token.text else "the end"
        return PromQLError(f"{message}, found {found} at {token.position} in {self.text!r}")

    # grammar

    def query(self) -> list[_Selector]:
        """A whole panel or variable query; Grafana's variable functions are allowed at the top."""
        token = self.peek()
        if token.kind == "identifier" and self.at("(", 1) and token.text in {"label_values", "label_names",
                                                                               "query_result"}:
            self.advance()
            self.expect("(")
            selectors: list[_Selector] = []
            if token.text == "label_values":
                if not (self.peek().kind == "identifier" and self.at(")", 1)):
                    selectors = self.expression()
                    self.expect(",")
                label = self.label()
                for selector in selectors:
                    selector.labels.add(label)
            elif not self.at(")"):
                selectors = self.expression()
            self.expect(")")
        else:
            selectors = self.expression()
        if self.peek().kind != "end":
            raise self.error("expected an operator or the end")
        return selectors

    def expression(self, least: int = 0) -> list[_Selector]:
        """Binary operators by precedence climbing; ``^`` is right-associative, the rest left."""
        left = self.unary()
        while True:
            token = self.peek()
            operator = token.text.lower() if token.kind == "identifier" else token.text
            precedence = _PRECEDENCE.get(operator) if token.kind in {"identifier", "operator"} else None
            if precedence is None or precedence < least:
                return left
            self.advance()
            if self.at_keyword("bool"):
                self.advance()
            matching: set[str] = set()
            group: str | None = None
            included: set[str] = set()
            if self.at_keyword("on", "ignoring"):
                self.advance()
                matching = self.labels()
                if self.at_keyword("group_left", "group_right"):
                    group = self.advance().text.lower()
                    if self.at("("):
                        included = self.labels()
            right = self.expression(precedence if operator == "^" else precedence + 1)
            for selector in left + right:
                selector.labels |= matching
            for selector in right if group == "group_left" else left if group == "group_right" else ():
                selector.labels |= included  # copied from the "one" side, so they are its labels
            left = left + right

    def unary(self) -> list[_Selector]:
        if self.at("-") or self.at("+"):
            self.advance()
            return self.unary()
        selectors = self.primary()
        self.modifiers()
        return selectors

    def modifiers(self) -> None:
        """``[range]``, ``[range:step]``, ``offset d`` and ``@ t`` after a selector or subexpression."""
        while True:
            if self.at("["):
                self.advance()
                self.duration()
                if self.at(":"):
                    self.advance()
                    if not self.at("]"):
                        self.duration()
                self.expect("]")
            elif self.at_keyword("offset"):
                self.advance()
                if self.at("-") or self.at("+"):
                    self.advance()
                self.duration()
            elif self.at("@"):
                self.advance()
                if self.peek().text in {"start", "end"} and self.at("(", 1):
                    self.advance()
                    self.expect("(")
                    self.expect(")")
                elif self.peek().kind in {"number", "variable"}:
                    self.advance()
                else:
                    raise self.error("expected a timestamp, start() or end() after @")
            else:
                return

    def duration(self) -> None:
        if self.peek().kind not in {"duration", "number", "variable"}:
            raise self.error("expected a duration")
        self.advance()

    def primary(self) -> list[_Selector]:
        token = self.peek()
        if self.at("("):
            self.advance()
            selectors = self.expression()
            self.expect(")")
            return selectors
        if self.at("{"):
            return [self.selector(None)]
        if token.kind in {"string", "number", "variable"}:
            self.advance()
            return []
        if token.kind != "identifier":
            raise self.error("expected an expression")
        word = token.text.lower()
        if word in AGGREGATIONS and (self.at("(", 1) or self.peek(1).text.lower() in {"by", "without"}):
            return self.aggregation()
        if self.at("(", 1):
            if token.text not in FUNCTIONS:
                raise self.error(f"unknown function {token.text!r}")
            self.advance()
            return self.arguments()
        if word in {"inf", "nan"}:
            self.advance()
            return []
        if word in KEYWORDS:
            raise self.error(f"unexpected keyword {token.text!r}")
        self.advance()
        return [self.selector(token.text)]

    def aggregation(self) -> list[_Selector]:
        """``op [by|without (labels)] (args) [by|without (labels)]``; the grouping labels are the inner metrics'."""
        self.advance()
        grouping: set[str] = set()
        if self.at_keyword("by", "without"):
            self.advance()
            grouping = self.labels()
        selectors = self.arguments()
        if not grouping and self.at_keyword("by", "without"):
            self.advance()
            grouping = self.labels()
        for selector in selectors:
            selector.labels |= grouping
        return selectors

    def arguments(self) -> list[_Selector]:
        self.expect("(")
        selectors: list[_Selector] = []
        while not self.at(")"):
            selectors += self.expression()
            if not self.at(")"):
                self.expect(",")
        self.expect(")")
        return selectors

    def labels(self) -> set[str]:
        """``(a, b, ...)`` after by, without, on, ignoring, group_left or group_right."""
        self.expect("(")
        found: set[str] = set()
        while not self.at(")"):
            found.add(self.label())
            if not self.at(")"):
                self.expect(",")
        self.expect(")")
        return found

    def label(self) -> str:
        token = self.peek()
        if token.kind == "identifier":
            return self.advance().text
        if token.kind == "string":
            return _unquote(self.advance().text)
        raise self.error("expected a label name")

    def selector(self, name: str | None) -> _Selector:
        """``name``, ``name{matchers}`` or ``{matchers}``; ``__name__="x"`` and a bare ``{"x"}`` name the metric."""
        selector = _Selector(name)
        if not self.at("{"):
            return selector
        self.advance()
        while not self.at("}"):
            quoted = self.peek().kind == "string"
            label = self.label()
            if self.peek().kind == "operator" and self.peek().text in _MATCH_OPERATORS:
                operator = self.advance().text
                if self.peek().kind != "string":
                    raise self.error("expected a quoted label value")
                value = _unquote(self.advance().text)
                if label == "__name__":
                    if operator == "=":
                        selector.name = value
                else:
                    selector.matchers.append((label, operator, value))
                    selector.labels.add(label)
            elif quoted:
                selector.name = label
            else:
                raise self.error("expected a label matcher")
            if not self.at("}"):
                self.expect(",")
        self.expect("}")
        return selector


def _selectors(expr: str) -> list[_Selector]:
    if re.fullmatch(r"\s*metrics\(.*\)\s*", expr, re.DOTALL):  # Grafana's metrics(regex): names no metric
        return []
    return _Parser(expr).query()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana variable query) refers to."""
    return {selector.name for selector in _selectors(expr) if selector.name}


def label_names(expr: str) -> dict[str, set[str]]:
    """Per metric: the labels its selectors match on and the enclosing by/without/on/ignoring/group_x lists name."""
    found: dict[str, set[str]] = {}
    for selector in _selectors(expr):
        if selector.name:
            found.setdefault(selector.name, set()).update(selector.labels)
    return found


def selectors(expr: str) -> list[tuple[str, frozenset[Matcher]]]:
    """Every named vector selector of an expression with its label matchers, in order."""
    return [(selector.name, frozenset(selector.matchers)) for selector in _selectors(expr) if selector.name]

