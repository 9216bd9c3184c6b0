"""The server's front door: MONAI Label's FastAPI app behind an allow-list, so a hospital deployment exposes
only what this app needs and every reply is safe to show a client.

MONAI Label mounts many stock endpoints that this app does not use and a client should not reach (datastore
DELETE, archive-unpacking sessions, server logs, model upload, dataset download, reload, DICOM proxy,
batch/WSI infer, scoring). The gateway answers 404 for anything not listed in :data:`ROUTES`, bounds every
request body before it is read, answers the routes that take input (infer, image and box uploads, label
info, train, next sample) with this module's own handlers (temp files removed on every path, unknown task
names a 404, SR run in a worker thread so the server keeps answering, a bounded queue), and rewrites every
JSON or text reply so that no server path or temp name reaches a client; a 5xx says one sentence and the
log keeps the trace.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import anyio
from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from monailabel.config import settings
from monailabel.endpoints import activelearning as activelearning_endpoint
from monailabel.endpoints import train as train_endpoint
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from requests_toolbelt import MultipartEncoder
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.middleware.cors import CORSMiddleware

from lib.datastore import BOX_TAG, EXTENSIONS, MAX_BOXES_FILE, check_name, known_suffix
from monai_sr_bundle.cancel import Token, WorkCancelledError
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.jsonfile import Kind, check_object

logger = logging.getLogger(__name__)

#: default of ``--conf max_upload_mb``, the largest image upload (infer and datastore)
MAX_UPLOAD_MB = 512
#: body limit of every request that is not an upload: JSON settings, forms of label info
SMALL_BODY = 64 << 10
#: how deep a JSON object a client sends may nest (params, image and label info)
MAX_JSON_DEPTH = 16
#: the most of a refused body read before answering
DRAIN_LIMIT = 256 << 20
#: multipart framing around an upload's file
FORM_OVERHEAD = 64 << 10
INFER_OUTPUTS = ("image", "json", "all")
#: the digests MONAI Label's image check (``check_sum=ALGO:hex``) computes; another one was a 500
CHECK_SUMS = ("SHA256", "SHA512", "MD5")
#: request params a client may not set (the server sets them): the image comes from the URL or the upload, never
#: from params; as a schema of :func:`~monai_sr_bundle.jsonfile.check_object`, a key no value passes
RESERVED_PARAMS = dict.fromkeys(
    ("image", "image_name", "model", "session", "save_label", "label_tag", "cancel"),
    Kind("left out (the server sets it: give the image in the URL or upload it)", lambda v: False),
)


@dataclass(frozen=True)
class Route:
    """Requests ``methods`` on paths matching ``pattern`` pass; ``own``: answered here, not by MONAI Label;
    ``body``: the body limit (``small``, ``upload`` or ``label``)."""

    methods: frozenset
    pattern: re.Pattern
    own: bool = False
    body: str = "small"


def _route(methods: str, pattern: str, **kw) -> Route:
    return Route(frozenset(methods.split()), re.compile(pattern), **kw)


ROUTES = (
    _route("GET", r"/|/docs|/openapi\.json|/favicon\.ico|/static/[\w./-]+"),
    _route("GET", r"/info/"),
    _route("GET POST", r"/auth/[\w/]*"),  # MONAI Label's token endpoints, present when auth is on
    _route("POST", r"/infer/[^/]+", own=True, body="upload"),
    _route("POST", r"/activelearning/[^/]+", own=True),
    _route("GET DELETE", r"/train/"),
    _route("POST", r"/train/[^/]+", own=True),
    _route("GET", r"/datastore/"),
    _route("GET", r"/datastore/(image|label)(/info)?"),
    _route("PUT", r"/datastore/(image)?", own=True, body="upload"),
    _route("PUT", r"/datastore/label", own=True, body="label"),
    _route("PUT", r"/datastore/(image|label)/info", own=True),
)
#: MONAI Label's delete endpoints, served only when the operator asks (``--allow_delete``)
DELETE_ROUTES = (_route("DELETE", r"/datastore/(image|label)"),)


def mb(n: int) -> str:
    """A byte limit in MB for a message."""
    return f"{n / (1 << 20):.4g} MB"


def json_object(text: object, what: str, schema: dict[str, Kind] | None = None) -> dict:
    """``text`` parsed as a JSON object nested at most MAX_JSON_DEPTH deep, its keys of ``schema``'s kinds (other
    keys too), else a 422 naming ``what``: what is stored goes into the datastore index, which a deeper document
    would leave unreadable."""
    try:
        if not isinstance(text, str):  # a file sent in a text field's place
            raise ValueError(text)
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise HTTPException(422, f"{what} must be a JSON object; this is not JSON.") from None
    try:
        check_object(value, what, schema, others=True)
    except InputError as e:
        raise HTTPException(422, str(e)) from None
    level, depth = [value], 1
    while level:
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else item)]
        level = [v for v in level if isinstance(v, (dict, list))]
        depth += bool(level)
        if depth > MAX_JSON_DEPTH:
            raise HTTPException(422, f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; flatten it.")
    return value


def known(name: str, kind: str):
    """The app, if it has the task ``name`` among its ``kind`` (``models``, ``trainers``, ``strategies``), else a
    404 naming the ones it has (MONAI Label answered 500)."""
    instance = app_instance()
    names = instance.info()[kind]
    if name not in names:
        raise HTTPException(404, f"there is no {kind[:-1]} {name[:80]!r}; this server has {', '.join(names)}.")
    return instance


def upload_suffix(filename: str | None) -> str:
    """The known image suffix an upload's file name ends with (any case), else a 415."""
    suffix = known_suffix(os.path.basename(filename or ""))
    if suffix:
        return suffix
    raise HTTPException(
        415, f"uploads are accepted as {', '.join(e[2:] for e in EXTENSIONS)} files; name the file with one of them."
    )


async def save_upload(upload: UploadFile, suffix: str, limit: int) -> str:
    """The upload written to a private temp file; the caller removes it. 413 beyond ``limit`` bytes."""
    fd, path = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            await anyio.to_thread.run_sync(shutil.copyfileobj, upload.file, f)
        size = os.path.getsize(path)
        if size > limit:
            raise HTTPException(413, f"the upload is {size:,} bytes; this server accepts at most {mb(limit)}.")
        return path
    except BaseException:
        os.remove(path)
        raise


def remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


class InferQueue:
    """At most ``workers`` SR runs at once in worker threads (the event loop keeps answering), at most
    ``max_pending`` requests admitted; one more is a 503 with a retry hint, never a hang."""

    def __init__(self, max_pending: int, workers: int = 1) -> None:
        self.max_pending, self.pending = max_pending, 0
        self.limiter = anyio.CapacityLimiter(workers)

    async def run(self, fn, *args):
        if self.pending >= self.max_pending:
            raise HTTPException(
                503, f"the server is busy with {self.pending} SR requests; retry in a minute.", {"Retry-After": "60"}
            )
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        finally:
            self.pending -= 1

    async def run_watched(self, request: Request, gone: Token, fn, *args):
        """:meth:`run`, setting ``gone`` if the client disconnects meanwhile (its body is read by then, so
        the next message is the disconnect); the stopped work answers 499, which nobody is left to read."""

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone.set()

        result = error = None
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            try:
                result = await self.run(fn, *args)
            except Exception as e:  # raised out here: a task group would wrap it in an ExceptionGroup (a 500)
                error = e
            group.cancel_scope.cancel()
        if isinstance(error, WorkCancelledError):
            raise HTTPException(499, "the client closed the request; its SR was stopped.") from None
        if error is not None:
            raise error
        return result


def own_api(max_upload: int, queue: InferQueue) -> FastAPI:
    """The handlers for the routes marked ``own``: the same URLs and forms as MONAI Label's, with checks first."""
    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    user_role, annotator_role, admin_role = (
        RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER),
        RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR),
        RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN),
    )

    @api.post("/infer/{model}")
    async def infer(
        model: str, request: Request, image: str = "", output: str = "image", session_id: str = "",
        user: User = Depends(user_role),
    ):  # fmt: skip
        instance = known(model, "models")
        if session_id:
            raise HTTPException(404, "sessions are turned off on this server; upload the file with the request.")
        if output not in INFER_OUTPUTS:
            raise HTTPException(422, f"output {output[:40]!r} is not one of {', '.join(INFER_OUTPUTS)}.")
        async with request.form(max_files=1, max_fields=4, max_part_size=SMALL_BODY) as form:
            params = json_object(form.get("params") or "{}", "params", RESERVED_PARAMS)
            file = form.get("file")
            if "label" in form:
                raise HTTPException(422, "the super_resolution task takes no label upload.")
            if isinstance(file, UploadFile) == bool(image):
                raise HTTPException(422, "give one image: an id (?image=...) or an uploaded file, not both or neither.")
            gone = Token()  # set when the client disconnects: the SR stops at its next tile or step
            request_ = {**params, "model": model, "cancel": gone}
            if not image:
                path = await save_upload(file, upload_suffix(file.filename), max_upload)
                try:
                    name = os.path.basename(file.filename)[:80]
                    result = await queue.run_watched(request, gone, instance.infer_upload, path, name, request_)
                finally:
                    remove(path)
            else:
                result = await queue.run_watched(request, gone, instance.infer, {**request_, "image": image})
        return infer_response(result, output)

    @api.post("/train/{model}")
    async def train(model: str, params: dict | None = Body(None), user: User = Depends(admin_role)):
        """MONAI Label's train request, always in the background (its ``run_sync`` would hold the server), checked
        first: a request the task would refuse is a 422 now, not an error status after a train process started."""
        try:
            known(model, "trainers").check_train(model, params or {})
        except InputError as e:
            raise HTTPException(422, str(e)) from e
        return train_endpoint.run_model(model, params, run_sync=False, enqueue=False)

    @api.post("/activelearning/{strategy}")
    async def next_sample(strategy: str, params: dict | None = Body(None), user: User = Depends(user_role)):
        known(strategy, "strategies")
        return activelearning_endpoint.sample(strategy, params, user.username)

    @api.put("/datastore/")
    @api.put("/datastore/image")
    async def add_image(request: Request, image: str | None = None, user: User = Depends(annotator_role)):
        async with request.form(max_files=1, max_fields=4, max_part_size=SMALL_BODY) as form:
            params, file = json_object(form.get("params") or "{}", "params"), form.get("file")
            if not isinstance(file, UploadFile):
                raise HTTPException(422, "upload the image as the form field 'file'.")
            suffix = upload_suffix(file.filename)
            image_id = image or os.path.basename(file.filename)[: -len(suffix)]
            check_name(image_id, "image id")
            path = await save_upload(file, suffix, max_upload)
        try:
            store = app_instance().datastore()
            stored = await anyio.to_thread.run_sync(store.add_image, image_id, path, {**params, "user": user.username})
        finally:
            remove(path)
        return {"image": stored}

    @api.put("/datastore/label")
    async def save_label(request: Request, image: str, tag: str = BOX_TAG, user: User = Depends(annotator_role)):
        async with request.form(max_files=1, max_fields=4, max_part_size=SMALL_BODY) as form:
            params, file = json_object(form.get("params") or "{}", "params"), form.get("label")
            if not isinstance(file, UploadFile):
                raise HTTPException(422, "upload the boxes as the form field 'label'.")
            path = await save_upload(file, ".json", MAX_BOXES_FILE)
        try:
            instance = app_instance()
            label = await anyio.to_thread.run_sync(
                instance.datastore().save_label, image, path, tag, {**params, "user": user.username}
            )
            return {**(instance.on_save_label(image, label) or {}), "image": image, "label": label}
        finally:
            remove(path)

    @api.put("/datastore/image/info")
    async def image_info(request: Request, image: str, user: User = Depends(annotator_role)):
        async with request.form(max_files=0, max_fields=2, max_part_size=SMALL_BODY) as form:
            info = json_object(form.get("info") or "{}", "info")
        app_instance().datastore().update_image_info(image, info)
        return {}

    @api.put("/datastore/label/info")
    async def label_info(request: Request, label: str, tag: str, user: User = Depends(annotator_role)):
        async with request.form(max_files=0, max_fields=2, max_part_size=SMALL_BODY) as form:
            info = json_object(form.get("info") or "{}", "info")
        app_instance().datastore().update_label_info(label, tag, info)
        return {}

    return api


def infer_response(result: dict, output: str) -> Response:
    """The SR file (removed once sent), its params, or both as MONAI Label's multipart answer."""
    path, params = result["file"], result["params"]
    if output == "json":
        remove(path)
        return JSONResponse(params)
    name = "sr" + "".join(Path(path).suffixes)  # temp names have no other dots
    if output == "image":
        return FileResponse(path, filename=name, background=BackgroundTask(remove, path))
    with open(path, "rb") as f:
        body = MultipartEncoder(
            {
                "params": (None, json.dumps(params), "application/json"),
                "image": (name, f.read(), "application/octet-stream"),
            }
        )
    remove(path)
    return Response(body.to_string(), media_type=body.content_type)


class Gateway:
    """ASGI app in front of MONAI Label's: routes, body limits, task names, and replies without paths.

    Args:
        stock: MONAI Label's FastAPI app.
        own: the handlers of the ``own`` routes.
        routes: what passes.
        max_upload: body limit of an image upload.
        private_paths: folders a reply must not name, each replaced by its label.
    """

    def __init__(self, stock, own, routes: Iterable[Route], max_upload: int, private_paths: dict[str, str]) -> None:
        self.stock, self.own, self.routes = stock, own, tuple(routes)
        self.limits = {
            "small": SMALL_BODY,
            "upload": max_upload + FORM_OVERHEAD,
            "label": MAX_BOXES_FILE + FORM_OVERHEAD,
        }
        # the root folder is no secret, and replacing it would garble every reply (a home of '/')
        variants = {v: label for p, label in private_paths.items() if p for v in {p, os.path.realpath(p)} if v != "/"}
        self.private = sorted(variants.items(), key=lambda kv: len(kv[0]), reverse=True)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan: MONAI Label starts the app
            return await self.stock(scope, receive, send)
        method, path = scope["method"], scope["path"]
        route = next(
            (
                r
                for r in self.routes
                if ("GET" if method == "HEAD" else method) in r.methods and r.pattern.fullmatch(path)
            ),
            None,
        )
        problem = self.refusal(scope, method, path, route)
        if problem:
            await self.drain(receive)
            status, detail = problem
            return await JSONResponse({"detail": detail}, status)(scope, receive, send)
        await (self.own if route.own else self.stock)(scope, receive, self.scrubbing(send))

    def refusal(self, scope, method: str, path: str, route: Route | None) -> tuple[int, str] | None:
        if route is None:
            return 404, f"{method} {path[:100]} is not served by this server (docs/monailabel.md, Deployment)."
        headers = dict(scope["headers"])
        if b"transfer-encoding" in headers:  # with a Content-Length too, the body would pass unmeasured
            return 411, "send the request with a Content-Length header and no Transfer-Encoding."
        check_sum = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("check_sum", [""])[-1]
        if check_sum and check_sum.split(":")[0] not in CHECK_SUMS and ":" in check_sum:
            return 422, f"check_sum takes {', '.join(CHECK_SUMS)} (as ALGO:hex, or a SHA256 hex digest alone)."
        declared, limit = int(headers.get(b"content-length", b"0") or 0), self.limits[route.body]
        if declared > limit:
            return 413, f"a {method} {path[:60]} request may carry at most {mb(limit)}; this one is {declared:,} bytes."
        return None

    @staticmethod
    async def drain(receive) -> None:
        """Read and drop a refused request's body, so that the client, still sending, reads the answer; past
        DRAIN_LIMIT the connection is simply closed."""
        message, read = {"more_body": True}, 0
        while message.get("more_body") and read <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            read += len(message.get("body", b""))

    def scrub(self, body: bytes) -> bytes:
        text = body.decode("utf-8", "replace")
        for path, label in self.private:
            text = text.replace(path, label)
        return text.encode()

    def scrubbing(self, send):
        """``send`` that rewrites JSON and text replies without private paths (not a stored file sent as an
        attachment), and any 5xx but 502 (the PACS behind the app, said by lib/pacs.py) and 503 (busy) as one
        sentence (its trace goes to the log)."""
        held: dict = {}
        chunks: list[bytes] = []

        async def wrapped(message) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message["headers"])
                ctype, stored = headers.get(b"content-type", b""), b"content-disposition" in headers
                # a stored file (a boxes JSON sent back as it was saved) is the client's content: left as it is
                if message["status"] >= 500 or (ctype.startswith((b"application/json", b"text/")) and not stored):
                    held.update(message)
                    return
            elif message["type"] == "http.response.body" and held:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body, ctype = self.scrub(b"".join(chunks)), dict(held["headers"]).get(b"content-type", b"")
                if held["status"] >= 500 and held["status"] not in (502, 503):
                    body = json.dumps({"detail": "the server failed on this request; its log has the details."})
                    body, ctype = body.encode(), b"application/json"
                headers = [(k, v) for k, v in held["headers"] if k.lower() not in (b"content-length", b"content-type")]
                headers += [(b"content-length", str(len(body)).encode()), (b"content-type", ctype)]
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        return wrapped


def build(stock, conf: dict, cors_origins: list[str], allow_delete: bool, private_paths: dict[str, str]):
    """The ASGI app to serve: CORS for ``cors_origins`` only (none by default: MONAI Label's answers any
    origin with credentials), then the gateway over ``stock``."""
    max_upload = int(float(conf.get("max_upload_mb", MAX_UPLOAD_MB)) * (1 << 20))
    queue = InferQueue(int(conf.get("max_pending", 8)))
    stock.user_middleware = [m for m in stock.user_middleware if m.cls is not CORSMiddleware]
    routes = ROUTES + (DELETE_ROUTES if allow_delete else ())
    gateway = Gateway(stock, own_api(max_upload, queue), routes, max_upload, private_paths)
    stock.state.gateway = gateway  # the app refuses to serve without it (main.py)
    return CORSMiddleware(
        gateway, allow_origins=cors_origins, allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
    )
