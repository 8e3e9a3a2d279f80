"""Limits of ``textmef serve`` (no Flask import: the command line reads the defaults)."""

from __future__ import annotations

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
    "SPARE_THREADS",
    "server_threads",
]

DEFAULT_MAX_UPLOAD_MB = 200
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_FILES = 9
PREVIEW_SIDE = 1600

# Fusions run on DEFAULT_WORKERS worker thread(s), apart from the server's request threads:
# they share the model and torch's thread pool, so one at a time is right. At most
# DEFAULT_MAX_QUEUE more wait for a worker; a fuse request beyond that is answered 503.
DEFAULT_WORKERS = 1
DEFAULT_MAX_QUEUE = 8
# Results stay in memory until they expire (DEFAULT_RESULT_TTL_S after they were made) or
# their bytes are needed: DEFAULT_MAX_RESULT_MB MiB for all of them together.
DEFAULT_MAX_RESULT_MB = 512
DEFAULT_RESULT_TTL_S = 3600
# Request threads beyond those a fusion can hold (each queued or running fusion keeps its
# request thread waiting): they serve the page, static files, previews and /healthz.
SPARE_THREADS = 4
# Where create_app leaves its FusionQueue (app.extensions) and the waitress thread count
# its limits call for (app.config), for textmef.web.cli.
FUSION_QUEUE_KEY = "textmef.fusions"
SERVER_THREADS_KEY = "TEXTMEF_SERVER_THREADS"


def server_threads(max_queue: int, workers: int = DEFAULT_WORKERS) -> int:
    """Waitress threads enough that waiting fusions never starve the page.

    Args:
        max_queue: the most fusions waiting for a worker.
        workers: the fusion worker threads.

    Returns:
        ``max_queue + workers + SPARE_THREADS``.
    """
    return max_queue + workers + SPARE_THREADS
