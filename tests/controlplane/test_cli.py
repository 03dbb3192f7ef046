"""``meshplane validate`` and ``meshplane crds`` as a user runs them."""

from __future__ import annotations

import io
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from meshplane.controlplane.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "osok" / "samples"

MESH = """\
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: Mesh
metadata: {name: shop-mesh, namespace: shop}
spec:
  mtls: {minimum: PERMISSIVE}
"""
VS = """\
apiVersion: servicemesh.oci.oracle.com/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  mesh: {ref: {name: shop-mesh}}
  hosts: [reviews.shop.svc.cluster.local]
  mtls: {mode: STRICT}
"""


def run(*argv: str) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue().splitlines(), err.getvalue()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_consistent_mesh_validates_with_exit_zero(tmp_path: Path) -> None:
    code, lines, err = run("validate", "-f", str(write(tmp_path, "m.yaml", MESH + "---\n" + VS)))
    assert (code, lines) == (0, [])
    assert "2 mesh object(s) checked: 0 error(s), 0 warning(s)" in err


def test_each_problem_is_one_line_naming_kind_object_and_field_path(tmp_path: Path) -> None:
    bad = VS.replace("mtls: {mode: STRICT}", "mtls: {mode: LOOSE}").replace("hosts:", "hostz:")
    code, lines, _ = run("validate", "-f", str(write(tmp_path, "bad.yaml", MESH + "---\n" + bad)))
    assert code == 1
    expected = "VirtualService shop/reviews: spec.mtls.mode: must be one of DISABLED, PERMISSIVE, STRICT; got 'LOOSE'"
    assert expected in lines
    assert any(line.startswith("VirtualService shop/reviews: spec.hostz: unknown field (did you mean 'hosts'?)")
               for line in lines)


def test_a_cross_object_rule_is_checked_against_the_other_inputs(tmp_path: Path) -> None:
    strict_mesh = MESH.replace("PERMISSIVE", "STRICT")
    weak_vs = VS.replace("mode: STRICT", "mode: PERMISSIVE")
    code, lines, _ = run("validate", "-f", str(write(tmp_path, "floor.yaml", strict_mesh + "---\n" + weak_vs)))
    assert code == 1
    assert [line for line in lines if line.startswith("VirtualService shop/reviews: spec.mtls")], lines


def test_references_to_objects_not_among_the_inputs_are_warnings(tmp_path: Path) -> None:
    code, lines, err = run("validate", "-f", str(write(tmp_path, "vs.yaml", VS)))
    assert code == 0
    assert lines and all("warning:" in line for line in lines)
    assert "shop-mesh" in lines[0]
    assert "0 error(s)" in err


def test_one_bad_document_does_not_hide_the_others(tmp_path: Path) -> None:
    write(tmp_path, "a-broken.yaml", "kind: [unclosed\n")
    write(tmp_path, "b-good.yaml", MESH)
    write(tmp_path, "c-dup.yaml", MESH)
    code, lines, err = run("validate", "-f", str(tmp_path))
    assert code == 1
    assert any("a-broken.yaml" in line and "cannot be read: line" in line for line in lines)
    assert any(line.startswith("Mesh shop/shop-mesh: metadata.name: defined twice") for line in lines)
    assert "1 mesh object(s) checked" in err


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    code, lines, _ = run("validate", "-f", str(tmp_path / "nope.yaml"))
    assert code == 1 and "no such file or directory" in lines[0]


def test_a_kubectl_list_is_unpacked(tmp_path: Path) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [yaml.safe_load(MESH), yaml.safe_load(VS)]}
    code, lines, err = run("validate", "-f", str(write(tmp_path, "list.yaml", yaml.safe_dump(listing))))
    assert (code, lines) == (0, [])
    assert "2 mesh object(s)" in err


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="OCI's samples are not beside the repository")
def test_oci_samples_validate_without_errors() -> None:
    code, lines, _ = run("validate", "-f", str(SAMPLES))
    assert code == 0, lines


def test_the_bookstore_example_validates_without_errors() -> None:
    code, lines, err = run("validate", "-f", str(ROOT / "examples" / "bookstore"))
    assert code == 0, lines
    assert not [line for line in lines if "warning:" in line], lines
    assert "0 error(s), 0 warning(s)" in err


def test_crds_prints_nine_definitions() -> None:
    code, _, _ = run("crds")
    out = io.StringIO()
    assert main(["crds"], out=out, err=io.StringIO()) == code == 0
    docs = [d for d in yaml.safe_load_all(out.getvalue()) if d]
    assert len(docs) == 9
    assert {d["kind"] for d in docs} == {"CustomResourceDefinition"}


def test_the_console_script_is_installed_and_runs(tmp_path: Path) -> None:
    exe = shutil.which("meshplane")
    assert exe is not None, "the meshplane console script is not on PATH: install with pip install -e '.[test]'"
    bad = write(tmp_path, "bad.yaml", MESH.replace("PERMISSIVE", "SOMETIMES"))
    done = subprocess.run([exe, "validate", "-f", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stdout.startswith("Mesh shop/shop-mesh: spec.mtls.minimum:")
