"""The Grafana dashboard (dashboards/meshplane.json) is well formed and asks only for metrics that exist.

Control-plane names are checked against the real registry (``Metrics().registry``), data-plane names
against :data:`tests.dashboards.ENVOY_METRICS`, which an end-to-end test holds against a real Envoy.
The PromQL reader the checks rely on is tested on its own first.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from meshplane.controlplane.metrics import Metrics
from tests import dashboards
from tests.dashboards import ENVOY_METRICS, label_names, metric_names, queries, selectors

TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus attaches to every series it scrapes."""
SERIES_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum",
                   "_created"), "summary": ("", "_count", "_sum", "_created"), "info": ("_info",),
                   "stateset": ("",), "gaugehistogram": ("_bucket", "_gcount", "_gsum"), "unknown": ("",)}
"""Per metric type, the suffixes of the series prometheus-client exposes for it."""


# The PromQL reader ---------------------------------------------------------------------------------------------


def test_histogram_quantile_over_an_aggregated_rate() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, x) (rate(m_bucket{a="b"}[5m])))'
    assert metric_names(expr) == {"m_bucket"}
    assert label_names(expr) == {"m_bucket": {"le", "x", "a"}}


def test_grouping_after_the_arguments_and_without() -> None:
    assert label_names('sum(rate(m_total{a="b"}[5m])) by (x)') == {"m_total": {"a", "x"}}
    assert label_names("sum without (instance, pod) (m)") == {"m": {"instance", "pod"}}
    assert label_names("topk(5, m) by (x)") == {"m": {"x"}}
    assert label_names('count_values("version", m)') == {"m": set()}


def test_nested_aggregations_give_every_inner_metric_every_enclosing_grouping() -> None:
    expr = "sum by (a) (max by (a, b) (m)) / scalar(sum(n))"
    assert label_names(expr) == {"m": {"a", "b"}, "n": set()}


def test_grafana_label_values() -> None:
    expr = 'label_values(m{a="b", c=~"$service"}, d)'
    assert metric_names(expr) == {"m"}
    assert label_names(expr) == {"m": {"a", "c", "d"}}
    assert metric_names("label_values(d)") == set()
    assert metric_names("label_values(sum by (x) (rate(m_total[5m])), x)") == {"m_total"}
    assert metric_names("query_result(topk(3, m))") == {"m"}
    assert metric_names("label_names()") == set()
    assert metric_names("metrics(meshplane_.*)") == set()


def test_offset_at_and_subqueries() -> None:
    expr = "rate(m_total[5m] offset 1h) - rate(m_total[5m] offset -1d @ 1700000000) + n @ end()"
    assert metric_names(expr) == {"m_total", "n"}
    assert metric_names("max_over_time(rate(m_total[5m])[1h:1m]) + min_over_time(n[30m:])") == {"m_total", "n"}
    assert metric_names("m offset 1h30m") == {"m"}


def test_binary_operators_by_precedence_and_their_matching_labels() -> None:
    expr = "a / on (x) group_left (y) b + c * 2 > bool 0.5 and d or e unless f ^ -g atan2 h"
    assert metric_names(expr) == {"a", "b", "c", "d", "e", "f", "g", "h"}
    names = label_names(expr)
    assert names["a"] == {"x"}, "on(...) binds to the division only: it comes before the +"
    assert names["b"] == {"x", "y"}, "group_left's labels come from the right-hand side"
    assert names["c"] == set()
    assert label_names("a * ignoring (z) group_right b") == {"a": {"z"}, "b": {"z"}}
    assert label_names("a == bool on (x) b") == {"a": {"x"}, "b": {"x"}}


def test_regex_selectors_and_string_literals() -> None:
    expr = 'm{a=~"b|c.*", d!~"e{2}(f)", g!="", h="x\\"}y"}'
    assert metric_names(expr) == {"m"}
    assert label_names(expr) == {"m": {"a", "d", "g", "h"}}
    assert selectors(expr) == [("m", frozenset({("a", "=~", "b|c.*"), ("d", "!~", "e{2}(f)"), ("g", "!=", ""),
                                               ("h", "=", 'x"}y')}))]
    replaced = 'label_replace(rate(m_total[5m]), "dst", "$1", "src", "(.*)")'
    assert metric_names(replaced) == {"m_total"}
    assert metric_names("m{a=`raw\\d`}") == {"m"}


def test_numbers_durations_variables_and_keywords_are_not_metrics() -> None:
    assert metric_names("1e3 * m + 0x1f - Inf + .5 - NaN") == {"m"}
    assert metric_names("rate(m_total[$__rate_interval]) > ${threshold}") == {"m_total"}
    assert metric_names("sum(increase(m_total[$__range]))") == {"m_total"}
    assert label_names("sum by (on, bool, type) (m)") == {"m": {"on", "bool", "type"}}
    assert metric_names("job:m_total:rate5m # a recording rule\n") == {"job:m_total:rate5m"}


def test_the_metric_name_as_a_matcher() -> None:
    assert label_names('{__name__="m", a="b"}') == {"m": {"a"}}
    assert label_names('{"m", a="b"}') == {"m": {"a"}}
    assert metric_names('{__name__=~"m.*"}') == set(), "a regex names no one metric"


@pytest.mark.parametrize("expr", [
    "rat(m[5m])",  # misspelt function
    "sum(rate(m[5m])",  # unbalanced
    "m{a=b}",  # unquoted value
    "m[5min]",
    "m offset",
    "m by (a)",
    "a +",
    "m &",
])
def test_what_is_not_promql_is_refused(expr: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        metric_names(expr)


def test_queries_include_collapsed_rows_and_template_variables() -> None:
    dashboard: dict[str, Any] = {
        "panels": [
            {"type": "row", "id": 1, "panels": []},
            {"type": "timeseries", "id": 2, "targets": [{"expr": "a"}, {"expr": ""}, {"refId": "B"}]},
            {"type": "row", "id": 3, "collapsed": True, "panels": [
                {"type": "stat", "id": 4, "targets": [{"expr": "b"}]}]},
        ],
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "query": "prometheus"},
            {"type": "query", "name": "x", "query": "label_values(c, x)"},
            {"type": "query", "name": "y", "query": {"query": "label_values(d, y)", "refId": "Y"}},
            {"type": "custom", "name": "z", "query": "1,2,3"},
        ]},
    }
    assert queries(dashboard) == ["a", "b", "label_values(c, x)", "label_values(d, y)"]
    assert [panel["id"] for panel in dashboards.panels(dashboard)] == [1, 2, 3, 4]


def test_referenced_variables() -> None:
    text = 'rate(m{a=~"$service", b="${deployment:regex}"}[$__rate_interval]) + [[old]] + "$1"'
    assert dashboards.referenced_variables(text) == {"service", "deployment", "__rate_interval", "old"}


# The dashboard -------------------------------------------------------------------------------------------------

DASHBOARD = dashboards.load()
PANELS = dashboards.panels(DASHBOARD)
GRAPHS = [panel for panel in PANELS if panel.get("type") != "row"]
PANEL_QUERIES = [target["expr"] for panel in GRAPHS for target in panel.get("targets") or () if target.get("expr")]


def used_labels() -> dict[str, set[str]]:
    """Every metric any query of the dashboard uses → every label it is used with."""
    found: dict[str, set[str]] = {}
    for query in queries(DASHBOARD):
        for name, labels in label_names(query).items():
            found.setdefault(name, set()).update(labels)
    return found


USED_LABELS = used_labels()


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    assert DASHBOARD["uid"] == "meshplane"
    assert DASHBOARD["title"]
    assert 36 <= DASHBOARD["schemaVersion"] <= 41
    assert DASHBOARD.get("id") is None, "an exported dashboard carries no database id"


def test_panels_have_unique_ids_and_titles() -> None:
    assert GRAPHS
    ids = [panel["id"] for panel in PANELS]
    titles = [panel["title"] for panel in PANELS]
    assert all(isinstance(panel_id, int) for panel_id in ids)
    assert len(set(ids)) == len(ids), sorted(ids)
    assert all(titles), "every panel and row has a title"
    assert len(set(titles)) == len(titles), sorted(titles)


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in PANELS:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[x, y]!r}"
                taken[x, y] = panel["title"]
    assert PANELS[0]["type"] == "row", "every panel sits under a row"


def test_a_prometheus_datasource_variable_feeds_every_panel_and_query() -> None:
    variables = {variable["name"]: variable for variable in dashboards.variables(DASHBOARD)}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    uses = {"type": "prometheus", "uid": "${datasource}"}
    for panel in GRAPHS:
        assert panel["datasource"] == uses, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", uses) == uses, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == uses, variable["name"]


def test_service_and_deployment_variables_list_the_mesh_destinations() -> None:
    variables = {variable["name"]: variable for variable in dashboards.variables(DASHBOARD)}
    for name, label in (("service", "destination_service"), ("deployment", "destination_deployment")):
        variable = variables[name]
        query = dashboards.variable_query(variable)
        assert variable["type"] == "query"
        assert query.startswith("label_values(") and query.rstrip(")").endswith(f", {label}"), query
        assert metric_names(query) == {"envoy_cluster_upstream_rq_total"}, query
        assert label in label_names(query)["envoy_cluster_upstream_rq_total"]
        assert variable.get("definition", query) == query, "what Grafana shows is what it runs"
    assert "$service" in dashboards.variable_query(variables["deployment"]), "deployments of the chosen services"


def test_every_panel_has_a_target_with_an_expression() -> None:
    for panel in GRAPHS:
        targets = panel.get("targets") or []
        assert any(isinstance(target.get("expr"), str) and target["expr"].strip() for target in targets), \
            panel["title"]
        assert len({target["refId"] for target in targets}) == len(targets), panel["title"]


def test_every_query_refers_to_a_metric_and_only_defined_variables() -> None:
    defined = {variable["name"] for variable in dashboards.variables(DASHBOARD)} | dashboards.GRAFANA_VARIABLES
    for query in queries(DASHBOARD):
        assert metric_names(query), query
        assert dashboards.referenced_variables(query) <= defined, query


def test_histogram_buckets_are_aggregated_by_le() -> None:
    for query in queries(DASHBOARD):
        for name, labels in label_names(query).items():
            if name.endswith("_bucket"):
                assert "le" in labels, query


def test_data_plane_panels_count_mesh_traffic_of_the_chosen_services() -> None:
    for query in PANEL_QUERIES:
        grouped = label_names(query)
        for name, matchers in selectors(query):
            if name.startswith("envoy_"):
                assert ("destination_service", "!=", "") in matchers, query
                assert ("destination_service", "=~", "$service") in matchers, query
                if "destination_deployment" in grouped[name]:
                    assert ("destination_deployment", "=~", "$deployment") in matchers, query


REQUIRED = [
    # data plane, per virtual service and per virtual deployment: rate, success rate, p99 latency; 5xx rate
    *((metric, {label, *extra}) for label in ("destination_service", "destination_deployment")
      for metric, extra in (("envoy_cluster_upstream_rq_total", ()),
                            ("envoy_cluster_upstream_rq_xx", ("envoy_response_code_class",)),
                            ("envoy_cluster_upstream_rq_time_bucket", ("le",)))),
    # control plane
    ("meshplane_convergence_seconds_bucket", {"le"}),
    ("meshplane_xds_nacks_total", {"type"}),
    ("meshplane_xds_pushes_total", {"type"}),
    ("meshplane_xds_push_seconds_bucket", {"le", "type"}),
    ("meshplane_proxies_connected", {"kind"}),
    ("meshplane_reconcile_round_seconds_bucket", {"le"}),
    ("meshplane_build_seconds_bucket", {"le"}),
    ("meshplane_translate_seconds_bucket", {"le"}),
    ("meshplane_proxy_config_bytes_bucket", {"le"}),
    ("meshplane_webhook_requests_total", {"outcome"}),
    ("meshplane_webhook_seconds_bucket", {"le", "outcome"}),
    ("meshplane_workload_certificates_issued_total", set()),
    ("meshplane_certificate_earliest_expiry_seconds", set()),
]


@pytest.mark.parametrize(("metric", "labels"), REQUIRED, ids=[f"{m}-{'-'.join(sorted(ls))}" for m, ls in REQUIRED])
def test_the_dashboard_shows(metric: str, labels: set[str]) -> None:
    assert any(metric in used and labels <= used[metric] for used in map(label_names, PANEL_QUERIES)), \
        f"no panel shows {metric} by {sorted(labels)}"


def test_convergence_shows_p50_and_p99() -> None:
    convergence = [query for query in PANEL_QUERIES if "meshplane_convergence_seconds_bucket" in metric_names(query)]
    assert {query.split(",", 1)[0] for query in convergence} >= {"histogram_quantile(0.5", "histogram_quantile(0.99"}


# Names and labels against what is really emitted ---------------------------------------------------------------


def registry_series() -> dict[str, frozenset[str]]:
    """Every series name the control plane's registry can expose → the labels it carries."""
    metrics = Metrics()
    labels = {next(iter(wrapper.describe())).name: frozenset(getattr(wrapper, "_labelnames", ()))  # kept private there
              for wrapper in vars(metrics).values() if isinstance(wrapper, MetricWrapperBase)}
    series: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        own = labels.get(family.name, frozenset())
        for suffix in SERIES_SUFFIXES[family.type]:
            series[family.name + suffix] = own | ({"le"} if suffix == "_bucket" else set())
    return series


def used(prefix: str) -> list[str]:
    return sorted(name for name in USED_LABELS if name.startswith(prefix))


def test_the_dashboard_uses_only_meshplane_and_envoy_metrics() -> None:
    assert set(USED_LABELS) == set(used("meshplane_")) | set(used("envoy_"))


@pytest.mark.parametrize("name", used("meshplane_"))
def test_meshplane_metric_is_emitted(name: str) -> None:
    series = registry_series()
    assert name in series, f"{name} is not in Metrics().registry, which emits {sorted(series)}"


@pytest.mark.parametrize("name", used("meshplane_"))
def test_meshplane_metric_has_the_labels_used(name: str) -> None:
    series = registry_series()
    assert name in series, f"{name} is not in Metrics().registry"
    assert USED_LABELS[name] <= series[name] | TARGET_LABELS, sorted(USED_LABELS[name] - series[name])


@pytest.mark.parametrize("name", used("envoy_"))
def test_envoy_metric_is_a_documented_one_with_its_labels(name: str) -> None:
    assert name in ENVOY_METRICS, f"{name} is not in ENVOY_METRICS; add it there so the end-to-end test checks it"
    assert USED_LABELS[name] <= ENVOY_METRICS[name] | TARGET_LABELS, sorted(USED_LABELS[name] - ENVOY_METRICS[name])


def test_envoy_metrics_are_prometheus_names_of_envoy_stats() -> None:
    for name, labels in ENVOY_METRICS.items():
        assert re.fullmatch(r"envoy_[a-z0-9_]+", name), name
        assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", label) for label in labels), name
