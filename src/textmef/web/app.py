"""The Flask application behind ``textmef serve``.

Endpoints:

* ``GET /``: the page.
* ``POST /api/fuse``: multipart form with ``files`` (2 to ``max_files`` images of one
  scene), ``method`` (a name from the fusion-method registry, :mod:`textmef.methods`;
  default ``textmef``; ``strategy=extremes|progressive`` is accepted for
  ``textmef-<strategy>``) and ``align`` (``1``/``0``). Answers the JSON described in
  :func:`create_app` once the fusion is done.
* ``GET /api/result/<id>``: that JSON again.
* ``GET /api/result/<id>/fused.png``: the fused image as an attachment named
  ``fused.png``, 16-bit when any input is 16-bit, else 8-bit.
* ``GET /api/result/<id>/preview.jpg`` and ``/api/result/<id>/input/<i>.jpg``: 8-bit
  previews (at most :data:`PREVIEW_SIDE` pixels a side) of the result and of input ``i``
  (upload order), for the page's thumbnails and comparison slider.
* ``GET /healthz``: ``{"status": "ok", "queued", "workers_busy", "results",
  "result_bytes", ...}``; it takes no lock that a fusion holds.

Errors under ``/api/`` are JSON ``{"error": message}``, the message naming the file:
400 a malformed request (fewer than 2 or too many files, unknown option), 413 an upload
over the size limit, 422 files that arrived but cannot be fused (unsupported type,
damaged, too many pixels, mixed sizes, alignment failure), 404 an unknown, expired or
evicted result, 503 a full fusion queue (with ``Retry-After``), 500 an unexpected failure.

Fusions: the request thread saves and checks the uploads, then hands the fusion to a
:class:`FusionQueue` (``workers`` threads, by default 1, fed by at most ``max_queue``
waiting jobs) and waits for it, so a request thread is only ever held up by its own
fusion and the page, previews and ``/healthz`` stay quick. A request that finds the queue
full is answered 503 at once.

Files: each request gets its own :class:`tempfile.TemporaryDirectory` under ``temp_root``;
uploads are spooled and saved only there, the download PNG is encoded there, and the
folder is removed once its fusion is done, before the response is sent. Results live in
memory (see :class:`ResultStore`) until they expire or their bytes are needed.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from pathlib import Path, PureWindowsPath
from typing import Any, TypeVar

import cv2
import numpy as np
from flask import Flask, Request, jsonify, render_template, request, send_file, url_for
from torch import nn
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException

from textmef import __version__, io
from textmef.errors import InputError
from textmef.inference import plan_fusion
from textmef.methods import (
    MethodOptions,
    MethodUnavailableError,
    build_method,
    get_method,
    list_methods,
    unavailable_reason,
)
from textmef.stack import STRATEGIES, prepare_stack
from textmef.tiling import DEFAULT_WORK_SIZE, check_work_size
from textmef.web.limits import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_RESULT_MB,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_RESULT_TTL_S,
    DEFAULT_WORKERS,
    FUSION_QUEUE_KEY,
    PREVIEW_SIDE,
    SERVER_THREADS_KEY,
    server_threads,
)
from textmef.web.queue import FusionQueue, QueueClosedError, QueueFullError
from textmef.web.results import FusedResult, ResultStore

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_RESULT_MB",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_RESULT_TTL_S",
    "DEFAULT_WORKERS",
    "FUSION_QUEUE_KEY",
    "PREVIEW_SIDE",
    "SERVER_THREADS_KEY",
    "FusionQueue",
    "QueueClosedError",
    "QueueFullError",
    "ResultStore",
    "create_app",
]

log = logging.getLogger("textmef")

DOWNLOAD_NAME = "fused.png"

DEFAULT_METHOD = "textmef"

_MB = 1024 * 1024
_SPOOL_BYTES = 500 * 1024  # werkzeug's own threshold for keeping a file part in memory
_PREVIEW_QUALITY = 90
_UPLOAD_DIR_KEY = "textmef.upload_dir"
_TRUE = frozenset({"1", "true", "on", "yes"})
_FALSE = frozenset({"", "0", "false", "off", "no"})
_NAMES_SHOWN = 3  # extra file names listed in a "too many files" message

_T = TypeVar("_T")


class ApiError(Exception):
    """A problem with a request, answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class _Upload:
    name: str  # as the user called it: every message names this, never the temporary path
    path: Path
    size: tuple[int, int] | None  # (width, height) from the header, once checked


@dataclass(frozen=True, eq=False)
class _Fused:
    """What a fusion job hands back to its request: the answer's facts and the encodings."""

    width: int
    height: int
    bit_depth: int
    strategy: str | None
    ordering: str
    order: list[int]
    used: list[int]
    motions: list[str] | None
    png: bytes
    preview: bytes
    input_previews: tuple[bytes, ...]
    compute_seconds: float
    resolution: str | None = None


def create_app(
    model: nn.Module,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_files: int = DEFAULT_MAX_FILES,
    temp_root: str | os.PathLike[str],
    max_queue: int = DEFAULT_MAX_QUEUE,
    workers: int = DEFAULT_WORKERS,
    max_result_mb: float = DEFAULT_MAX_RESULT_MB,
    result_ttl_s: float = DEFAULT_RESULT_TTL_S,
    work_size: int = DEFAULT_WORK_SIZE,
) -> Flask:
    """Build the web application around a loaded fusion network (no I/O happens here).

    A successful ``POST /api/fuse`` answers::

        {"id", "width", "height", "bit_depth", "format": "PNG", "filename": "fused.png",
         "method", "strategy", "align", "ordering", "order", "used", "motions",
         "seconds", "compute_seconds", "queue_seconds",
         "inputs": [{"index", "name", "width", "height", "preview_url"}, ...],
         "preview_url", "download_url", "result_url"}

    where ``order`` lists input indices (upload order) from darkest to brightest, ``used``
    the ones fused, ``strategy`` the network's stack strategy (null for the classic
    methods, which fuse every frame), ``motions`` one line per input when aligned (else
    null), ``compute_seconds`` the fusion itself (reading the saved uploads, aligning,
    fusing), ``queue_seconds`` the time it waited for a fusion worker, and ``seconds``
    the same as ``compute_seconds`` (the name of earlier versions).

    The app keeps its :class:`FusionQueue` in ``app.extensions[FUSION_QUEUE_KEY]`` (close
    it when the server stops) and the waitress thread count its limits call for in
    ``app.config[SERVER_THREADS_KEY]``.

    Args:
        model: the fusion network (see :func:`textmef.api.load_model`); the fusion
            workers use it, ``workers`` at a time.
        max_upload_mb: the largest request body accepted, in MiB.
        max_pixels: the most pixels one image may have, checked from its header.
        max_files: the most images one request may fuse.
        temp_root: an existing folder that receives one temporary folder per request.
        max_queue: the most fusions waiting for a worker; a request beyond them is
            answered 503 with ``Retry-After``.
        workers: fusion worker threads. Fusions share the model and torch's threads, so
            1 is right for the network; more only helps methods that are safe to run
            side by side.
        max_result_mb: the most MiB of results kept for download, all together.
        result_ttl_s: seconds a result is kept at most.
        work_size: the network takes the guided full-resolution path above
            ``work_size`` x ``work_size`` pixels (see :func:`textmef.api.fuse`).

    Returns:
        The Flask application (a WSGI callable).

    Raises:
        ValueError: a limit is not positive, or the working size is below 64.
    """
    check_work_size(work_size)
    if max_upload_mb <= 0 or max_pixels < 1 or max_files < 2:
        raise ValueError(
            f"limits must be positive and allow 2 files: max_upload_mb="
            f"{max_upload_mb}, max_pixels={max_pixels}, max_files={max_files}"
        )
    if not max_result_mb > 0:
        raise ValueError(f"max_result_mb must be positive, got {max_result_mb}")
    temp_root = Path(temp_root)
    app = Flask("textmef.web")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * _MB)
    app.config[SERVER_THREADS_KEY] = server_threads(max_queue, workers)
    app.request_class = _request_class(temp_root)
    results = ResultStore(max(1, int(max_result_mb * _MB)), result_ttl_s)
    # numba's thread count is per thread: the workers take the one of the thread that
    # builds the app (textmef serve sets --threads there), torch's is process-wide.
    fusions = FusionQueue(
        workers, max_queue, thread_setup=partial(_set_numba_threads, _numba_threads())
    )
    app.extensions[FUSION_QUEUE_KEY] = fusions
    keeps = (
        f"results are kept for {_duration(result_ttl_s)} and "
        f"{max_result_mb:g} MB in all (--result-ttl, --max-result-mb)"
    )

    @app.get("/")
    def index():
        return render_template(
            "index.html",
            version=__version__,
            methods=_method_choices(),
            default_method=DEFAULT_METHOD,
            max_files=max_files,
            max_upload_bytes=app.config["MAX_CONTENT_LENGTH"],
            max_pixels=max_pixels,
            max_upload_text=f"{max_upload_mb:g} MB",
            max_pixels_text=f"{max_pixels / 1e6:g} MP",
            suffixes=sorted(io.SUPPORTED_SUFFIXES),
        )

    @app.get("/healthz")
    def healthz():
        queue = fusions.stats()
        held, held_bytes = results.stats()
        return jsonify(
            status="ok",
            version=__version__,
            busy=queue["workers_busy"] > 0,
            **queue,
            results=held,
            result_bytes=held_bytes,
            max_result_bytes=results.max_bytes,
        )

    @app.post("/api/fuse")
    def fuse():
        # A request the queue cannot take is refused before its upload is parsed and
        # saved, so that a burst of them costs the other requests little.
        _queue_room(fusions.check_room)
        with tempfile.TemporaryDirectory(
            prefix="request-", dir=temp_root, ignore_cleanup_errors=True
        ) as folder:
            # Set before the form is parsed: file parts then spool into this folder.
            request.environ[_UPLOAD_DIR_KEY] = folder
            parts: list[FileStorage] = []
            try:
                method, align = _options(request.form)
                parts = request.files.getlist("files")
                files = [f for f in parts if f.filename]  # a browser sends "" for no file
                names = _check_count(files, max_files)
                uploads = _save(files, names, Path(folder), max_pixels)
            finally:
                # Closed before the folder goes, so the cleanup also works on Windows.
                for part in parts:
                    part.close()
            work = partial(_fuse, model, uploads, method, align, Path(folder), work_size)
            job = _queue_room(partial(fusions.submit, work))
            # The folder stays until the job is done: the worker reads the saved files.
            fused = job.result()
        result = _result(fused, uploads, method, align, job.queue_seconds)
        results.put(result.meta["id"], result)
        return jsonify(result.meta)

    @app.get("/api/result/<rid>")
    def result_meta(rid: str):
        return jsonify(_lookup(results, rid, keeps).meta)

    @app.get("/api/result/<rid>/fused.png")
    def result_download(rid: str):
        png = _lookup(results, rid, keeps).png
        results.mark_downloaded(rid)
        return send_file(
            BytesIO(png), mimetype="image/png", as_attachment=True, download_name=DOWNLOAD_NAME
        )

    @app.get("/api/result/<rid>/preview.jpg")
    def result_preview(rid: str):
        return send_file(BytesIO(_lookup(results, rid, keeps).preview), mimetype="image/jpeg")

    @app.get("/api/result/<rid>/input/<int:index>.jpg")
    def input_preview(rid: str, index: int):
        previews = _lookup(results, rid, keeps).input_previews
        if index >= len(previews):
            raise ApiError(404, f"result {rid} has no input {index} (it has {len(previews)})")
        return send_file(BytesIO(previews[index]), mimetype="image/jpeg")

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return jsonify(error=exc.message), exc.status, exc.headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if not request.path.startswith("/api/"):
            return exc
        message = exc.description
        if exc.code == 413:
            size = request.content_length or 0
            message = (
                f"the upload is {size / _MB:.1f} MB, over this server's limit of "
                f"{max_upload_mb:g} MB (--max-upload-mb); send fewer or smaller files"
            )
        elif exc.code == 500:
            cause = getattr(exc, "original_exception", None)
            if cause is not None:
                message = (
                    f"fusion failed unexpectedly ({type(cause).__name__}: {cause}); "
                    "see the server's log"
                )
        return jsonify(error=message), exc.code

    @app.after_request
    def harden(response):
        # Everything the page needs comes from this server; nothing may load from elsewhere.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    return app


def _queue_room(call: Callable[[], _T]) -> _T:
    """``call()``, a full or closed :class:`FusionQueue` answered 503 with Retry-After."""
    try:
        return call()
    except QueueFullError as exc:
        raise ApiError(
            503,
            f"the server is busy: {exc.waiting} fusions are already waiting, the most it "
            f"queues (--max-queue); try again in {exc.retry_after} s",
            {"Retry-After": str(exc.retry_after)},
        ) from None
    except QueueClosedError:
        raise ApiError(503, "the server is stopping; try again later") from None


def _numba_threads() -> int | None:
    """This thread's numba thread count, None when numba is not loaded (its default)."""
    numba = sys.modules.get("numba")
    return None if numba is None else int(numba.get_num_threads())


def _set_numba_threads(threads: int | None) -> None:
    numba = sys.modules.get("numba")
    if threads is not None and numba is not None:
        numba.set_num_threads(threads)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _request_class(temp_root: Path) -> type[Request]:
    class UploadRequest(Request):
        """A request whose file parts spool into the request's folder, not the system's."""

        def _get_file_stream(
            self,
            total_content_length: int | None,
            content_type: str | None,
            filename: str | None = None,
            content_length: int | None = None,
        ):
            folder = self.environ.get(_UPLOAD_DIR_KEY, temp_root)
            return tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="rb+", dir=folder)

    return UploadRequest


def _method_choices() -> list[dict[str, Any]]:
    """The registry's methods for the page's menu, those that cannot run here disabled."""
    return [
        {"name": name, "summary": get_method(name).summary, "reason": unavailable_reason(name)}
        for name in list_methods()
    ]


def _options(form: Any) -> tuple[str, bool]:
    method = form.get("method") or ""
    strategy = form.get("strategy") or ""
    if not method and strategy:  # the form of earlier versions: the network's strategy
        if strategy not in STRATEGIES:
            raise ApiError(
                400, f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
            )
        method = f"{DEFAULT_METHOD}-{strategy}"
    method = method or DEFAULT_METHOD
    reason = unavailable_reason(method)
    if reason:
        raise ApiError(400, f"method {method}: {reason}")
    flag = form.get("align", "").strip().lower()
    if flag not in _TRUE | _FALSE:
        raise ApiError(400, f"align must be 1 or 0, not {flag!r}")
    return method, flag in _TRUE


def _display_name(filename: str | None, index: int) -> str:
    # Browsers send a bare name, but nothing stops a client sending a path or control
    # characters; the name only ever appears in messages, never in a file system path.
    name = PureWindowsPath(filename or "").name  # splits on both / and \
    name = "".join(c for c in name if c.isprintable()).strip()[:200]
    return name or f"file {index + 1}"


def _check_count(files: Sequence[FileStorage], max_files: int) -> list[str]:
    names = [_display_name(f.filename, i) for i, f in enumerate(files)]
    if len(names) < 2:
        got = f"only {names[0]} was sent" if names else "no files were sent"
        raise ApiError(400, f"fusion needs at least 2 photos of one scene; {got}")
    if len(names) > max_files:
        extra = names[max_files:]
        shown = ", ".join(extra[:_NAMES_SHOWN]) + (", ..." if len(extra) > _NAMES_SHOWN else "")
        raise ApiError(
            400,
            f"{len(names)} files sent but at most {max_files} can be fused at "
            f"once (--max-files); leave out {len(extra)}, e.g. {shown}",
        )
    return names


def _save(
    files: Sequence[FileStorage], names: Sequence[str], folder: Path, max_pixels: int
) -> list[_Upload]:
    """Save the uploads and check them as every entry point does, before queueing a fusion.

    The checks are textmef's own (:func:`textmef.stack.check_stack_files`: each header
    with the pixel limit, identical files, one size), so nothing is decoded here; messages
    name the user's files, never the temporary paths.
    """
    from textmef.stack import check_stack_files

    suffixes = [Path(name).suffix.lower() for name in names]
    for name, suffix in zip(names, suffixes):
        if suffix not in io.SUPPORTED_SUFFIXES:  # before saving anything: cheap, and clear
            wanted = ", ".join(sorted(io.SUPPORTED_SUFFIXES))
            raise ApiError(
                422, f"{name}: unsupported file type ({suffix or 'no suffix'}); use one of {wanted}"
            )
    uploads = []
    for i, (f, name, suffix) in enumerate(zip(files, names, suffixes)):
        # A random part keeps the temporary names from ever matching what a user typed,
        # so they can be told apart when messages are translated back to user names.
        path = folder / f"in{i:02d}-{secrets.token_hex(4)}{suffix}"
        f.save(path)
        uploads.append(_Upload(name=name, path=path, size=None))
    try:
        headers = check_stack_files([u.path for u in uploads], max_pixels)
    except InputError as exc:
        raise ApiError(422, _user_message(exc, uploads)) from None
    return [
        _Upload(name=u.name, path=u.path, size=(h.width, h.height))
        for u, h in zip(uploads, headers)
    ]


def _fuse(
    model: nn.Module,
    uploads: Sequence[_Upload],
    method_name: str,
    align: bool,
    folder: Path,
    work_size: int,
) -> _Fused:
    """One fusion job, run by a :class:`FusionQueue` worker (no request context here)."""
    started = time.perf_counter()
    method = get_method(method_name)
    options = MethodOptions(model=model, work_size=work_size)
    try:
        prepared = prepare_stack([u.path for u in uploads], align=align)
        fused = build_method(method_name, options)(prepared.tensors)
        resolution = None
        if method.uses_network:
            height, width = prepared.tensors[0].shape[-2:]
            resolution = plan_fusion(height, width, work_size)
        fusion = prepared.result(fused, method.frames_used(options, len(uploads)))
    except MethodUnavailableError as exc:
        raise ApiError(400, str(exc)) from None
    except InputError as exc:
        raise ApiError(422, _user_message(exc, uploads)) from None
    seconds = time.perf_counter() - started
    png = io.write_image(folder / DOWNLOAD_NAME, fusion.image, fusion.bit_depth).read_bytes()
    height, width = fusion.image.shape[:2]
    return _Fused(
        width=width,
        height=height,
        bit_depth=fusion.bit_depth,
        strategy=method.stack_strategy(options),
        ordering=fusion.ordering,
        order=list(fusion.order),
        used=list(fusion.used),
        motions=fusion.motions,
        png=png,
        preview=_jpeg(_fit(_to_uint8_bgr(fusion.image))),
        input_previews=tuple(_file_preview(u) for u in uploads),
        compute_seconds=seconds,
        resolution=resolution.describe() if resolution is not None else None,
    )


def _result(
    fused: _Fused,
    uploads: Sequence[_Upload],
    method_name: str,
    align: bool,
    queue_seconds: float,
) -> FusedResult:
    """The stored result and its JSON answer (in the request: it builds the URLs)."""
    rid = secrets.token_urlsafe(9)
    meta = {
        "id": rid,
        "width": fused.width,
        "height": fused.height,
        "bit_depth": fused.bit_depth,
        "format": "PNG",
        "filename": DOWNLOAD_NAME,
        "method": method_name,
        "strategy": fused.strategy,
        "align": align,
        "ordering": fused.ordering,
        "order": fused.order,
        "used": fused.used,
        "motions": fused.motions,
        "resolution": fused.resolution,
        "seconds": round(fused.compute_seconds, 3),
        "compute_seconds": round(fused.compute_seconds, 3),
        "queue_seconds": round(queue_seconds, 3),
        "inputs": [
            {
                "index": i,
                "name": u.name,
                "width": u.size[0] if u.size else None,
                "height": u.size[1] if u.size else None,
                "preview_url": url_for("input_preview", rid=rid, index=i),
            }
            for i, u in enumerate(uploads)
        ],
        "preview_url": url_for("result_preview", rid=rid),
        "download_url": url_for("result_download", rid=rid),
        "result_url": url_for("result_meta", rid=rid),
    }
    log.info(
        "fused %d image(s) into %dx%d (%d-bit, %s) in %.2f s after %.2f s in the queue",
        len(uploads),
        fused.width,
        fused.height,
        fused.bit_depth,
        method_name,
        fused.compute_seconds,
        queue_seconds,
    )
    return FusedResult(
        meta=meta, png=fused.png, preview=fused.preview, input_previews=fused.input_previews
    )


def _user_message(exc: InputError, uploads: Sequence[_Upload]) -> str:
    """``exc``'s message with every temporary path or name replaced by the user's name."""
    swaps: dict[str, str] = {}
    for u in uploads:
        swaps[str(u.path)] = u.name
        swaps[u.path.name] = u.name
    # One pass, longest first: full paths before bare names, and no name is swapped twice.
    pattern = re.compile("|".join(re.escape(k) for k in sorted(swaps, key=len, reverse=True)))
    problem = pattern.sub(lambda m: swaps[m.group(0)], exc.problem)
    if exc.path is None:
        return problem
    return f"{pattern.sub(lambda m: swaps[m.group(0)], str(exc.path))}: {problem}"


def _lookup(results: ResultStore, rid: str, keeps: str) -> FusedResult:
    result = results.get(rid)
    if result is None:
        raise ApiError(
            404,
            f"result {rid} is not available (it expired, made room for newer ones or never "
            f"existed: {keeps}); fuse the photos again",
        )
    return result


def _to_uint8_bgr(pixels: np.ndarray) -> np.ndarray:
    levels = np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(levels, cv2.COLOR_RGB2BGR)


def _fit(image: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


_REDUCED = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


def _file_preview(upload: _Upload) -> bytes:
    """An 8-bit JPEG preview of an input that fusion has already read successfully."""
    flags = cv2.IMREAD_COLOR  # 8-bit, EXIF orientation applied like read_image does
    if upload.size is not None:
        # A reduced decode (JPEG scales while decoding) keeps a 40 MP input from costing
        # a full-size copy just for a thumbnail.
        for factor, reduced in _REDUCED:
            if max(upload.size) // factor >= PREVIEW_SIDE:
                flags = reduced
                break
    bgr = cv2.imdecode(np.fromfile(upload.path, dtype=np.uint8), flags)
    if bgr is None:
        raise ApiError(422, f"{upload.name}: could not be decoded for its preview")
    return _jpeg(_fit(bgr))


def _jpeg(bgr: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, _PREVIEW_QUALITY])
    if not ok:
        raise RuntimeError("could not encode a JPEG preview")
    return buffer.tobytes()
