"""The admission webhook server (HTTPS): the nine validators and the proxy injector (spec §4).

Transport only (style.md §2.8): read and check the AdmissionReview, call the pure rules
(:func:`meshplane.controlplane.validation.validate`, :func:`meshplane.injector.inject.choose` and
:func:`~meshplane.injector.inject.mutate`), answer in the request's ``apiVersion`` (``admission.k8s.io/v1``
or ``v1beta1``) with ``response.uid`` echoing ``request.uid``. Everything the server needs from the running
control plane comes through :class:`AdmissionContext`, which the composition root implements.

Routes (registered by :mod:`meshplane.injector.webhookconfig`):

* ``POST /validate-servicemesh-oci-oracle-com-v1beta1-<kind>`` — CREATE, UPDATE, DELETE of one kind;
* ``POST /mutate-pod`` — pod CREATE (anything else is allowed unchanged);
* ``GET /healthz`` — ``ok``, for a readiness probe over the same TLS port.

Who must act, by status code:

* **HTTP 400** (plain text): the request is not an AdmissionReview we can answer — not JSON, no
  ``request.uid``, an unknown ``apiVersion``, or a kind this path does not admit. **413**: a body over
  3 MiB. **415**: not ``application/json``. The API server then applies the webhook's failurePolicy.
* **Allowed false, ``status.code`` 403 ``Forbidden``**: the object breaks a rule — what OSOK's validators
  answer (controller-runtime's ``ValidationResponse``). The message is OSOK's: ``Failed to create Resource
  for Kind: <Kind>, Name: <name>, Namespace: <ns>, Error: <path: message>``, one line per error (the
  same prefix for updates and deletes). Warnings go to ``response.warnings`` (kubectl prints them).
* **Allowed false, ``status.code`` 400 ``BadRequest``**: the object cannot be read as its kind (OSOK's
  decode error), or the injector refused the pod (:class:`~meshplane.injector.inject.InjectionError`,
  e.g. an invalid proxy log level annotation): the user must fix the manifest.
* **Allowed false, ``status.code`` 500 ``InternalError``**: a validator crashed (a bug in meshplane).
  Validation fails closed, like its ``failurePolicy: Fail``: an object the rules were not applied to
  must not enter the mesh. Deletions are the exception (below).

Decisions (and where they differ from OSOK v1.1.9):

* **The injector fails open.** Any error after the request was read other than an ``InjectionError``
  — the context failing, issuing credentials failing or taking over 5 s, a bug in ``mutate`` — admits
  the pod unchanged, with a warning in ``response.warnings`` and the log. This matches the webhook's
  ``failurePolicy: Ignore``: an unreachable injector already admits pods without the mesh, so refusing
  on internal errors would only add an outage mode (a broken injector stopping every deploy in every
  meshed namespace, lessons §3.1) without closing that gap. The cost: the pod runs without a sidecar,
  so its inbound traffic is not governed by access policies until it is re-created (the namespace
  controller evicts eligible pods without a sidecar, spec §4.4). OSOK instead refuses such pods (HTTP
  500 in the response).
* **Injection not configured** (:meth:`AdmissionContext.settings` is None): a pod that would be
  injected is admitted unchanged with a warning.
* **Dry runs** (``request.dryRun``) are decided as usual, and a refusal is reported, but an injectable
  pod is admitted without its patch and with a warning: injecting issues credentials, a side effect the
  registration (``sideEffects: None``) promises not to have.
* **Credentials** are issued in a worker thread (:func:`asyncio.to_thread`): issuing may write files or
  call the Kubernetes API, and the event loop also serves xDS. ``issue_credentials`` must therefore be
  thread-safe; it gets a node id made only of ``[A-Za-z0-9._-]``, safe as a file or path segment.
* **UPDATE with an unchanged ``metadata.generation``** is allowed before the objects are even parsed
  (spec §4.1): finalizer and label edits, including the controller's own, never depend on the rules.
* **An old object this version cannot read** is treated as absent on UPDATE, so a broken object can
  always be repaired; **DELETE** is never refused for a reason of meshplane's own making: an unreadable or
  unknown object, or a crash, allows it (OSOK answers 400 when the object is not in its cache). Only the
  lifecycle gate of spec §4.1 refuses a delete.

Logs name only kind, namespace and name (never object contents, messages derived from them, or keys);
an unexpected exception is logged by type, with its traceback at DEBUG level.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from meshplane.controlplane.model import API_GROUP, AnyObject, Kind, ObjectKey, parse_object
from meshplane.controlplane.problems import Problem, error
from meshplane.controlplane.sockets import bind as _bind
from meshplane.controlplane.sockets import is_ip as _is_ip
from meshplane.controlplane.state import write_atomic
from meshplane.controlplane.validation import validate
from meshplane.controlplane.world import World
from meshplane.injector import inject
from meshplane.injector.ca import CertificateAuthority, IssuedCertificate
from meshplane.injector.webhookconfig import MUTATE_POD_PATH, validate_path

log = logging.getLogger(__name__)

MAX_BODY = 3 * 1024 * 1024  # bytes; object + oldObject of etcd's 1.5 MiB objects
REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
ISSUE_TIMEOUT = 5.0  # seconds; the API server gives up after the registration's 10
CERT_FILE, KEY_FILE = "webhook-cert.pem", "webhook-key.pem"
_REASONS = {400: "BadRequest", 403: "Forbidden", 500: "InternalError"}
_NODE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdmissionContext(Protocol):
    """What the webhooks read from the running control plane (implemented by the composition root)."""

    def world(self) -> World:
        """The accepted mesh objects and the core Services: authoritative."""
        ...

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        """The namespace's labels, or None if the namespace is not known."""
        ...

    def bindings(self) -> Sequence[inject.Binding]:
        """Every virtual deployment binding, resolved, in the order the injector must try them."""
        ...

    def settings(self) -> inject.Settings | None:
        """How to inject, or None while injection is not configured (pods are then admitted unchanged)."""
        ...

    def issue_credentials(self, node_id: str, deployment: str) -> str:
        """Issue the proxy's xDS client credentials; returns the name of the Secret to mount.

        Called in a worker thread: it may block, and must be thread-safe.
        """
        ...


CONTEXT = web.AppKey("admission_context", AdmissionContext)


@dataclass(frozen=True)
class Review:
    """An AdmissionReview that passed the envelope checks: a known apiVersion and a request with a uid."""

    api_version: str
    request: Mapping[str, Any]

    @property
    def uid(self) -> str:
        return str(self.request["uid"])


@dataclass(frozen=True)
class Verdict:
    """The decision part of an AdmissionReview response."""

    allowed: bool
    code: int = 200
    message: str = ""
    warnings: tuple[str, ...] = ()
    patch: str | None = None  # base64 of a JSON Patch


ALLOWED = Verdict(True)


# ------------------------------------------------------------------------------------- the server


Observe = Callable[[str, str, float], None]
"""Told of every review answered: (webhook, outcome, seconds). The webhook is its path without the leading
``/`` (``mutate-pod``, ``validate-...``); the outcome is ``allowed``, ``denied`` or ``error`` (an HTTP error:
a malformed review, an unknown path)."""


def create_app(context: AdmissionContext, observe: Observe | None = None) -> web.Application:
    """The webhook application: nine validating routes, ``/mutate-pod`` and ``/healthz``; ``observe``
    hears of every review (metrics)."""
    middlewares = [_observing(observe)] if observe is not None else []
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app[CONTEXT] = context
    for kind in Kind:
        app.router.add_post(validate_path(kind), _validating_handler(kind))
    app.router.add_post(MUTATE_POD_PATH, _mutate_pod)
    app.router.add_get("/healthz", _healthz)
    return app


def _observing(observe: Observe) -> Any:
    """A middleware timing each review and telling ``observe`` how it ended (never ``/healthz``)."""
    known = {MUTATE_POD_PATH, *(validate_path(kind) for kind in Kind)}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        started = time.perf_counter()
        webhook = request.path.lstrip("/") if request.path in known else "other"
        outcome = "error"
        try:
            response = await handler(request)
            outcome = _outcome(response)
            return response
        finally:
            observe(webhook, outcome, time.perf_counter() - started)
    return middleware


def _outcome(response: web.StreamResponse) -> str:
    """``allowed`` or ``denied`` from an AdmissionReview response, ``error`` for anything else."""
    body = getattr(response, "body", None)
    if response.status >= 400 or not isinstance(body, bytes):
        return "error"
    try:
        allowed = json.loads(body)["response"]["allowed"]
    except (ValueError, KeyError, TypeError):
        return "error"
    return "allowed" if allowed is True else "denied"


async def start(app: web.Application, host: str, port: int,
                ssl_context: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    """Serve ``app`` over HTTPS only on host:port (0 = any free port); returns the runner and the port."""
    sock = _bind(host, port)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    return runner, int(sock.getsockname()[1])


def server_ssl_context(ca: CertificateAuthority, hosts: Sequence[str], workdir: Path, *,
                       ttl: timedelta | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context with a certificate for ``hosts`` (DNS names or IPs) from ``ca``.

    The API server must trust ``ca`` (its trust bundle is the registration's ``caBundle``). The
    certificate lives ``ttl`` (default: as long as the CA allows); renew it with
    :func:`install_certificate` on the same context before :meth:`IssuedCertificate.renew_at`.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    install_certificate(context, ca, hosts, workdir, ttl=ttl)
    return context


def install_certificate(context: ssl.SSLContext, ca: CertificateAuthority, hosts: Sequence[str], workdir: Path, *,
                        ttl: timedelta | None = None) -> IssuedCertificate:
    """Issue a serving certificate and load it into ``context``; later handshakes present it.

    The key is written to ``workdir/webhook-key.pem`` with mode 0600 (``ssl`` loads keys only from
    files) in a 0700 directory, and never logged.
    """
    dns_names = [h for h in hosts if not _is_ip(h)]
    ips = [h for h in hosts if _is_ip(h)]
    issued, key = ca.issue_server(dns_names, ips, ttl or ca.max_ttl)
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(workdir / KEY_FILE, key.pem().reveal(), 0o600)
    write_atomic(workdir / CERT_FILE, issued.chain_pem)
    context.load_cert_chain(workdir / CERT_FILE, workdir / KEY_FILE)
    return issued


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


# ---------------------------------------------------------------------------------- the envelope


async def _read_review(request: web.Request) -> Review:
    """The AdmissionReview in the body, or an HTTP error (400, 413, 415) saying what is wrong with it."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text=f"expected an application/json body, not {request.content_type}\n")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
    body = await request.read()  # raises 413 past client_max_size, also without a Content-Length
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise _bad("the body is not JSON") from None
    return _envelope(data)


def _envelope(data: Any) -> Review:
    if not isinstance(data, dict) or data.get("kind") != "AdmissionReview":
        raise _bad("the body is not an AdmissionReview")
    api_version = data.get("apiVersion")
    if api_version not in REVIEW_VERSIONS:
        raise _bad(f"AdmissionReview apiVersion must be one of {', '.join(REVIEW_VERSIONS)}")
    request = data.get("request")
    if not isinstance(request, dict):
        raise _bad("the AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise _bad("the AdmissionReview request has no uid")
    return Review(str(api_version), request)


def _bad(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=reason + "\n")


def _answer(review: Review, verdict: Verdict) -> web.Response:
    """The AdmissionReview response, in the request's apiVersion, echoing its uid."""
    response: dict[str, Any] = {"uid": review.uid, "allowed": verdict.allowed}
    if verdict.patch is not None:
        response["patchType"] = "JSONPatch"
        response["patch"] = verdict.patch
    if not verdict.allowed:
        response["status"] = {"status": "Failure", "code": verdict.code,
                              "reason": _REASONS.get(verdict.code, ""), "message": verdict.message}
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    return web.json_response({"apiVersion": review.api_version, "kind": "AdmissionReview", "response": response})


# ----------------------------------------------------------------------------- validating webhooks


def _validating_handler(kind: Kind) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        review = await _read_review(request)
        _check_kind(review.request, kind)
        return _answer(review, _admit_object(request.app[CONTEXT], review.request, kind))

    return handle


def _check_kind(request: Mapping[str, Any], kind: Kind) -> None:
    """A validating path admits one kind of ``servicemesh.oci.oracle.com/v1beta1``; anything else is a 400."""
    gvk = request.get("kind")
    wanted = {"group": API_GROUP, "version": "v1beta1", "kind": kind.value}
    if not isinstance(gvk, Mapping) or any(gvk.get(key) != value for key, value in wanted.items()):
        raise _bad(f"this path admits {kind.value} ({API_GROUP}/v1beta1); request.kind names something else")
    operation = request.get("operation")
    if operation not in ("CREATE", "UPDATE", "DELETE"):
        raise _bad("request.operation must be CREATE, UPDATE or DELETE")
    needed = {"CREATE": ("object",), "UPDATE": ("object", "oldObject"), "DELETE": ()}[operation]
    for field in ("object", "oldObject"):
        raw = request.get(field)
        if raw is None and field in needed:
            raise _bad(f"a {operation} must carry request.{field}")
        if raw is not None and (not isinstance(raw, Mapping) or raw.get("kind") != kind.value):
            raise _bad(f"request.{field} is not a {kind.value}")


def _admit_object(context: AdmissionContext, request: Mapping[str, Any], kind: Kind) -> Verdict:
    """Spec §4.1 over ``validate``; a crash refuses (fail closed), except for a DELETE."""
    operation = request["operation"]
    try:
        if operation == "DELETE":
            return _admit_delete(context, request, kind)
        return _admit_change(context, request, kind)
    except Exception as exc:  # a bug in meshplane: name it, never the object's contents
        _log_crash(f"validating {operation} of {_describe(request, kind)}", exc)
        if operation == "DELETE":
            return Verdict(True, warnings=(f"meshplane could not check this deletion ({type(exc).__name__}); "
                                           "it was allowed",))
        return _refusal(request, kind, 500, [error("", f"meshplane could not validate this object "
                                                       f"({type(exc).__name__}); this is a bug, please report it")])


def _admit_change(context: AdmissionContext, request: Mapping[str, Any], kind: Kind) -> Verdict:
    raw_new, raw_old = request["object"], request.get("oldObject")
    if request["operation"] == "UPDATE" and _same_generation(raw_old, raw_new):
        return ALLOWED  # status or metadata only (spec §4.1)
    new, problems = _read_object(raw_new, request)
    if new is None:
        return _refusal(request, kind, 400, problems)
    old = _read_object(raw_old, request)[0] if request["operation"] == "UPDATE" else None
    return _verdict(request, kind, validate(old, new, context.world()))


def _admit_delete(context: AdmissionContext, request: Mapping[str, Any], kind: Kind) -> Verdict:
    """Only the lifecycle gate refuses a delete; an object we cannot read or do not know is let go."""
    old = _read_object(request.get("oldObject"), request)[0]
    if old is None:
        name, namespace = request.get("name"), request.get("namespace")
        if isinstance(name, str) and isinstance(namespace, str):
            old = context.world().get(ObjectKey(kind, namespace, name))
    if old is None:
        return ALLOWED
    return _verdict(request, kind, validate(old, None, context.world()))


def _same_generation(raw_old: Any, raw_new: Any) -> bool:
    before, after = _generation(raw_old), _generation(raw_new)
    return before is not None and before > 0 and before == after


def _generation(raw: Any) -> int | None:
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    value = meta.get("generation") if isinstance(meta, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_object(raw: Any, request: Mapping[str, Any]) -> tuple[AnyObject | None, list[Problem]]:
    """Parse a mesh object; its namespace defaults to the request's. Any failure is a decode error."""
    if raw is None:
        return None, []
    try:
        return parse_object(_with_namespace(raw, request.get("namespace")))
    except Exception as exc:  # the parser trusts shapes the API server guarantees; this body broke one
        return None, [error("", f"cannot be read ({type(exc).__name__})")]


def _with_namespace(raw: Any, namespace: Any) -> Any:
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    if not isinstance(meta, Mapping) or meta.get("namespace") or not isinstance(namespace, str) or not namespace:
        return raw
    return {**raw, "metadata": {**meta, "namespace": namespace}}


def _verdict(request: Mapping[str, Any], kind: Kind, problems: list[Problem]) -> Verdict:
    warnings = tuple(_line(p) for p in problems if not p.is_error)
    errors = [p for p in problems if p.is_error]
    if errors:
        return _refusal(request, kind, 403, errors, warnings)
    return Verdict(True, warnings=warnings)


def _refusal(request: Mapping[str, Any], kind: Kind, code: int, errors: list[Problem],
             warnings: tuple[str, ...] = ()) -> Verdict:
    """OSOK's denial message (spec §4.1), naming every error as ``path: message``."""
    name, namespace = _identity(request)
    log.info("refused %s of %s: %d error(s)", request.get("operation"), _describe(request, kind), len(errors))
    reason = "\n".join(_line(p) for p in errors)  # messages may hold "; ", so one line per error
    message = f"Failed to create Resource for Kind: {kind.value}, Name: {name}, Namespace: {namespace}, Error: {reason}"
    return Verdict(False, code, message, warnings)


def _line(problem: Problem) -> str:
    return f"{problem.path}: {problem.message}" if problem.path else problem.message


def _identity(request: Mapping[str, Any]) -> tuple[str, str]:
    """Name and namespace of the object under review: from the object, else from the request.

    Only strings count, so a malformed object cannot smuggle its contents into a log line.
    """
    raw = request.get("object") or request.get("oldObject")
    meta = raw.get("metadata") if isinstance(raw, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    name = _text(meta.get("name")) or _text(request.get("name"))
    namespace = _text(meta.get("namespace")) or _text(request.get("namespace"))
    return name, namespace


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _describe(request: Mapping[str, Any], kind: str) -> str:
    name, namespace = _identity(request)
    return f"{kind} {namespace}/{name}"


def _log_crash(what: str, exc: Exception) -> None:
    log.error("%s failed with %s", what, type(exc).__name__)
    log.debug("traceback of the failure above", exc_info=exc)


# ------------------------------------------------------------------------------------ the injector


async def _mutate_pod(request: web.Request) -> web.Response:
    review = await _read_review(request)
    return _answer(review, await _admit_pod(request.app[CONTEXT], review.request))


async def _admit_pod(context: AdmissionContext, request: Mapping[str, Any]) -> Verdict:
    """Pod CREATE: refuse on ``InjectionError``, fail open on anything else (module docstring)."""
    if not _is_pod_create(request):
        return ALLOWED
    pod = request.get("object")
    namespace = request.get("namespace")
    if not isinstance(pod, Mapping) or not isinstance(namespace, str) or not namespace:
        raise _bad("a pod CREATE must carry request.object and request.namespace")
    where = f"Pod {namespace}/{_pod_name(pod)}"
    try:
        return await _inject(context, request, pod, namespace)
    except inject.InjectionError as refusal:
        log.info("refused %s: the injector cannot mesh it", where)
        return Verdict(False, 400, str(refusal))
    except Exception as exc:
        _log_crash(f"injecting {where}", exc)
        return Verdict(True, warnings=(f"meshplane could not inject the mesh sidecar ({type(exc).__name__}); the pod "
                                       "was admitted without it and is not part of the mesh until it is re-created",))


def _is_pod_create(request: Mapping[str, Any]) -> bool:
    gvk = request.get("kind")
    return (request.get("operation") == "CREATE" and not request.get("subResource") and isinstance(gvk, Mapping)
            and gvk.get("group") == "" and gvk.get("kind") == "Pod")


async def _inject(context: AdmissionContext, request: Mapping[str, Any], pod: Mapping[str, Any],
                  namespace: str) -> Verdict:
    decision = inject.choose(pod, namespace, context.namespace_labels(namespace), context.bindings())
    binding = decision.binding
    if binding is None or not binding.active:
        return ALLOWED
    settings = context.settings()
    if settings is None:
        log.warning("Pod %s/%s not injected: sidecar injection is not configured", namespace, _pod_name(pod))
        return Verdict(True, warnings=("meshplane sidecar injection is not configured (no proxy image); the pod was "
                                       "admitted without the mesh sidecar",))
    node_id = node_id_for(pod, str(request["uid"]), namespace)
    if request.get("dryRun") is True:
        inject.mutate(pod, binding, settings, node_id=node_id, credentials_secret="dry-run")  # refusals still show
        return Verdict(True, warnings=("dry run: the mesh sidecar is not shown, because injecting it issues "
                                       "credentials",))
    async with asyncio.timeout(ISSUE_TIMEOUT):  # not wait_for: in 3.11 it can lose the request's cancellation
        secret = await asyncio.to_thread(context.issue_credentials, node_id, binding.deployment)
    patch = inject.mutate(pod, binding, settings, node_id=node_id, credentials_secret=secret)
    return Verdict(True, patch=base64.b64encode(json.dumps(patch).encode()).decode("ascii"))


def node_id_for(pod: Mapping[str, Any], uid: str, namespace: str) -> str:
    """``<pod name, or generateName without its trailing '-', or 'pod'>-<uid[:8]>.<namespace>``.

    The pod's name is often unknown at CREATE (controllers use ``generateName``), so the request uid
    makes the id unique. Anything outside ``[A-Za-z0-9._-]`` becomes ``-``: the id names a SPIFFE path
    segment and a folder of the state directory, and must never climb out of it.
    """
    meta = pod.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name, generate = meta.get("name"), meta.get("generateName")
    base = name if isinstance(name, str) and name else generate.rstrip("-") if isinstance(generate, str) else ""
    return _NODE_ID_UNSAFE.sub("-", f"{base or 'pod'}-{uid[:8]}.{namespace}")


def _pod_name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return _text(meta.get("name")) or _text(meta.get("generateName"))
