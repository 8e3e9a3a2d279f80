"""Load: 20 fusions at once against the real waitress server, /healthz polled meanwhile.

The app (a tiny, untrained network: the point is the server, not the picture) is served
by :func:`textmef.web.cli.make_server` on a free loopback port, with the thread count the
app asks for. 20 client threads post a pair of 96x64 PNGs at the same moment while another
thread asks for ``/healthz`` every 20 ms (and for the page now and then). Checked:

* every request gets its result (200, and its PNG downloads) or a 503 with Retry-After
  and a "busy" message, none lost; with a queue that holds all 20, all are 200;
* ``/healthz`` and the page answer within :data:`QUICK_S` throughout: fusions run on the
  app's worker thread, and waitress has threads to spare for everything else;
* the process's RSS grows by less than :data:`RSS_GROWTH_BOUND_MB` over the run;
* every result is still downloadable after the run (none evicted early), and no request
  leaves a file behind.

Run with ``-s`` to see the figures (latencies, queue times, RSS, counts).
"""

from __future__ import annotations

import http.client
import json
import resource
import statistics
import sys
import threading
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("flask", reason="the web app needs Flask: pip install 'textmef[web]'")
pytest.importorskip("waitress", reason="textmef serve needs waitress: pip install 'textmef[web]'")

import torch  # noqa: E402
from werkzeug.datastructures import FileStorage  # noqa: E402
from werkzeug.test import encode_multipart  # noqa: E402

from textmef import io  # noqa: E402
from textmef.models import create_model  # noqa: E402
from textmef.runtime import set_threads  # noqa: E402
from textmef.web.app import FUSION_QUEUE_KEY, create_app  # noqa: E402
from textmef.web.cli import make_server  # noqa: E402

HOST = "127.0.0.1"  # loopback only
REQUESTS = 20
POLL_S = 0.02  # /healthz every 20 ms
PAGE_EVERY = 10  # and the page every 10th poll
# The page and /healthz must answer within 100 ms while fusions run. They do nothing but
# read a few counters (or render a template), so 100 ms is what a busy 2-core machine
# leaves of the GIL and the CPUs to a request that never waits for a fusion.
QUICK_S = 0.100
# Growth of the process's resident memory from before the server starts to after it stops
# (the current RSS, not ru_maxrss: that high-water mark already holds whatever ran before
# in the same pytest process, e.g. test_web.py's packaged model, and would hide the run).
# Read in the test's own thread only: sampling it every 20 ms from a thread next to the
# server's made /healthz answer late. The results are still held at the end, so leaked or
# piled-up buffers count then. The tiny network and 20 pairs of 96x64 images take a few
# MB, and at most max_queue + 1 fusions are admitted at once, each holding its uploads and
# one result: about 100 MB of first-use allocations was measured. 400 MB leaves room for
# allocator slack and would be far exceeded if requests piled up without bound or results
# leaked large buffers.
RSS_GROWTH_BOUND_MB = 400
TIMEOUT_S = 60  # any one HTTP exchange


@pytest.fixture(scope="module")
def one_thread():
    """Fusions on one thread, as the 2-core CI machine wants; restored afterwards."""
    import numba

    saved = torch.get_num_threads(), numba.get_num_threads()
    set_threads(1)
    yield
    torch.set_num_threads(saved[0])
    numba.set_num_threads(saved[1])


@pytest.fixture(scope="module")
def tiny_model(one_thread):
    torch.manual_seed(0)
    return create_model("textmef-tiny").eval()


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> tuple[bytes, str]:
    """The multipart body of a fuse request: a dark and a bright 96x64 PNG."""
    folder = tmp_path_factory.mktemp("load-inputs")
    rng = np.random.default_rng(0)
    coarse = rng.random((9, 13, 3)).astype(np.float32)
    scene = cv2.resize(coarse, (96, 64), interpolation=cv2.INTER_LINEAR)
    paths = [
        io.write_image(folder / f"{name}.png", np.clip(scene * gain, 0, 1), 8)
        for name, gain in (("dark", 0.2), ("bright", 2.5))
    ]
    files = [FileStorage(open(p, "rb"), p.name) for p in paths]  # noqa: SIM115
    try:
        boundary, body = encode_multipart({"method": "textmef", "files": files})
    finally:
        for f in files:
            f.close()
    return body, f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    """One exchange on its own connection: (status, headers, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


class Poller(threading.Thread):
    """Asks for /healthz every POLL_S (the page every PAGE_EVERY-th time) until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(name="healthz-poller", daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.health_s: list[float] = []
        self.page_s: list[float] = []
        self.most_queued = 0
        self.busy_polls = 0  # answers that saw a fusion running or waiting
        self.failures: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + 10 * TIMEOUT_S
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            n += 1
            page = n % PAGE_EVERY == 0
            started = time.perf_counter()
            try:
                status, _, body = request(self.port, "GET", "/" if page else "/healthz")
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            if status != 200:
                self.failures.append(f"status {status}")
            elif page:
                self.page_s.append(elapsed)
            else:
                self.health_s.append(elapsed)
                health = json.loads(body)
                self.most_queued = max(self.most_queued, health["queued"])
                self.busy_polls += bool(health["queued"] or health["workers_busy"])
            self.stop.wait(POLL_S)


def rss_mb() -> float:
    """The process's resident memory now (Linux); elsewhere its peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


@pytest.mark.parametrize(
    ("max_queue", "all_fused"),
    [(REQUESTS, True), (2, False)],
    ids=["queue-holds-all", "small-queue"],
)
def test_twenty_fusions_at_once_keep_the_server_responsive(
    tiny_model, upload, tmp_path, max_queue, all_fused
):
    body, content_type = upload
    rss_before = rss_mb()
    temp_root = tmp_path / "root"
    temp_root.mkdir()
    app = create_app(tiny_model, temp_root=temp_root, max_queue=max_queue)
    server = make_server(app, HOST, 0, max_upload_mb=10)
    assert server.threads == max_queue + 1 + 4
    serving = threading.Thread(target=server.run, name="textmef-serve", daemon=True)
    serving.start()
    poller = Poller(server.port)
    answers: list[tuple[int, dict, dict, float] | None] = [None] * REQUESTS
    errors: list[str] = []
    start = threading.Barrier(REQUESTS + 1, timeout=TIMEOUT_S)

    def client(i: int) -> None:
        try:
            start.wait()
            began = time.perf_counter()
            status, headers, data = request(
                server.port, "POST", "/api/fuse", body, {"Content-Type": content_type}
            )
            answers[i] = (status, headers, json.loads(data), time.perf_counter() - began)
        except Exception as exc:  # reported below, with the others
            errors.append(f"request {i}: {type(exc).__name__}: {exc}")

    clients = [
        threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(REQUESTS)
    ]
    try:
        # The server is up, and the page's template is compiled (once per app, ~0.1 s
        # on a slow machine: a cold start, not a request waiting for a fusion).
        for path in ("/healthz", "/", "/static/app.js"):
            assert request(server.port, "GET", path)[0] == 200
        poller.start()
        for thread in clients:
            thread.start()
        start.wait()
        for thread in clients:
            thread.join(2 * TIMEOUT_S)
        assert not any(t.is_alive() for t in clients), "a request never came back"
        time.sleep(5 * POLL_S)  # a few polls of the idle server too
        poller.stop.set()
        poller.join(TIMEOUT_S)

        assert errors == []
        done = [a for a in answers if a is not None]
        fused = [a for a in done if a[0] == 200]
        busy = [a for a in done if a[0] == 503]
        assert len(fused) + len(busy) == REQUESTS, [a[:3] for a in done if a[0] not in (200, 503)]
        for _, headers, meta, _ in busy:
            assert int(headers["Retry-After"]) >= 1
            assert "server is busy" in meta["error"]
        if all_fused:
            assert busy == []
        else:
            assert busy, "a queue of 2 should have turned some of 20 simultaneous requests away"
            assert fused, "the requests the queue took should have been fused"
        # Every result can still be downloaded (twice: a download does not remove it).
        for _ in range(2):
            for _, _, meta, _ in fused:
                status, headers, png = request(server.port, "GET", meta["download_url"])
                assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        status, _, health = request(server.port, "GET", "/healthz")
        health = json.loads(health)
        assert health["results"] == len(fused) and health["result_bytes"] > 0
        assert (health["queued"], health["workers_busy"]) == (0, 0)
    finally:
        poller.stop.set()
        server.stop()
        serving.join(10)
        app.extensions[FUSION_QUEUE_KEY].close()
    assert not serving.is_alive(), "the server did not stop"
    assert list(temp_root.iterdir()) == [], "a request left files behind"

    rss = rss_mb()
    latency = sorted(a[3] for a in fused)
    queue_s = [a[2]["queue_seconds"] for a in fused]
    compute_s = [a[2]["compute_seconds"] for a in fused]
    print(
        f"\n[load, max_queue={max_queue}] {len(fused)} x 200, {len(busy)} x 503 "
        f"(Retry-After {sorted({int(a[1]['Retry-After']) for a in busy})} s); "
        f"/healthz {len(poller.health_s)} polls ({poller.busy_polls} during fusions): "
        f"max {max(poller.health_s) * 1e3:.1f} ms, "
        f"median {statistics.median(poller.health_s) * 1e3:.1f} ms; "
        f"page {len(poller.page_s)} loads: max {max(poller.page_s, default=0) * 1e3:.1f} ms; "
        f"fusion requests: min {latency[0]:.2f} s, median {statistics.median(latency):.2f} s, "
        f"max {latency[-1]:.2f} s; compute median {statistics.median(compute_s):.3f} s; "
        f"queue max {max(queue_s):.2f} s; most queued seen {poller.most_queued}; "
        f"RSS {rss:.0f} MB after the run (before it {rss_before:.0f} MB)"
    )
    assert poller.failures == []
    assert poller.busy_polls >= 2, "too few polls while fusions ran to judge"
    assert max(poller.health_s) < QUICK_S, f"/healthz took {max(poller.health_s):.3f} s"
    assert max(poller.page_s, default=0) < QUICK_S, f"the page took {max(poller.page_s):.3f} s"
    assert rss - rss_before < RSS_GROWTH_BOUND_MB, f"RSS grew by {rss - rss_before:.0f} MB"
