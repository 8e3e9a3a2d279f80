"""``textmef serve``: the fusion web page on a local waitress server.

``textmef.cli`` registers the subcommand with :func:`add_serve_parser`. Waitress is a
production WSGI server in pure Python (no compiler, works on Windows too); the model is
loaded once, before the server starts, and shared by every request. Fusions run on the
app's own worker thread(s) (:class:`textmef.web.app.FusionQueue`); waitress gets enough
threads for every fusion the queue admits to wait in its request thread, plus spare ones
for the page and ``/healthz`` (:func:`textmef.web.limits.server_threads`).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textmef.argtypes import positive_float, positive_int
from textmef.errors import InputError, TextmefError
from textmef.tiling import DEFAULT_WORK_SIZE
from textmef.web.limits import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_RESULT_MB,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_RESULT_TTL_S,
    FUSION_QUEUE_KEY,
    SERVER_THREADS_KEY,
    SPARE_THREADS,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Server",
    "add_serve_parser",
    "make_server",
    "serve_forever",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
SERVER_THREADS = SPARE_THREADS  # for an app that does not say how many it needs
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_ANY = frozenset({"0.0.0.0", "::", ""})
_MB = 1024 * 1024
# Bodies a little over the app's limit still reach Flask, which answers with a JSON
# message; far larger ones are refused by waitress before it buffers them.
_BODY_SLACK = _MB


def _file_count(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (fusion needs 2 images), got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``serve`` subcommand on ``subparsers`` (from ``add_subparsers``).

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers`` returned.

    Returns:
        The ``serve`` parser; its ``run`` default is :func:`_cmd_serve`.
    """
    p = subparsers.add_parser(
        "serve",
        help="a local web page: drop exposures of one scene, get the fused image",
        description="Serve a web page on which you drop two or more photos of one scene "
        "taken at different exposures, compare the fused result with the "
        "inputs and download it. Uploads stay in a temporary folder that is "
        "removed when the server stops. Needs the web extra: "
        "pip install 'textmef[web]'.",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
        "0.0.0.0 opens it to the network, without any login)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port, 0 = any free one (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "--weights",
        type=Path,
        help="a .safetensors checkpoint or the authors' .pth (default: the packaged one)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--threads", type=positive_int, help="CPU threads per fusion (default: all cores)"
    )
    p.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help=f"largest upload, all files together (default {DEFAULT_MAX_UPLOAD_MB})",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"most pixels per image (default {DEFAULT_MAX_PIXELS:_})",
    )
    p.add_argument(
        "--max-files",
        type=_file_count,
        default=DEFAULT_MAX_FILES,
        metavar="N",
        help=f"most images per fusion (default {DEFAULT_MAX_FILES})",
    )
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=DEFAULT_MAX_QUEUE,
        metavar="N",
        help="most fusions waiting while one runs; more are answered 'server busy' "
        f"(HTTP 503 with Retry-After) (default {DEFAULT_MAX_QUEUE})",
    )
    p.add_argument(
        "--max-result-mb",
        type=positive_float,
        default=DEFAULT_MAX_RESULT_MB,
        metavar="MB",
        help="memory for results awaiting download, all together; the downloaded, then "
        f"the oldest, make room (default {DEFAULT_MAX_RESULT_MB})",
    )
    p.add_argument(
        "--result-ttl",
        type=positive_float,
        default=DEFAULT_RESULT_TTL_S,
        metavar="SECONDS",
        help=f"how long a result stays downloadable at most (default {DEFAULT_RESULT_TTL_S})",
    )
    p.add_argument(
        "--work-size",
        type=positive_int,
        default=DEFAULT_WORK_SIZE,
        metavar="N",
        help="photos above N x N pixels take the guided full-resolution path "
        f"(default {DEFAULT_WORK_SIZE}; see textmef fuse --help)",
    )
    p.set_defaults(run=_cmd_serve)
    return p


class Server:
    """A waitress server bound to its socket, with a way to stop it from another thread.

    Args:
        app: the WSGI application.
        host: address to listen on.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        max_request_bytes: request bodies larger than this are refused with 413.
        threads: waitress worker threads.

    Raises:
        OSError: the address cannot be bound (in use, not an address of this machine).
    """

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        max_request_bytes: int,
        threads: int = SERVER_THREADS,
    ) -> None:
        # types-waitress lacks create_server, which waitress itself exports (waitress.server).
        from waitress import create_server  # type: ignore[attr-defined]

        # Our own socket map, so that stop() can close every connection, not just the
        # listening socket (an idle keep-alive connection would keep the loop running).
        self._map: dict = {}
        self._server = create_server(
            app,
            map=self._map,
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=max_request_bytes,
            ident="textmef",
        )
        self.host = host
        self.threads = threads
        self.port = int(self._server.effective_port)  # waitress reports it as a string

    @property
    def url(self) -> str:
        """The address to open in a browser."""
        host = "127.0.0.1" if self.host in _ANY else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        """Serve until :meth:`stop` or Ctrl+C (waitress handles the interrupt itself)."""
        self._server.run()

    def stop(self) -> None:
        """Stop a server that :meth:`run` serves in another thread."""
        from waitress import wasyncore

        # The socket map belongs to the loop's thread: the trigger runs the close there,
        # and the loop ends once the map is empty.
        try:
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
        except OSError:
            # The wake-up pipe is already closed (seen in about 3 % of isolated runs of
            # tests/test_web_load.py, cause not found): close the connections from here
            # instead; the loop ends at its next timeout, once it finds the map empty.
            wasyncore.close_all(self._map, ignore_all=True)
        self._server.task_dispatcher.shutdown()

    def close(self) -> None:
        """Release the sockets once :meth:`run` has returned (or never ran)."""
        from waitress import wasyncore

        self._server.task_dispatcher.shutdown()
        wasyncore.close_all(self._map)


def make_server(
    app: Any,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_upload_mb: float,
    threads: int | None = None,
) -> Server:
    """Bind a waitress :class:`Server` for ``app`` (it does not serve until ``run``).

    Args:
        app: the WSGI application, e.g. from :func:`textmef.web.app.create_app`.
        host: address to listen on.
        port: TCP port; 0 picks a free one.
        max_upload_mb: the app's upload limit; waitress refuses bodies well beyond it.
        threads: waitress worker threads; by default the number the app asks for
            (``create_app`` sets its fusion queue's bound + workers + spare ones), else
            :data:`SERVER_THREADS`.

    Raises:
        InputError: the address cannot be bound.
    """
    if threads is None:
        config = getattr(app, "config", None) or {}
        threads = int(config.get(SERVER_THREADS_KEY, SERVER_THREADS))
    try:
        return Server(
            app,
            host,
            port,
            max_request_bytes=int(max_upload_mb * _MB) + _BODY_SLACK,
            threads=threads,
        )
    except OSError as exc:
        raise InputError(
            None,
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "pick another --port or --host",
        ) from None


def serve_forever(server: Server) -> None:
    """Serve until interrupted; a separate function so tests can replace it."""
    server.run()


@contextlib.contextmanager
def _temporary_files_in(folder: str) -> Iterator[None]:
    """Make ``folder`` Python's default temporary folder while the server runs.

    Waitress buffers large request bodies in ``tempfile.TemporaryFile()``; this keeps
    them, like everything else the server writes, inside the folder removed at exit.
    """
    saved = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = saved


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let ``kill`` stop the server like Ctrl+C, so the temporary folder is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_serve(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve it until interrupted.

    Args:
        args: the parsed ``serve`` options.

    Returns:
        0 once the server has stopped.

    Raises:
        TextmefError: Flask or waitress is missing.
        InputError: unusable weights or device, or the address cannot be bound.
    """
    try:
        import flask  # noqa: F401
        import waitress  # noqa: F401
    except ImportError as exc:
        raise TextmefError(
            f"textmef serve needs Flask and waitress, and {exc.name or 'one of them'} is not "
            "installed; install the web extra: pip install 'textmef[web]'"
        ) from None
    from textmef.api import load_model
    from textmef.runtime import resolve_device, set_threads
    from textmef.web.app import create_app

    if args.threads:
        set_threads(args.threads)
    model = load_model(args.weights, resolve_device(args.device))
    with (
        tempfile.TemporaryDirectory(prefix="textmef-serve-") as root,
        _temporary_files_in(root),
        _sigterm_as_interrupt(),
    ):
        app = create_app(
            model,
            max_upload_mb=args.max_upload_mb,
            max_pixels=args.max_pixels,
            max_files=args.max_files,
            temp_root=root,
            max_queue=args.max_queue,
            max_result_mb=args.max_result_mb,
            result_ttl_s=args.result_ttl,
            work_size=args.work_size,
        )
        fusions = app.extensions[FUSION_QUEUE_KEY]  # its threads start with the first fusion
        server = make_server(app, args.host, args.port, max_upload_mb=args.max_upload_mb)
        try:
            print(f"textmef serve: open {server.url} in a browser (Ctrl+C stops)", flush=True)
            if args.host not in _LOOPBACK:
                print(
                    f"textmef serve: warning: --host {args.host} lets other machines use "
                    "this page; it has no login",
                    flush=True,
                )
            serve_forever(server)
        finally:
            server.close()
            fusions.close()  # fails fusions still waiting; waits briefly for a running one
    print("textmef serve: stopped", flush=True)
    return 0
