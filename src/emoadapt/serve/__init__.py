"""`emoadapt serve`: a Recognizer behind HTTP (FastAPI + uvicorn) with a web page.

    GET  /          the page: upload a file or record from the microphone; probabilities as bars, a timeline
    POST /predict   an upload (multipart field ``file``) or the raw audio bytes as the body -> the Prediction as JSON;
                    a speaker model also takes reference clips (repeated field ``reference``) for that request;
                    ``labels`` and ``abstain`` (query or form) restrict the classes and set the abstention threshold
    GET  /health    {"status": "ok", ...}
    GET  /labels    the model's classes
    GET  /docs      OpenAPI documentation: Swagger UI, its script and style served from /static/swagger-ui (offline)

Limits, each answered with a 4xx that says which and what to do: an upload larger than ``max_upload_bytes`` is
refused from its Content-Length before a byte of the body is read (and, without a Content-Length, as soon as the
body passes the limit): 413; audio longer than ``max_seconds``: 413; audio that cannot be decoded: 422; more than
``max_concurrent`` recordings in work at once: the others wait up to ``queue_seconds`` for a slot, then get 429 with
Retry-After. Nothing a client sends gives a 5xx.
"""

import asyncio
import errno
import logging
import os
import tempfile
import warnings
from pathlib import Path

from ..audio import AUDIO_EXTENSIONS
from ..errors import AudioError, EmoadaptError, TooLongAudio

PAGE = Path(__file__).with_name("page.html")
MAX_REFERENCE_CLIPS = 50  # reference clips per request (form field "reference")
OPTIONS = ("labels", "abstain")  # per-request options: query parameters or form fields
UPLOADS_PREFIX = "emoadapt-serve-"  # + the server's pid: a folder per request in the temp dir, removed after it
SWAGGER_UI_STATIC = "/static/swagger-ui"  # where /docs finds Swagger UI's script and style


def swagger_ui_folder() -> Path:
    """Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css, favicons), from the swagger-ui-bundle-v2 wheel: its
    5.x release reads the OpenAPI 3.1 that FastAPI writes (swagger-ui-bundle's 4.x cannot)."""
    import swagger_ui_bundle
    return Path(swagger_ui_bundle.swagger_ui_path)


def remove_stale_uploads(temp_dir: str | os.PathLike | None = None) -> list[Path]:
    """The upload folders of servers that were killed mid-request (``kill -9`` skips every clean-up): a user's audio
    must not linger. Run when a server starts; folders of servers still running are left alone."""
    import re
    import shutil

    from ..atomic import process_alive
    removed = []
    for folder in Path(temp_dir or tempfile.gettempdir()).glob(f"{UPLOADS_PREFIX}*"):
        m = re.match(rf"^{UPLOADS_PREFIX}(\d+)-", folder.name)
        if folder.is_dir() and not folder.is_symlink() and (m is None or not process_alive(int(m.group(1)))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class UploadLimit:
    """ASGI middleware: POST bodies over ``limit`` bytes get 413 before they are read (declared size) or while
    they arrive (chunked)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _too_large(send, self.limit)
        seen, started, refused = 0, False, False

        async def counted_receive():
            nonlocal seen, refused, started
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not started:  # answer now; the app sees the client leave
                    refused = started = True
                    await _too_large(send, self.limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            if refused:
                return  # the 413 is already sent: whatever the app says after the disconnect is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if not refused:
                raise


async def _too_large(send, limit: int) -> None:
    import json
    body = json.dumps({"detail": f"upload too large: the limit is {limit} bytes ({limit / 2**20:.1f} MiB); send a "
                                 f"shorter or compressed recording (FLAC, Ogg)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(recognizer, *, max_upload_bytes: int = 20 * 2**20, max_concurrent: int = 2,
               queue_seconds: float = 10.0):
    """The FastAPI application around a :class:`emoadapt.inference.Recognizer` (its ``max_seconds`` caps the audio)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    from .schema import (PREDICT_ERRORS, PREDICT_PARAMETERS, PREDICT_REQUEST_BODY, HealthOut, LabelsOut,
                         PredictionOut)

    # FastAPI's own /docs page loads Swagger UI from a CDN: a blank page on a machine without internet, where this
    # server is meant to run. The assets come from the swagger-ui-bundle-v2 wheel instead.
    app = FastAPI(title="emoadapt", summary="speech emotion recognition", docs_url=None, redoc_url=None,
                  description=f"Model {recognizer.model_dir.name}: classes {', '.join(recognizer.labels)}.")
    app.mount(SWAGGER_UI_STATIC, StaticFiles(directory=swagger_ui_folder()), name="swagger-ui")
    busy = asyncio.Semaphore(max_concurrent)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that mounts the server under a path
        return get_swagger_ui_html(openapi_url=root + app.openapi_url, title=f"{app.title} — API",
                                   swagger_js_url=f"{root}{SWAGGER_UI_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{SWAGGER_UI_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{SWAGGER_UI_STATIC}/favicon-32x32.png")

    @app.get("/health", response_model=HealthOut, summary="The model and its classes")
    def health():
        return {"status": "ok", "model": recognizer.model_dir.name, "labels": recognizer.labels,
                "normalization": recognizer.trained_normalization}

    @app.get("/labels", response_model=LabelsOut, summary="The model's classes")
    def labels():
        return {"labels": recognizer.labels}

    # the endpoint reads the request itself (a form or the raw body, and the options from either), so its body and
    # parameters are described here for /docs and /openapi.json rather than inferred from the signature
    @app.post("/predict", response_model=PredictionOut, responses=PREDICT_ERRORS, summary="Recognise a recording",
              openapi_extra={"requestBody": PREDICT_REQUEST_BODY, "parameters": PREDICT_PARAMETERS})
    async def predict(request: Request):
        """The audio as a multipart upload (field ``file``) or as the raw request body (any format libsndfile reads:
        WAV, FLAC, Ogg, MP3, ...). Options, as query parameters or form fields: ``labels`` (comma-separated: only
        these classes, probabilities renormalised over them) and ``abstain`` (no label below this top probability)."""
        name, data, references, fields = await _audio_bytes(request)
        options = {**{k: request.query_params[k] for k in OPTIONS if k in request.query_params}, **fields}
        try:
            labels = recognizer.subset(options.get("labels"))
            abstain = _abstain(options.get("abstain"))
        except EmoadaptError as error:
            raise HTTPException(422, str(error)) from None
        if not data:
            raise HTTPException(422, "empty upload: send an audio file as the body or as the form field 'file'")
        try:  # wait for a free slot a little, then say busy
            await asyncio.wait_for(busy.acquire(), timeout=queue_seconds)
        except asyncio.TimeoutError:
            raise HTTPException(429, f"busy: {max_concurrent} recordings were being recognised for {queue_seconds:g} s; "
                                     f"retry in a moment", headers={"Retry-After": "2"}) from None
        try:
            suffix = Path(name).suffix if Path(name).suffix.lower() in AUDIO_EXTENSIONS else ""
            with tempfile.TemporaryDirectory(prefix=f"{UPLOADS_PREFIX}{os.getpid()}-") as tmp:
                path = Path(tmp) / f"upload{suffix}"
                path.write_bytes(data)
                try:
                    result = await run_in_threadpool(_predict, recognizer, path, _written(references, Path(tmp)),
                                                     labels, abstain)
                except TooLongAudio as error:
                    raise HTTPException(413, _public(error, path, name)) from None
                except AudioError as error:
                    raise HTTPException(422, _public(error, path, name)) from None
                except EmoadaptError as error:
                    raise HTTPException(422, _public(error, path, name)) from None
        finally:
            busy.release()
            await run_in_threadpool(_trim)
        out = result.to_dict()
        out["source"] = name
        out["top"] = result.top(3)
        return out

    return app


def _written(references: list[tuple[str, bytes]], folder: Path) -> list[Path]:
    paths = []
    for k, (name, data) in enumerate(references):
        suffix = Path(name).suffix if Path(name).suffix.lower() in AUDIO_EXTENSIONS else ""
        paths.append(folder / f"reference-{k}{suffix}")
        paths[-1].write_bytes(data)
    return paths


def _abstain(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise EmoadaptError(None, f"abstain {text!r}: give a top probability in [0, 1), below which no label is given")
    return value


def _predict(recognizer, path: Path, references: list[Path], labels: list[str] | None = None,
             abstain: float | None = None):
    """One request's prediction; its reference clips (if any) and its abstention threshold apply to a copy of the
    recognizer, so that requests in flight never see each other's."""
    if references or abstain is not None:
        import copy
        recognizer = copy.copy(recognizer)
    if abstain is not None:
        recognizer.abstain_below = abstain
    if references:
        recognizer.reset_calibration()
        with warnings.catch_warnings():  # the warnings travel in the answer's "warnings"
            warnings.simplefilter("ignore")
            recognizer.adapt(references)
    return recognizer.predict(path, labels=labels)


def _public(error: Exception, path: Path, name: str) -> str:
    """The error's message with the server's temp path replaced by the client's file name (a reference clip's by
    its name in the request's temp folder)."""
    return str(error).replace(str(path), name).replace(str(path.parent) + os.sep, "")


async def _audio_bytes(request) -> tuple[str, bytes, list[tuple[str, bytes]], dict[str, str]]:
    """(file name, audio bytes, reference clips, the option fields of a form) of a request."""
    from fastapi import HTTPException
    from starlette.requests import ClientDisconnect
    kind = request.headers.get("content-type", "")
    options: dict[str, str] = {}
    try:
        if kind.startswith("multipart/form-data"):
            form = await request.form(max_files=1 + MAX_REFERENCE_CLIPS, max_fields=10)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "a multipart upload needs the audio in the form field 'file'")
            for k in OPTIONS:
                value = form.get(k)
                if value is not None and not isinstance(value, str):
                    raise HTTPException(422, f"the form field {k!r} takes text, not a file")
                if value is not None:
                    options[k] = value
            references = [r for r in form.getlist("reference")]
            if any(isinstance(r, str) for r in references):
                raise HTTPException(422, "the form field 'reference' takes audio files (unlabeled clips of the "
                                         "speaker), not text")
            return (upload.filename or "upload", await upload.read(),
                    [(r.filename or f"reference-{k}", await r.read()) for k, r in enumerate(references)], options)
        return request.headers.get("x-filename", "body"), await request.body(), [], options
    except ClientDisconnect:  # one line in the log, not a traceback per client that leaves
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        logging.getLogger("emoadapt.serve").warning("%s disconnected during its upload; nothing was recognised", client)
        raise HTTPException(400, "the client disconnected during the upload") from None


def _bounded_malloc() -> None:
    """glibc gives every thread that allocates its own arena and keeps freed pages: under a thread pool the
    server's RSS then climbs by hundreds of MiB and stays there. Two arenas, and trimming after each request, keep it
    near its baseline (bench/serve_load.py measures it). A no-op where glibc is not the allocator."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        _TRIM.append(libc.malloc_trim)
    except (OSError, AttributeError):
        pass


_TRIM: list = []


def _trim() -> None:
    for trim in _TRIM:
        trim(0)


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol, closing a connection whose request line and headers have not all arrived within
    ``seconds`` of it opening (or of the first byte after the previous response): a client that sends its headers
    byte by byte cannot hold connections open for good. uvicorn has no such setting of its own."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeout(H11Protocol):
        _header_deadline = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                if self._header_deadline is None:
                    self._arm()
            elif self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def connection_lost(self, exc):
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_deadline = self.loop.call_later(seconds, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                client = "%s:%d" % self.client if self.client else "a client"
                logging.getLogger("emoadapt.serve").warning("%s sent no complete request headers within %g s; "
                                                            "closed", client, seconds)
                self.transport.close()

    return HeaderTimeout


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 20.0,
          max_seconds: float = 120.0, max_concurrent: int = 2, window_seconds: float = 10.0,
          queue_seconds: float = 10.0, header_timeout: float = 10.0, **recognizer_options) -> None:
    import uvicorn

    from ..inference import Recognizer
    listening = _listen(host, port)  # first: a taken port is refused before the model loads
    remove_stale_uploads()
    _bounded_malloc()  # before uvicorn starts its thread pool
    recognizer = Recognizer.from_pretrained(model, max_seconds=max_seconds, window_seconds=window_seconds,
                                            **recognizer_options)  # span, hop, abstain_below, speech_check
    app = UploadLimit(create_app(recognizer, max_upload_bytes=int(max_upload_mb * 2**20),
                                 max_concurrent=max_concurrent, queue_seconds=queue_seconds),
                       int(max_upload_mb * 2**20))
    print(f"emoadapt serve: model {recognizer.model_dir} ({', '.join(recognizer.labels)}) on http://{host}:{port}/",
          flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=os.environ.get("EMOADAPT_LOG_LEVEL", "warning"),
                            http=header_timeout_protocol(header_timeout))
    uvicorn.Server(config).run(sockets=[listening])


def _listen(host: str, port: int):
    """The server's socket, bound here so that a taken port or an address this machine does not have is one clear
    error (uvicorn would log it and exit with its own status)."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise EmoadaptError(None, f"--host {host!r}: not an address of this machine ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        reason = ("is already in use: stop what listens there or choose another --port"
                  if error.errno == errno.EADDRINUSE else f"cannot be listened on ({error.strerror})")
        raise EmoadaptError(None, f"{host}:{port} {reason}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
