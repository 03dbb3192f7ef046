"""Plain-text tables for ``meshplane status`` and ``meshplane proxy-status`` (pure: data in, text out).

The data is what the admin API serves (``/debug/resources``, ``/debug/syncz``); the layout follows
``kubectl get``: one row per object or proxy, upper-case headers, columns padded to their widest cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CONDITIONS = (("ACTIVE", "ServiceMeshActive"), ("CONFIGURED", "ServiceMeshConfigured"),
              ("DEPENDENCIES", "ServiceMeshDependenciesActive"))
TYPES = ("CDS", "EDS", "LDS", "RDS", "SDS")


def render(rows: Sequence[Sequence[str]]) -> str:
    """Rows as aligned columns (two spaces apart), the first row being the header."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in rows)


def status_table(resources: Mapping[str, Any]) -> str:
    """Every mesh object with its conditions (``-`` where its kind has none), then what was not accepted."""
    rows = [["KIND", "NAMESPACE", "NAME", *(title for title, _ in CONDITIONS)]]
    for obj in resources.get("objects", []):
        conditions = {c.get("type"): c.get("status", "?") for c in obj.get("conditions", [])}
        name = obj["name"] + (" (deleting)" if obj.get("deleting") else "")
        rows.append([obj["kind"], obj["namespace"], name, *(conditions.get(kind, "-") for _, kind in CONDITIONS)])
    text = render(rows)
    problems = [item["problem"] for item in resources.get("rejected", [])] + list(resources.get("file_problems", []))
    if problems:
        text += "\nnot accepted:\n" + "".join(f"  {line}\n" for line in problems)
    return text


def proxy_status_table(syncz: Mapping[str, Any]) -> str:
    """One row per connected proxy: what it serves, whether it is ready (takes traffic: its proxy accepted
    its configuration), and per xDS type SYNCED / STALE / NOT SENT / NACKED."""
    rows = [["PROXY", "SERVES", "ADDRESS", "READY", *TYPES]]
    nacks = []
    for proxy in sorted(syncz.get("proxies", []), key=lambda p: str(p.get("node"))):
        types = proxy.get("types", {})
        ready = {True: "yes", False: "no"}.get(proxy.get("ready"), "-")
        rows.append([str(proxy.get("node")), str(proxy.get("deployment") or "-"), str(proxy.get("address") or "-"),
                     ready, *(str(types.get(t, {}).get("status", "-")) for t in TYPES)])
        nacks += [f"  {proxy.get('node')} {t}: {s['nack_message']}" for t, s in sorted(types.items())
                  if s.get("nack_message")]
    text = render(rows)
    return text + ("\nlast rejections:\n" + "\n".join(nacks) + "\n" if nacks else "")
