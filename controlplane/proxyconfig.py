"""``meshplane proxy-config PROXY KIND``: what one proxy was last given, as a table or as JSON.

The data is the admin API's ``/debug/config_dump?proxy=ID`` (see :mod:`admin`): per xDS type
(``CDS``, ``EDS``, ``LDS``, ``RDS``, ``SDS``) a ``version`` and the ``resources`` as Envoy's JSON with
snake_case field names. Every function here is pure (dump in, text out) except :func:`fetch_dump`,
the one that touches the network, and :func:`run`, the command around it.

The tables summarise one kind each (one row per filter chain, route, cluster, endpoint or
certificate), in the manner of ``istioctl proxy-config``. Two kinds also show what another type
carries inline, because that is where a reader looks for it: ``routes`` includes route
configurations embedded in listeners (marked ``(inline)``), ``endpoints`` the load assignments of
static clusters (``FROM`` says ``CDS``). ``-o json`` prints exactly the requested type.

Private keys: the control plane already replaces a private key by ``[redacted]`` in the dump. This
module does not rely on that: :func:`scrub` drops every key-bearing field and any PEM private key
block (also base64-encoded) before anything is rendered, and the secrets table shows only fields
parsed from certificates.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from cryptography import x509

from meshplane.controlplane.logs import redact_private_keys
from meshplane.controlplane.tables import render

KINDS = {"listeners": "LDS", "routes": "RDS", "clusters": "CDS", "endpoints": "EDS", "secrets": "SDS"}
DEFAULT_ADMIN_ADDRESS = "127.0.0.1:15014"
SECRET_FIELDS = frozenset({"private_key", "private_key_provider", "pkcs12", "password", "session_ticket_keys",
                           "generic_secret"})
"""Fields that hold key material (or a key's passphrase): never shown, whatever they contain."""
REDACTED = "[redacted]"
EXIT_UNKNOWN_PROXY = 1
EXIT_UNREACHABLE = 2

Row = list[str]


# ------------------------------------------------------------------------------------------ dump


def scrub(data: Any) -> Any:
    """A copy of ``data`` without key material: :data:`SECRET_FIELDS` dropped at any depth, and any
    string holding a PEM private key (as text, or base64 in an ``inline_bytes``) redacted."""
    if isinstance(data, Mapping):
        return {key: _scrub_value(key, value) for key, value in data.items() if key not in SECRET_FIELDS}
    if isinstance(data, list | tuple):
        return [scrub(item) for item in data]
    return redact_private_keys(data) if isinstance(data, str) else data


def _scrub_value(key: str, value: Any) -> Any:
    if key == "inline_bytes" and isinstance(value, str) and b"PRIVATE KEY-----" in _decoded(value):
        return REDACTED
    return scrub(value)


def _decoded(value: str) -> bytes:
    try:
        return base64.b64decode(value)
    except (binascii.Error, ValueError):
        return b""


def section(dump: Any, kind: str) -> dict[str, Any]:
    """The scrubbed ``{"version", "resources"}`` of ``kind`` (a key of :data:`KINDS`); empty if absent."""
    found = dump.get(KINDS[kind]) if isinstance(dump, Mapping) else None
    if not isinstance(found, Mapping):
        return {"version": None, "resources": []}
    scrubbed: dict[str, Any] = scrub(found)
    scrubbed.setdefault("resources", [])
    return scrubbed


def _resources(dump: Any, kind: str) -> list[Mapping[str, Any]]:
    return [r for r in section(dump, kind)["resources"] if isinstance(r, Mapping)]


def render_json(dump: Any, kind: str) -> str:
    """The full JSON of one type (version and resources), keys sorted, key material removed."""
    return json.dumps(section(dump, kind), indent=2, sort_keys=True) + "\n"


def render_table(dump: Any, kind: str) -> str:
    """The summary table of one type; empty text when the proxy has nothing of that kind."""
    rows = _TABLES[kind](dump)
    return render(rows) if len(rows) > 1 else ""


# ------------------------------------------------------------------------------------------ listeners


def listener_rows(dump: Any) -> list[Row]:
    """One row per filter chain: which connections it takes, how they are secured, where they go."""
    rows = [["NAME", "ADDRESS", "CHAIN", "MATCH", "SECURITY", "DESTINATION"]]
    for listener in _resources(dump, "listeners"):
        name, address = str(listener.get("name", "-")), _address(listener.get("address"))
        chains = _chains(listener)
        for label, chain in chains:
            rows.append([name, address, label, _chain_match(chain), _chain_security(chain),
                         _chain_destination(chain)])
        if not chains:
            rows.append([name, address, "0", "-", "-", "-"])
    return rows


def _chains(listener: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The filter chains labelled ``i/n``, then the default chain (taken when none matches)."""
    chains = [c for c in listener.get("filter_chains", []) if isinstance(c, Mapping)]
    labelled = [(f"{i}/{len(chains)}", chain) for i, chain in enumerate(chains, 1)]
    default = listener.get("default_filter_chain")
    return labelled + ([("default", default)] if isinstance(default, Mapping) else [])


def _address(address: Any) -> str:
    """``host:port`` of an Envoy address (``[v6]:port``, ``unix:PATH`` or ``internal:NAME`` otherwise)."""
    if not isinstance(address, Mapping):
        return "-"
    if "socket_address" in address:
        socket = address["socket_address"]
        host, port = str(socket.get("address", "")), socket.get("port_value", socket.get("named_port", 0))
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if "pipe" in address:
        return f"unix:{address['pipe'].get('path', '')}"
    if "envoy_internal_address" in address:
        return f"internal:{address['envoy_internal_address'].get('server_listener_name', '')}"
    return "-"


def _chain_match(chain: Mapping[str, Any]) -> str:
    """What a chain is chosen by: destination port and addresses, SNI, TLS or not, ALPN; ``any`` if nothing."""
    match = chain.get("filter_chain_match", {})
    parts = []
    if "destination_port" in match:
        parts.append(f"port {match['destination_port']}")
    for field, word in (("prefix_ranges", "to"), ("source_prefix_ranges", "from")):
        if match.get(field):
            parts.append(f"{word} " + ",".join(f"{r.get('address_prefix')}/{r.get('prefix_len', 0)}"
                                               for r in match[field]))
    if match.get("server_names"):
        parts.append("SNI " + ",".join(match["server_names"]))
    if "transport_protocol" in match:
        parts.append({"tls": "TLS", "raw_buffer": "plaintext"}.get(match["transport_protocol"],
                                                                    match["transport_protocol"]))
    if match.get("application_protocols"):
        parts.append("ALPN " + ",".join(match["application_protocols"]))
    return "; ".join(parts) or "any"


def _chain_security(chain: Mapping[str, Any]) -> str:
    """mTLS (terminated, client certificate required), TLS (terminated), TLS passthrough, or plaintext."""
    socket = chain.get("transport_socket")
    if isinstance(socket, Mapping):
        config = socket.get("typed_config", {})
        if str(config.get("@type", "")).endswith("DownstreamTlsContext"):
            return "mTLS" if config.get("require_client_certificate") else "TLS"
        return _short(str(socket.get("name", "?")))
    match = chain.get("filter_chain_match", {})
    return "TLS passthrough" if match.get("server_names") or match.get("transport_protocol") == "tls" else "plaintext"


def _chain_destination(chain: Mapping[str, Any]) -> str:
    """The route configuration (RDS name, or inline) or the TCP cluster(s) a chain hands connections to."""
    parts = []
    for network_filter in chain.get("filters", []):
        config = network_filter.get("typed_config", {})
        kind = str(config.get("@type", ""))
        if kind.endswith("HttpConnectionManager"):
            parts.append(f"route {config['rds'].get('route_config_name')}" if "rds" in config
                         else f"inline route {config.get('route_config', {}).get('name', '')}")
        elif kind.endswith("TcpProxy"):
            parts.append("TCP " + (str(config["cluster"]) if "cluster" in config
                                   else _weights(config.get("weighted_clusters", {}))))
    if not parts:
        parts = [_short(str(f.get("name", "?"))) for f in chain.get("filters", [])]
    return "; ".join(parts) or "-"


def _short(name: str) -> str:
    """``envoy.filters.network.tcp_proxy`` → ``tcp_proxy``."""
    return name.rsplit(".", 1)[-1]


def _weights(weighted: Mapping[str, Any]) -> str:
    """``a 90%, b 10%``: each cluster's share of the total weight (Envoy's weights are relative)."""
    clusters = [c for c in weighted.get("clusters", []) if isinstance(c, Mapping)]
    total = sum(int(c.get("weight", 0)) for c in clusters)
    shares = (f"{round(100 * int(c.get('weight', 0)) / total, 1):g}%" if total else "weight 0" for c in clusters)
    return ", ".join(f"{c.get('name')} {share}" for c, share in zip(clusters, shares, strict=True)) or "-"


# ------------------------------------------------------------------------------------------ routes


def route_rows(dump: Any) -> list[Row]:
    """One row per route, in match order, under its route configuration and virtual host."""
    rows = [["ROUTE CONFIG", "VIRTUAL HOST", "DOMAINS", "MATCH", "ACTION"]]
    for label, config in _route_configs(dump):
        for vhost in config.get("virtual_hosts", []):
            head = [label, str(vhost.get("name", "-")), _domains(vhost.get("domains", []))]
            routes = vhost.get("routes", [])
            rows += [[*head, _route_match(r.get("match", {})), _route_action(r)] for r in routes]
            if not routes:
                rows.append([*head, "-", "no routes"])
    return rows


def _route_configs(dump: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """RDS route configurations, then those listeners carry inline (labelled ``NAME (inline)``), each
    once: the mTLS and plaintext chains of a permissive port share one."""
    found = [(str(r.get("name", "-")), r) for r in _resources(dump, "routes")]
    seen: set[str] = set()
    for listener in _resources(dump, "listeners"):
        for _, chain in _chains(listener):
            for network_filter in chain.get("filters", []):
                inline = network_filter.get("typed_config", {}).get("route_config")
                key = json.dumps(inline, sort_keys=True)
                if isinstance(inline, Mapping) and key not in seen:
                    seen.add(key)
                    found.append((f"{inline.get('name', '-')} (inline)", inline))
    return found


def _domains(domains: Sequence[str]) -> str:
    """The first two domains, and how many more (each host is served with and without ``:port``)."""
    shown = ",".join(domains[:2]) or "-"
    return f"{shown} +{len(domains) - 2} more" if len(domains) > 2 else shown


def _route_match(match: Mapping[str, Any]) -> str:
    """``prefix /a``, ``path /a``, ``regex ...``, then header and gRPC conditions."""
    parts = [_path_match(match)]
    for header in match.get("headers", []):
        parts.append(f"header {header.get('name')} {_header_match(header)}")
    if "grpc" in match:
        parts.append("gRPC")
    if match.get("case_sensitive") is False:
        parts.append("case-insensitive")
    return "; ".join(parts)


def _path_match(match: Mapping[str, Any]) -> str:
    for field, word in (("prefix", "prefix"), ("path", "path"), ("path_separated_prefix", "segment prefix")):
        if field in match:
            return f"{word} {match[field]}"
    if "safe_regex" in match:
        return f"regex {match['safe_regex'].get('regex')}"
    return "CONNECT" if "connect_matcher" in match else "any path"


def _header_match(header: Mapping[str, Any]) -> str:
    """A header condition in short form (see :func:`_string_match`), ``present``, or ``not ...``."""
    legacy = {key.removesuffix("_match"): value for key, value in header.items() if key.endswith("_match")}
    matcher = header.get("string_match", legacy)
    text = "present" if "present" in matcher else _string_match(matcher)
    return f"not {text}" if header.get("invert_match") else text


def _string_match(matcher: Mapping[str, Any]) -> str:
    """An Envoy StringMatcher in short form: ``v`` (exact), ``v*``, ``*v``, ``*v*``, ``~regex``."""
    forms = {"exact": "{}", "prefix": "{}*", "suffix": "*{}", "contains": "*{}*"}
    for field, form in forms.items():
        if field in matcher:
            return form.format(matcher[field])
    if "safe_regex" in matcher:
        return f"~{matcher['safe_regex'].get('regex')}"
    return "?"


def _route_action(route: Mapping[str, Any]) -> str:
    """Where a matched request goes: a cluster, a weighted split, a direct response or a redirect."""
    if "route" in route:
        action = route["route"]
        if "cluster" in action:
            return str(action["cluster"])
        if "weighted_clusters" in action:
            return _weights(action["weighted_clusters"])
        if "cluster_header" in action:
            return f"cluster named by header {action['cluster_header']}"
        return "route"
    if "direct_response" in route:
        return f"direct response {route['direct_response'].get('status', '?')}"
    if "redirect" in route:
        target = route["redirect"]
        return "redirect " + " ".join(f"{k}={v}" for k, v in sorted(target.items()))
    return "-"


# ------------------------------------------------------------------------------------------ clusters


HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def cluster_rows(dump: Any) -> list[Row]:
    """One row per cluster: discovery type, upstream TLS and the SAN the peer must present, protocol."""
    rows = [["NAME", "TYPE", "TLS", "SAN", "PROTOCOL"]]
    for cluster in _resources(dump, "clusters"):
        rows.append([str(cluster.get("name", "-")), _cluster_type(cluster), *_upstream_tls(cluster),
                     _protocol(cluster)])
    return rows


def _cluster_type(cluster: Mapping[str, Any]) -> str:
    """EDS, STATIC, ORIGINAL_DST, ... or the extension's short name (``dynamic_forward_proxy``).

    ``type`` is in a oneof, so the JSON carries it whenever it was set; a cluster with neither it nor
    ``cluster_type`` is STATIC, Envoy's default.
    """
    if "type" in cluster:
        return str(cluster["type"])
    if "cluster_type" in cluster:
        return _short(str(cluster["cluster_type"].get("name", "?")))
    return "STATIC"


def _upstream_tls(cluster: Mapping[str, Any]) -> tuple[str, str]:
    """(mTLS | TLS | plaintext | per endpoint, the SANs and SNI checked or ``-``)."""
    socket = cluster.get("transport_socket")
    if not isinstance(socket, Mapping):
        return ("per endpoint" if cluster.get("transport_socket_matches") else "plaintext"), "-"
    config = socket.get("typed_config", {})
    if not str(config.get("@type", "")).endswith("UpstreamTlsContext"):
        return _short(str(socket.get("name", "?"))), "-"
    common = config.get("common_tls_context", {})
    presents = common.get("tls_certificate_sds_secret_configs") or common.get("tls_certificates")
    checks = _sans(common) + ([f"SNI {config['sni']}"] if config.get("sni") else [])
    return ("mTLS" if presents else "TLS"), ",".join(checks) or "-"


def _sans(common: Mapping[str, Any]) -> list[str]:
    """The subject alt names a peer certificate must match (``*`` marks a prefix or suffix match)."""
    combined = common.get("combined_validation_context", {}).get("default_validation_context")
    context = combined or common.get("validation_context") or {}
    typed = [_string_match(m.get("matcher", {})) for m in context.get("match_typed_subject_alt_names", [])]
    return typed + [_string_match(m) for m in context.get("match_subject_alt_names", [])]


def _protocol(cluster: Mapping[str, Any]) -> str:
    """The upstream HTTP protocol; ``-`` without HTTP options (a TCP cluster, or Envoy's HTTP/1.1 default)."""
    options = cluster.get("typed_extension_protocol_options", {}).get(HTTP_OPTIONS)
    if isinstance(options, Mapping):
        explicit = options.get("explicit_http_config")
        if isinstance(explicit, Mapping):
            return ("HTTP/2" if "http2_protocol_options" in explicit
                    else "HTTP/3" if "http3_protocol_options" in explicit else "HTTP/1.1")
        if "use_downstream_protocol_config" in options:
            return "as downstream"
        if "auto_config" in options:
            return "auto (ALPN)"
    return "HTTP/2" if "http2_protocol_options" in cluster else "-"


# ------------------------------------------------------------------------------------------ endpoints


def endpoint_rows(dump: Any) -> list[Row]:
    """One row per endpoint, by cluster: EDS assignments and static clusters' own (``FROM`` tells which)."""
    rows = [r for a in _resources(dump, "endpoints") for r in _assignment_rows(a, "EDS")]
    for cluster in _resources(dump, "clusters"):
        assignment = cluster.get("load_assignment")
        if isinstance(assignment, Mapping):
            rows += _assignment_rows({"cluster_name": cluster.get("name"), **assignment}, "CDS")
    return [["CLUSTER", "ENDPOINT", "HEALTH", "FROM"], *sorted(rows, key=lambda row: row[0])]


def _assignment_rows(assignment: Mapping[str, Any], source: str) -> list[Row]:
    """A ClusterLoadAssignment's endpoints (``(none)`` when it has none); health ``-`` when not given."""
    name = str(assignment.get("cluster_name", "-"))
    endpoints = [lb for locality in assignment.get("endpoints", []) for lb in locality.get("lb_endpoints", [])]
    if not endpoints:
        return [[name, "(none)", "-", source]]
    return [[name, _address(lb.get("endpoint", {}).get("address")), str(lb.get("health_status", "-")), source]
            for lb in endpoints]


# ------------------------------------------------------------------------------------------ secrets


SECRET_HEADER = ["NAME", "KIND", "SUBJECT", "URI SANS", "SERIAL", "NOT BEFORE", "NOT AFTER"]


def secret_rows(dump: Any) -> list[Row]:
    """One row per certificate: a certificate secret's chain (leaf first), a trust bundle's roots.

    Only fields parsed from the certificates are shown (subject, URI SANs, serial in hex, validity in
    UTC); a secret of another kind shows its kind alone. Keys were removed by :func:`scrub` already.
    """
    rows = [SECRET_HEADER]
    for secret in _resources(dump, "secrets"):
        name = str(secret.get("name", "-"))
        if isinstance(secret.get("tls_certificate"), Mapping):
            rows += _pem_rows(name, secret["tls_certificate"].get("certificate_chain"), "certificate", "intermediate")
        elif isinstance(secret.get("validation_context"), Mapping):
            rows += _pem_rows(name, secret["validation_context"].get("trusted_ca"), "trusted CA", "trusted CA")
        else:
            rows.append([name, "other (not shown)", *["-"] * 5])
    return rows


def _pem_rows(name: str, source: Any, first: str, rest: str) -> list[Row]:
    data, where = _data_source(source)
    if data is None:
        return [[name, first, where, *["-"] * 4]]
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        return [[name, first, "(no readable certificate)", *["-"] * 4]]
    return [[name, first if i == 0 else rest, *certificate_fields(c)] for i, c in enumerate(certificates)]


def _data_source(source: Any) -> tuple[bytes | None, str]:
    """The bytes of an inline Envoy DataSource, else (None, where they are: a file or a variable)."""
    if not isinstance(source, Mapping):
        return None, "-"
    if "inline_bytes" in source:
        data = _decoded(str(source["inline_bytes"]))
        return (data, "") if data else (None, "(undecodable)")
    if "inline_string" in source:
        return str(source["inline_string"]).encode(), ""
    if "filename" in source:
        return None, f"file {source['filename']}"
    if "environment_variable" in source:
        return None, f"environment variable {source['environment_variable']}"
    return None, "-"


def certificate_fields(certificate: x509.Certificate) -> Row:
    """Subject (RFC 4514), URI SANs, serial (hex), not-before and not-after (RFC 3339, UTC)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = ",".join(names.get_values_for_type(x509.UniformResourceIdentifier)) or "-"
    except x509.ExtensionNotFound:
        uris = "-"
    return [certificate.subject.rfc4514_string() or "-", uris, f"{certificate.serial_number:x}",
            _time(certificate.not_valid_before_utc), _time(certificate.not_valid_after_utc)]


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_TABLES = {"listeners": listener_rows, "routes": route_rows, "clusters": cluster_rows, "endpoints": endpoint_rows,
           "secrets": secret_rows}


# ------------------------------------------------------------------------------------------ command


class AdminError(Exception):
    """The admin API could not answer; ``code`` is the command's exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_parser(commands: Any) -> None:
    """Register ``meshplane proxy-config`` on an ``add_subparsers()`` object."""
    view = commands.add_parser(
        "proxy-config", help="one proxy's listeners, routes, clusters, endpoints or secrets, from a running "
        "control plane", description="Show what the control plane last sent one proxy (its node id, as "
        "`meshplane proxy-status` lists it), summarised as a table, or as JSON with -o json. Private keys are "
        "never shown.")
    view.add_argument("proxy", metavar="PROXY", help="the proxy's node id")
    view.add_argument("kind", choices=list(KINDS), help="which part of its configuration")
    view.add_argument("-o", "--output", choices=["table", "json"], default="table",
                      help="table (default): a summary; json: every field of that type")
    view.add_argument("--admin-address", default=DEFAULT_ADMIN_ADDRESS, metavar="HOST:PORT",
                      help=f"the admin address of meshplane serve (default {DEFAULT_ADMIN_ADDRESS})")
    view.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Fetch the proxy's dump and print the chosen kind: 0, or 1 for an unknown proxy, 2 if unreachable."""
    try:
        dump = fetch_dump(args.admin_address, args.proxy)
    except AdminError as exc:
        print(f"meshplane proxy-config: {exc}", file=err)
        return exc.code
    if args.output == "json":
        out.write(render_json(dump, args.kind))
        return 0
    text = render_table(dump, args.kind)
    if not text:
        print(f"proxy {args.proxy} has no {args.kind}", file=err)
    out.write(text)
    return 0


def fetch_dump(address: str, proxy: str, timeout: float = 5.0) -> Any:
    """``GET /debug/config_dump?proxy=PROXY`` from the admin API at ``address``, parsed.

    Raises :class:`AdminError`: code 1 when the control plane has no configuration for the proxy (404),
    code 2 when it cannot be reached or answers anything else.
    """
    url = f"http://{address}/debug/config_dump?proxy={urllib.parse.quote(proxy, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise AdminError(f"the control plane at {address} has no configuration for proxy {proxy!r}; "
                             f"`meshplane proxy-status --admin-address {address}` lists the proxies it serves",
                             EXIT_UNKNOWN_PROXY) from None
        raise AdminError(f"the control plane at {address} answered {exc.code} for {url}", EXIT_UNREACHABLE) from None
    except (OSError, ValueError) as exc:
        raise AdminError(f"cannot read {url} ({exc}); is `meshplane serve` running with admin address {address}?",
                         EXIT_UNREACHABLE) from None
