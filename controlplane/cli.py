"""The ``meshplane`` command line: composition root for the commands that do not serve traffic.

Each subcommand is a small function from parsed arguments to an exit code; output goes to the
streams it is given, so tests call :func:`main` directly. Exit codes: 0 success, 1 the input has
errors, 2 the command line itself is wrong (argparse's convention).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import sys
import urllib.request
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import yaml

from meshplane.controlplane import crdfiles, crdgen, echo, manifests, proxyagent, sidecar, tables
from meshplane.controlplane.analyze import Severity as LintSeverity
from meshplane.controlplane.analyze import analyze
from meshplane.controlplane.manifests import Finding
from meshplane.controlplane.model import AnyObject
from meshplane.controlplane.validation import validate
from meshplane.controlplane.world import Index
from meshplane.injector import iptables
from meshplane.xds.bootstrap import render_bootstrap

from meshplane.controlplane import proxyconfig  # isort: skip


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; returns the process exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(err)
        return 2
    code: int = args.run(args, out, err)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshplane", description="An Envoy service-mesh control plane for the "
                                     "OCI Service Mesh Kubernetes API (servicemesh.oci.oracle.com/v1beta1).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_validate(commands)
    _add_analyze(commands)
    _add_serve(commands)
    _add_bootstrap(commands)
    _add_echo(commands)
    _add_demo(commands)
    _add_crds(commands)
    iptables.add_parser(commands)
    proxyagent.add_parser(commands)
    _add_admin_views(commands)
    proxyconfig.add_parser(commands)
    return parser


def _add_admin_views(commands: Any) -> None:
    for name, help_text, render in (
            ("status", "every mesh object and its conditions, from a running control plane", tables.status_table),
            ("proxy-status", "every connected proxy and its sync state per xDS type", tables.proxy_status_table)):
        view = commands.add_parser(name, help=help_text)
        view.add_argument("--admin-address", default="127.0.0.1:15014", metavar="HOST:PORT",
                          help="the admin address of meshplane serve (default 127.0.0.1:15014)")
        path = "/debug/resources" if name == "status" else "/debug/syncz"
        view.set_defaults(run=functools.partial(_admin_view, path=path, render=render))


def _admin_view(args: argparse.Namespace, out: TextIO, err: TextIO, *, path: str,
                render: Callable[[Any], str]) -> int:
    """Fetch ``path`` from the control plane's admin API and print it as a table."""
    url = f"http://{args.admin_address}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            data = json.loads(reply.read())
    except (OSError, ValueError) as exc:
        print(f"meshplane: cannot read {url} ({exc}); is `meshplane serve` running with that --admin-address?",
              file=err)
        return 2
    out.write(render(data))
    return 0


def _add_validate(commands: Any) -> None:
    check = commands.add_parser("validate", help="check manifests against every admission rule",
                                description="Check each object's own rules and the rules between the objects "
                                "given. References to objects that are not among the inputs are warnings.")
    check.add_argument("-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
                       help="a YAML/JSON file or a directory (repeatable)")
    check.set_defaults(run=_validate)


def _add_analyze(commands: Any) -> None:
    lint = commands.add_parser("analyze", help="find configuration that is valid but will not work as meant",
                               description="Lint manifests beyond validation: routes to deployments that can "
                               "have no endpoints, all-zero splits, services nobody may call, access policy rules "
                               "that match nothing, hosts claimed twice, mTLS surprises (codes MA001-MA009, see "
                               "docs/analyze.md). Objects with validation errors are skipped and listed. Exit "
                               "status: 0 when no finding is at warning level, 1 when one is (or an input was "
                               "skipped), 2 when the command line is wrong.")
    lint.add_argument("-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
                      help="a YAML/JSON file or a directory (repeatable)")
    lint.set_defaults(run=_analyze)


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the control plane on a config directory (standalone mode)",
                                description="Load every YAML manifest under --config-dir, validate object by object "
                                "(an invalid object is skipped and reported; the rest keep serving), watch the "
                                "directory and apply edits live, and serve Envoy over ADS (SotW and Delta).")
    serve.add_argument("--config-dir", type=Path, required=True, help="the directory of mesh manifests")
    serve.add_argument("--state-dir", type=Path, required=True, help="where the control plane keeps its state")
    serve.add_argument("--xds-address", default="127.0.0.1:15012", metavar="HOST:PORT")
    serve.add_argument("--admin-address", default="127.0.0.1:15014", metavar="HOST:PORT")
    serve.add_argument("--quiet-ms", type=int, default=100, help="rebuild after changes stop for this long (100)")
    serve.add_argument("--max-delay-ms", type=int, default=1000, help="rebuild at most this long after a change")
    serve.add_argument("--poll-ms", type=int, default=100,
                       help="look for changed files under --config-dir at least this often; inotify, where the "
                            "kernel has it, tells at once (default 100)")
    serve.add_argument("--grace-ms", type=int, default=2000,
                       help="a disconnected proxy's workload stays an endpoint this long, so a reconnect keeps it "
                            "(default 2000)")
    serve.add_argument("--cert-ttl", type=float, default=86400, metavar="SECONDS",
                       help="lifetime of workload certificates, renewed at 2/3 of it (default 86400 = 24 h)")
    serve.add_argument("--egress-dns", action="append", default=[], metavar="HOST:PORT",
                       help="a DNS server sidecars use for external host names an access policy allows "
                       "(repeatable; default: the system's resolvers)")
    serve.add_argument("--webhook-address", metavar="HOST:PORT",
                       help="serve the admission webhooks (pod injection, validation) over HTTPS here")
    serve.add_argument("--sidecar-image", default="meshplane:latest",
                       help="the image injected pods run as their init container and sidecar")
    serve.add_argument("--proxy-xds-address", metavar="HOST:PORT",
                       help="the control plane's address as injected sidecars dial it (default: --xds-address)")
    serve.add_argument("--stream-rate", type=float, default=500.0, metavar="PER_SECOND",
                       help="new xDS streams admitted per second once --stream-burst is used up, so a herd of "
                       "reconnecting proxies cannot starve the control plane (500; 0: no limit)")
    serve.add_argument("--stream-burst", type=int, default=1000, help="new xDS streams admitted at once (1000)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text (default) for people, or json: one object per line for log collectors")
    serve.set_defaults(run=_serve)


def _add_bootstrap(commands: Any) -> None:
    boot = commands.add_parser("bootstrap", help="write an Envoy bootstrap for a standalone sidecar",
                               description="Write the bootstrap of a sidecar in explicit capture mode: inbound on "
                               "POD_IP:<listener port> forwarding to the application at POD_IP:<app port>, outbound "
                               "HTTP on POD_IP:15001 routed by the Host header. Run it with: envoy -c FILE --base-id N")
    boot.add_argument("--state-dir", type=Path, required=True, help="the state directory of meshplane serve")
    boot.add_argument("--xds-address", required=True, metavar="HOST:PORT", help="the control plane's xDS address")
    which = boot.add_mutually_exclusive_group(required=True)
    which.add_argument("--virtual-deployment", metavar="NAMESPACE/NAME", help="a sidecar of this deployment")
    which.add_argument("--ingress-gateway", metavar="NAMESPACE/NAME",
                       help="a proxy of this ingress gateway (it listens on the gateway's ports at --pod-ip)")
    boot.add_argument("--pod-ip", required=True, metavar="IP", help="the workload's own address (e.g. 127.0.0.11)")
    boot.add_argument("--app-port", action="append", default=[], metavar="LISTENER_PORT=APP_PORT",
                      help="where the application listens for each listener of the deployment (repeatable)")
    boot.add_argument("--admin-port", type=int, default=15000,
                      help="Envoy admin port on 127.0.0.1 (default 15000); the proxy serves its Prometheus stats on "
                      "POD_IP:15006 from it (0: the kernel picks the port, and no stats are served)")
    boot.add_argument("--node-id", help="the proxy's identity (default: NAME.NAMESPACE-POD_IP)")
    boot.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                      help="how long to wait for the control plane to serve the deployment (default 10)")
    boot.add_argument("--delta", action="store_true", help="use incremental (Delta) ADS instead of State of the World")
    boot.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    boot.set_defaults(run=_bootstrap)


def _add_echo(commands: Any) -> None:
    echo = commands.add_parser("echo", help="run a sample HTTP application that answers with its name",
                               description="Answer every request with JSON naming this application and echoing "
                               "the method, path, Host and headers it received (for trying the mesh).")
    echo.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    echo.add_argument("--port", type=int, required=True)
    echo.add_argument("--name", required=True, help="the name it answers with, e.g. reviews-v2")
    echo.set_defaults(run=_echo)


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser("demo", help="watch a canary shift live: control plane, apps and real Envoys",
                               description="Start the control plane, sample applications and real Envoy sidecars "
                               "on loopback addresses; show the live v1/v2 split of the bookstore's catalog canary, "
                               "shift it twice by editing the route table, and clean up.")
    demo.add_argument("--requests", type=int, default=400, help="requests per phase (default 400)")
    demo.set_defaults(run=_demo)


def _add_crds(commands: Any) -> None:
    crds = commands.add_parser("crds", help="print the CustomResourceDefinitions (kubectl apply -f -)")
    crds.add_argument("--write", metavar="DIR", type=Path, help="write one file per kind into DIR instead")
    crds.set_defaults(run=_crds)


def _validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    loaded = manifests.load(args.paths)
    world = Index((obj for _, obj in loaded.objects), loaded.services, authoritative=False, knows_services=False)
    findings = list(loaded.findings)
    for source, obj in loaded.objects:
        findings += [Finding(source, obj.kind.value, obj.namespace, obj.name, p) for p in validate(None, obj, world)]
    findings.sort(key=lambda f: (f.source.path, f.source.index))
    for finding in findings:
        print(finding.line(), file=out)
    errors = sum(1 for f in findings if f.problem.is_error)
    warnings = len(findings) - errors
    print(f"{len(loaded.objects)} mesh object(s) checked: {errors} error(s), {warnings} warning(s)", file=err)
    return 1 if errors else 0


def _analyze(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    loaded = manifests.load(args.paths)
    valid, invalid, skipped = _analysis_inputs(loaded)
    world = Index(valid, loaded.services, authoritative=False, knows_services=False)
    findings = analyze(world, invalid=invalid)
    for line in skipped + [finding.line() for finding in findings]:
        print(line, file=out)
    warnings = sum(1 for finding in findings if finding.severity is LintSeverity.WARNING)
    print(f"{len(valid)} mesh object(s) analyzed: {warnings} warning(s), {len(findings) - warnings} info, "
          f"{len(skipped)} skipped", file=err)
    return 1 if warnings or skipped else 0


def _analysis_inputs(loaded: manifests.Loaded) -> tuple[list[AnyObject], list[AnyObject], list[str]]:
    """The objects that pass validation, those that do not, and one line per input analysis skips."""
    world = Index((obj for _, obj in loaded.objects), loaded.services, authoritative=False, knows_services=False)
    unreadable = [f for f in loaded.findings if f.kind in ("File", "Document")]
    errors: dict[tuple[str, str, str], int] = {}
    for finding in loaded.findings:
        if finding.problem.is_error and finding not in unreadable:
            key = (finding.kind, finding.namespace, finding.name)
            errors[key] = errors.get(key, 0) + 1
    valid: list[AnyObject] = []
    invalid: list[AnyObject] = []
    for _, obj in loaded.objects:
        count = sum(1 for problem in validate(None, obj, world) if problem.is_error)
        (invalid if count else valid).append(obj)
        if count:
            key = (obj.kind.value, obj.namespace, obj.name)
            errors[key] = errors.get(key, 0) + count
    skipped = [f"{kind} {namespace}/{name}: skipped: {count} validation error(s); run meshplane validate to see "
               "them" for (kind, namespace, name), count in sorted(errors.items())]
    return valid, invalid, [f.line() for f in unreadable] + skipped


def _serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from meshplane.controlplane import logs, serve
    from meshplane.controlplane.reconcile import Timing

    logs.configure(fmt=args.log_format, level=args.log_level, stream=err)
    timing = Timing(quiet=args.quiet_ms / 1000, max_delay=args.max_delay_ms / 1000, grace=args.grace_ms / 1000)
    try:
        resolvers = tuple(sidecar.parse_address(value, "--egress-dns") for value in args.egress_dns)
    except sidecar.BootstrapError as exc:
        print(f"meshplane serve: {exc}", file=err)
        return 2
    if args.stream_rate < 0 or args.stream_burst < 1:
        print(f"meshplane serve: --stream-rate must be >= 0 and --stream-burst >= 1; got {args.stream_rate} and "
              f"{args.stream_burst}", file=err)
        return 2
    options = serve.Options(args.config_dir, args.state_dir, args.xds_address, args.admin_address, timing,
                            cert_ttl=timedelta(seconds=args.cert_ttl), egress_dns=resolvers,
                            webhook_address=args.webhook_address, sidecar_image=args.sidecar_image,
                            proxy_xds_address=args.proxy_xds_address, stream_rate=args.stream_rate,
                            stream_burst=args.stream_burst, poll_seconds=max(1, args.poll_ms) / 1000)
    asyncio.run(serve.run(options))
    return 0


def _bootstrap(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        if args.ingress_gateway is not None:
            spec = sidecar.gateway_spec(state_dir=args.state_dir, xds_address=args.xds_address,
                                        gateway=args.ingress_gateway, pod_ip=args.pod_ip, admin_port=args.admin_port,
                                        node_id=args.node_id, delta=args.delta, wait=args.wait)
        else:
            spec = sidecar.bootstrap_spec(
                state_dir=args.state_dir, xds_address=args.xds_address, deployment=args.virtual_deployment,
                pod_ip=args.pod_ip, app_ports=args.app_port, admin_port=args.admin_port, node_id=args.node_id,
                delta=args.delta, wait=args.wait)
    except sidecar.BootstrapError as exc:
        print(f"meshplane bootstrap: {exc}", file=err)
        return 1
    args.output.write_text(yaml.safe_dump(render_bootstrap(spec), sort_keys=False))
    print(f"wrote {args.output} for {spec.node_id}; run: envoy -c {args.output} --base-id <unique number> "
          "--file-flush-interval-msec 1000", file=err)
    return 0


def _echo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    print(f"echo {args.name} on {args.address}:{args.port}", file=err, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(echo.run_forever(args.address, args.port, args.name))
    return 0


def _demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from meshplane.controlplane import demo

    logging.basicConfig(level="WARNING", stream=err)
    return demo.run(out, args.requests)


def _crds(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.write is not None:
        for path in crdfiles.write_crds(args.write):
            print(path, file=err)
        return 0
    out.write("---\n".join(crdfiles.render_crd(crd) for crd in crdgen.build_crds()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
