"""The ``meshplane`` command line: composition root for the commands that do not serve traffic.

Each subcommand is a small function from parsed arguments to an exit code; output goes to the
streams it is given, so tests call :func:`main` directly. Exit codes: 0 success, 1 the input has
errors, 2 the command line itself is wrong (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from meshplane.controlplane import crdfiles, crdgen, manifests
from meshplane.controlplane.manifests import Finding
from meshplane.controlplane.validation import validate
from meshplane.controlplane.world import Index


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

    check = commands.add_parser("validate", help="check manifests against every admission rule",
                                description="Check each object's own rules and the rules between the objects "
                                "given. References to objects that are not among the inputs are warnings.")
    check.add_argument("-f", "--filename", dest="paths", action="append", required=True, metavar="PATH",
                       help="a YAML/JSON file or a directory (repeatable)")
    check.set_defaults(run=_validate)

    crds = commands.add_parser("crds", help="print the CustomResourceDefinitions (kubectl apply -f -)")
    crds.add_argument("--write", metavar="DIR", type=Path, help="write one file per kind into DIR instead")
    crds.set_defaults(run=_crds)
    return parser


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


def _crds(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.write is not None:
        for path in crdfiles.write_crds(args.write):
            print(path, file=err)
        return 0
    out.write("---\n".join(crdfiles.render_crd(crd) for crd in crdgen.build_crds()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
