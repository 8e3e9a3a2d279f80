"""The web app behind ``textmef serve``, through Flask's test client, and the command."""

from __future__ import annotations

import argparse
import importlib.machinery
import io as bytes_io
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("flask", reason="the web app needs Flask: pip install 'textmef[web]'")
pytest.importorskip("waitress", reason="textmef serve needs waitress: pip install 'textmef[web]'")

import torch  # noqa: E402
from werkzeug.datastructures import FileStorage  # noqa: E402
from werkzeug.test import encode_multipart  # noqa: E402

from textmef import io  # noqa: E402
from textmef.api import load_model, set_threads  # noqa: E402
from textmef.errors import InputError  # noqa: E402
from textmef.web import app as web_app  # noqa: E402
from textmef.web import cli as web_cli  # noqa: E402
from textmef.web.app import (  # noqa: E402
    FusedResult,
    FusionQueue,
    QueueClosedError,
    QueueFullError,
    ResultStore,
    create_app,
)

SIZE = (64, 96)  # (H, W)
LEVELS = (0.15, 0.5, 1.6, 3.0)  # exposure multipliers, darkest first


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Fuse on one thread: tiny images gain nothing from more, and the machine is shared."""
    import numba

    saved = torch.get_num_threads(), numba.get_num_threads()
    set_threads(1)
    yield
    torch.set_num_threads(saved[0])
    numba.set_num_threads(saved[1])


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture
def temp_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.fixture
def make_client(model, temp_root):
    def make(**limits):
        app = create_app(model, temp_root=temp_root, **limits)
        app.testing = True
        return app.test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def scene(size=SIZE, seed=0) -> np.ndarray:
    """Smooth colour texture in [0, 1]: varied enough that exposures differ visibly."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.random((h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def write_stack(
    folder: Path, count: int, *, size=SIZE, bit_depth=8, suffix=".png", names=None
) -> list[Path]:
    """``count`` exposures of one scene, darkest first, written with textmef.io."""
    folder.mkdir(parents=True, exist_ok=True)
    base = scene(size)
    names = names or [f"exposure{i}{suffix}" for i in range(count)]
    return [
        io.write_image(folder / name, np.clip(base * level, 0, 1), bit_depth)
        for name, level in zip(names, LEVELS[:count])
    ]


def post(client, paths, names=None, **form):
    """POST files to /api/fuse; the body is encoded in memory.

    The test client would spool a body over 500 KiB into the system's temporary folder
    itself, which the test of where the server writes would then blame on the server.
    """
    names = names or [Path(p).name for p in paths]
    files = [
        FileStorage(bytes_io.BytesIO(Path(p).read_bytes()), name) for p, name in zip(paths, names)
    ]
    boundary, body = encode_multipart({**form, "files": files})
    return client.post(
        "/api/fuse", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )


def decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def test_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for needle in (
        'type="file"',
        'id="method"',
        'id="align"',
        'id="fuse"',
        'id="compare"',
        'id="download"',
        'role="alert"',
        "app.js",
        "app.css",
    ):
        assert needle in html
    assert "http://" not in html and "https://" not in html  # offline: nothing from a CDN
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for asset, kind in (("/static/app.js", "javascript"), ("/static/app.css", "css")):
        response = client.get(asset)
        assert response.status_code == 200 and kind in response.mimetype
        response.close()
    assert client.get("/healthz").get_json()["status"] == "ok"


@pytest.mark.parametrize(
    ("count", "form", "method", "strategy"),
    [
        (2, {}, "textmef", "extremes"),
        (3, {"method": "textmef"}, "textmef", "extremes"),
        (3, {"method": "textmef-progressive"}, "textmef-progressive", "progressive"),
        (3, {"strategy": "progressive"}, "textmef-progressive", "progressive"),  # older form
        (3, {"method": "mertens"}, "mertens", None),
    ],
)
def test_fusing_returns_a_png_of_the_inputs_size(client, tmp_path, count, form, method, strategy):
    paths = write_stack(tmp_path / "in", count)
    shuffled = paths[1:] + paths[:1]  # upload order is not exposure order
    response = post(client, shuffled, **form)
    assert response.status_code == 200, response.get_json()
    meta = response.get_json()
    assert (meta["width"], meta["height"], meta["bit_depth"]) == (96, 64, 8)
    names = [i["name"] for i in meta["inputs"]]
    assert names == [p.name for p in shuffled]
    assert [names[i] for i in meta["order"]] == [p.name for p in paths]
    expected_used = (
        [meta["order"][0], meta["order"][-1]] if strategy == "extremes" else meta["order"]
    )
    assert meta["used"] == expected_used and meta["motions"] is None
    assert meta["method"] == method and meta["strategy"] == strategy
    assert meta["filename"] == "fused.png"
    assert meta["seconds"] == meta["compute_seconds"] > 0
    assert 0 <= meta["queue_seconds"] < 60

    download = client.get(meta["download_url"])
    assert download.status_code == 200 and download.mimetype == "image/png"
    assert "attachment" in download.headers["Content-Disposition"]
    assert "fused.png" in download.headers["Content-Disposition"]
    fused = decode_png(download.data)
    assert fused.shape == (64, 96, 3) and fused.dtype == np.uint8

    preview = client.get(meta["preview_url"])
    assert preview.mimetype == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(preview.data, np.uint8), 1).shape == (64, 96, 3)
    for item in meta["inputs"]:
        assert client.get(item["preview_url"]).mimetype == "image/jpeg"
    assert client.get(meta["result_url"]).get_json() == meta


def test_a_photo_above_the_working_size_is_fused_by_the_guided_path_and_says_so(
    make_client, tmp_path
):
    # A small working size keeps this test's network pass small (the default is 512).
    client = make_client(work_size=64)
    small = post(client, write_stack(tmp_path / "small", 2, size=(48, 64))).get_json()
    assert small["resolution"].endswith("at full resolution")
    paths = write_stack(tmp_path / "big", 2, size=(100, 175))  # 17,500 px > 64 x 64
    meta = post(client, paths).get_json()
    assert (meta["width"], meta["height"]) == (175, 100)
    assert "at 84x48" in meta["resolution"] and "colour transform" in meta["resolution"]
    assert post(client, paths, method="mertens").get_json()["resolution"] is None
    assert "data.resolution" in client.get("/static/app.js").get_data(as_text=True)
    with pytest.raises(ValueError, match="work size"):
        make_client(work_size=8)


@pytest.mark.parametrize("depths", [(16, 16), (8, 16)])
def test_a_16_bit_input_gives_a_16_bit_png(client, tmp_path, depths):
    dark = write_stack(tmp_path / "a", 1, bit_depth=depths[0])[0]
    bright = write_stack(
        tmp_path / "b", 2, bit_depth=depths[1], suffix=".tif" if depths[0] == 8 else ".png"
    )[1]
    response = post(client, [dark, bright])
    assert response.status_code == 200, response.get_json()
    meta = response.get_json()
    assert meta["bit_depth"] == 16
    fused = decode_png(client.get(meta["download_url"]).data)
    assert fused.dtype == np.uint16 and fused.shape == (64, 96, 3)
    # A real 16-bit result, not 8-bit values stretched: some levels fall between 8-bit steps.
    assert np.any(fused % 257 != 0)


def test_an_upload_over_the_size_limit_is_refused_with_413(make_client, tmp_path):
    client = make_client(max_upload_mb=0.01)  # 10 KiB
    paths = write_stack(tmp_path, 2, size=(128, 160), bit_depth=16)
    response = post(client, paths)
    assert response.status_code == 413
    assert "over this server's limit of 0.01 MB" in response.get_json()["error"]


def test_too_many_files_are_refused_naming_the_extra_ones(make_client, tmp_path):
    paths = write_stack(tmp_path, 4)
    response = post(make_client(max_files=3), paths)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert "4 files sent but at most 3" in error and "exposure3.png" in error


def test_fewer_than_two_files_are_refused(client, tmp_path):
    path = write_stack(tmp_path, 1)[0]
    response = post(client, [path])
    assert response.status_code == 400
    assert "at least 2" in response.get_json()["error"]
    assert "exposure0.png" in response.get_json()["error"]
    response = client.post("/api/fuse", data={"strategy": "extremes"})
    assert response.status_code == 400 and "no files" in response.get_json()["error"]


def test_an_image_over_the_pixel_cap_is_refused_from_its_header(make_client, tmp_path, monkeypatch):
    small = write_stack(tmp_path / "s", 1)[0]
    big = write_stack(tmp_path / "b", 2, size=(100, 150), names=["a.png", "big.png"])[1]
    decoded = []
    monkeypatch.setattr(io, "read_image", lambda p: decoded.append(p))  # must not be reached
    response = post(make_client(max_pixels=96 * 64), [small, big])
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error.startswith("big.png: is 150x100 pixels") and "--max-pixels" in error
    assert decoded == []


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        ("notes.txt", b"hello", "notes.txt: unsupported file type (.txt)"),
        ("noise.png", b"not an image at all", "noise.png: is not a PNG, TIFF or JPEG image"),
        ("cut.png", None, "cut.png: is a damaged or truncated PNG file"),
        ("empty.jpg", b"", "empty.jpg: is empty (0 bytes)"),
    ],
)
def test_unusable_files_are_refused_naming_them(client, tmp_path, name, payload, expected):
    good = write_stack(tmp_path, 2)
    bad = tmp_path / "bad"
    bad.write_bytes(good[1].read_bytes()[:200] if payload is None else payload)
    response = post(client, [good[0], bad], names=["exposure0.png", name])
    assert response.status_code == 422
    assert response.get_json()["error"].startswith(expected)


def test_images_of_different_sizes_are_refused_with_user_names(client, temp_root, tmp_path):
    first = write_stack(tmp_path / "a", 1, names=["wide.png"])[0]
    second = write_stack(tmp_path / "b", 2, size=(60, 80), names=["x.png", "small.png"])[1]
    response = post(client, [first, second])
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error == (
        "small.png: is 80x60 but wide.png is 96x64; all frames of a stack must have one size"
    )
    assert str(temp_root) not in error


def test_bad_options_are_refused(client, tmp_path):
    paths = write_stack(tmp_path, 2)
    response = post(client, paths, strategy="average")
    assert (
        response.status_code == 400 and "unknown strategy 'average'" in response.get_json()["error"]
    )
    response = post(client, paths, align="maybe")
    assert response.status_code == 400 and "align must be 1 or 0" in response.get_json()["error"]
    response = post(client, paths, method="magic")
    assert response.status_code == 400
    assert "unknown method 'magic'; known: textmef," in response.get_json()["error"]


def test_the_page_offers_every_registered_method(client, monkeypatch):
    from textmef.methods import list_methods

    monkeypatch.setattr("textmef.baselines.enfuse.enfuse_available", lambda *a, **k: False)
    page = client.get("/").get_data(as_text=True)
    for name in list_methods():
        assert f'<option value="{name}"' in page
    enfuse = page[page.index('<option value="enfuse"') :]
    assert enfuse.index("disabled") < enfuse.index("</option>")


def align_checkbox(html: str) -> str:
    start = html.index('<input id="align"')
    return html[start : html.index(">", start)]


def fake_align_module(fail: bool = False) -> types.ModuleType:
    """A stand-in for textmef.align: crops 2 pixels off every side and names each frame."""
    module = types.ModuleType("textmef.align")
    module.__spec__ = importlib.machinery.ModuleSpec("textmef.align", None)

    def align_frames(frames, reference_index=0):
        if fail:
            raise InputError(None, "could not align the frames: too little texture")
        motions = [
            SimpleNamespace(describe=lambda rank=rank: f"frame {rank}: shift 0,0")
            for rank in range(len(frames))
        ]
        return SimpleNamespace(frames=[f[2:-2, 2:-2] for f in frames], motions=motions)

    module.align_frames = align_frames
    return module


def test_align_uses_textmef_align_when_it_is_installed(client, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "textmef.align", fake_align_module())
    assert "disabled" not in align_checkbox(client.get("/").get_data(as_text=True))
    paths = write_stack(tmp_path, 3)
    response = post(client, [paths[2], paths[0], paths[1]], align="1")
    assert response.status_code == 200, response.get_json()
    meta = response.get_json()
    assert meta["align"] is True and (meta["width"], meta["height"]) == (92, 60)
    # Motions come back in upload order: the brightest upload ranked last (2).
    assert meta["motions"] == ["frame 2: shift 0,0", "frame 0: shift 0,0", "frame 1: shift 0,0"]

    monkeypatch.setitem(sys.modules, "textmef.align", fake_align_module(fail=True))
    response = post(client, paths, align="1")
    assert response.status_code == 422
    assert response.get_json()["error"] == "could not align the frames: too little texture"


def test_unknown_results_are_404_json(client):
    for url in (
        "/api/result/nope",
        "/api/result/nope/fused.png",
        "/api/result/nope/preview.jpg",
        "/api/elsewhere",
    ):
        response = client.get(url)
        assert response.status_code == 404 and "error" in response.get_json()


def result_bytes(client, meta) -> int:
    """What the server budgets for a result: its PNG and JPEG previews."""
    urls = [meta["download_url"], meta["preview_url"]] + [i["preview_url"] for i in meta["inputs"]]
    return sum(len(client.get(url).data) for url in urls)


def test_results_are_kept_within_their_byte_budget_downloaded_first_out(make_client, tmp_path):
    paths = write_stack(tmp_path, 2)
    probe = make_client()
    size = result_bytes(probe, post(probe, paths).get_json())  # the same inputs: same size
    client = make_client(max_result_mb=2.5 * size / (1024 * 1024))  # room for 2
    ids = [post(client, paths).get_json()["id"] for _ in range(3)]
    assert client.get(f"/api/result/{ids[0]}/fused.png").status_code == 404  # the oldest
    error = client.get(f"/api/result/{ids[0]}").get_json()["error"]
    assert "fuse the photos again" in error and "--max-result-mb" in error
    for _ in range(2):  # a download does not remove it: it may be downloaded again
        assert client.get(f"/api/result/{ids[1]}/fused.png").status_code == 200
    ids.append(post(client, paths).get_json()["id"])
    # ids[1] was downloaded, so it made room, although ids[2] is older than ids[3].
    assert client.get(f"/api/result/{ids[1]}").status_code == 404
    for rid in ids[2:]:
        assert client.get(f"/api/result/{rid}/fused.png").status_code == 200
    assert client.get(f"/api/result/{ids[2]}/input/5.jpg").status_code == 404
    health = client.get("/healthz").get_json()
    assert health["results"] == 2 and health["result_bytes"] == 2 * size


def fake_result(nbytes: int) -> FusedResult:
    return FusedResult(meta={}, png=b"p" * (nbytes - 2), preview=b"j", input_previews=(b"i",))


def test_result_store_expires_and_makes_room_by_its_rule():
    now = [0.0]
    store = ResultStore(100, ttl_s=60, clock=lambda: now[0])
    a, b, c, d = (fake_result(40) for _ in range(4))
    store.put("a", a)
    now[0] = 1
    store.put("b", b)
    store.mark_downloaded("b")
    now[0] = 2
    store.put("c", c)  # 120 bytes: "b", downloaded, goes although "a" is older
    assert (store.get("a"), store.get("b"), store.get("c")) == (a, None, c)
    store.put("d", d)  # nothing downloaded: the oldest, "a", goes
    assert (store.get("a"), store.get("c"), store.get("d")) == (None, c, d)
    assert store.stats() == (2, 80)
    now[0] = 61.5  # "c" (made at 2) is 59.5 s old, "d" too: both still there
    assert len(store) == 2
    now[0] = 62
    assert (store.get("c"), store.get("d"), store.stats()) == (None, None, (0, 0))
    huge = fake_result(500)  # over the whole budget: kept alone, so its user gets it
    store.put("c", c)
    store.put("huge", huge)
    assert (store.get("c"), store.get("huge"), store.stats()) == (None, huge, (1, 500))
    store.put("huge", fake_result(30))  # the same key again replaces it
    assert store.stats() == (1, 30)
    with pytest.raises(ValueError):
        ResultStore(0, 60)


def wait_until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_full_queue_answers_503_with_retry_after(model, temp_root, tmp_path, monkeypatch):
    gate = threading.Event()
    real_fuse = web_app._fuse

    def held_fuse(*args):
        assert gate.wait(30), "the test never opened the gate"
        return real_fuse(*args)

    monkeypatch.setattr(web_app, "_fuse", held_fuse)
    app = create_app(model, temp_root=temp_root, max_queue=1)
    app.testing = True
    paths = write_stack(tmp_path, 2)
    answers: dict[int, object] = {}

    def fuse_in_thread(n):
        answers[n] = post(app.test_client(), paths)

    first = threading.Thread(target=fuse_in_thread, args=(1,))
    first.start()
    client = app.test_client()
    wait_until(lambda: client.get("/healthz").get_json()["workers_busy"] == 1, "a busy worker")
    second = threading.Thread(target=fuse_in_thread, args=(2,))
    second.start()
    health = wait_until(
        lambda: (h := client.get("/healthz").get_json())["queued"] == 1 and h, "a queued job"
    )
    assert (health["workers"], health["max_queue"], health["busy"]) == (1, 1, True)
    assert client.get("/").status_code == 200  # the page does not wait for fusions

    refused = post(client, paths)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.get_json()["error"]
    assert "server is busy" in error and "--max-queue" in error
    assert f"try again in {refused.headers['Retry-After']} s" in error

    gate.set()
    for thread in (first, second):
        thread.join(60)
        assert not thread.is_alive()
    metas = [answers[n].get_json() for n in (1, 2)]
    assert [answers[n].status_code for n in (1, 2)] == [200, 200], metas
    assert metas[1]["queue_seconds"] > 0
    for meta in metas:
        assert client.get(meta["download_url"]).status_code == 200
    health = client.get("/healthz").get_json()
    assert (health["queued"], health["workers_busy"], health["results"]) == (0, 0, 2)
    assert list(temp_root.iterdir()) == []  # every request's folder is gone
    app.extensions[web_app.FUSION_QUEUE_KEY].close()


def test_an_unexpected_failure_in_the_worker_is_a_500_json(model, temp_root, tmp_path, monkeypatch):
    real_fuse = web_app._fuse
    calls = []

    def failing_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real_fuse(*args)

    monkeypatch.setattr(web_app, "_fuse", failing_once)
    client = create_app(model, temp_root=temp_root).test_client()  # not testing: no propagation
    paths = write_stack(tmp_path, 2)
    response = post(client, paths)
    assert response.status_code == 500
    assert response.get_json()["error"].startswith(
        "fusion failed unexpectedly (RuntimeError: boom)"
    )
    assert list(temp_root.iterdir()) == []
    assert post(client, paths).status_code == 200  # the worker goes on


def test_fusion_queue_runs_jobs_in_order_and_closes():
    with pytest.raises(ValueError):
        FusionQueue(workers=0)
    queue = FusionQueue(workers=1, max_queue=2)
    gate = threading.Event()
    order = []
    running = queue.submit(lambda: gate.wait(30) and order.append("a") or "A")
    wait_until(lambda: queue.stats()["workers_busy"] == 1, "the first job to start")
    waiting = [queue.submit(lambda n=n: order.append(n) or n) for n in ("b", "c")]
    assert queue.stats() == {"queued": 2, "workers_busy": 1, "workers": 1, "max_queue": 2}
    with pytest.raises(QueueFullError) as full:
        queue.submit(lambda: None)
    assert full.value.waiting == 2 and full.value.retry_after >= 1
    gate.set()
    assert [running.result(), *(job.result() for job in waiting)] == ["A", "b", "c"]
    assert order == ["a", "b", "c"]
    assert waiting[0].queue_seconds > 0 and waiting[1].started >= waiting[0].finished

    gate.clear()
    blocked = queue.submit(lambda: gate.wait(30))
    wait_until(lambda: queue.stats()["workers_busy"] == 1, "the blocking job to start")
    cancelled = queue.submit(lambda: "never")
    threading.Timer(0.2, gate.set).start()
    queue.close(timeout=30)
    with pytest.raises(QueueClosedError):
        cancelled.result()
    assert blocked.result() is True
    with pytest.raises(QueueClosedError):
        queue.submit(lambda: None)
    assert not any(t.is_alive() for t in queue._threads)


class WriteRecorder:
    """Every file opened for writing while recording, from Python's audit events.

    Audit hooks cannot be removed, so one hook is installed per process and switched on
    and off; it only looks at ``open`` events.
    """

    installed: WriteRecorder | None = None

    def __init__(self) -> None:
        self.paths: list[str] | None = None
        sys.addaudithook(self._hook)

    @classmethod
    def get(cls) -> WriteRecorder:
        if cls.installed is None:
            cls.installed = cls()
        return cls.installed

    def _hook(self, event: str, args: tuple) -> None:
        if self.paths is None or event != "open":
            return
        path, mode, flags = args
        if not isinstance(path, (str, bytes, os.PathLike)):
            return  # an already open descriptor
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND)
        )
        if writes:
            self.paths.append(os.fsdecode(path))


def test_a_request_writes_only_inside_the_temp_root_and_leaves_nothing(
    client, temp_root, tmp_path, monkeypatch
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # Noisy 16-bit frames, each over werkzeug's 500 KiB in-memory threshold, so the upload
    # is spooled to disk.
    noise = np.random.default_rng(1).random((300, 320, 3), dtype=np.float32)
    (tmp_path / "in").mkdir()
    paths = [
        io.write_image(tmp_path / "in" / f"exposure{i}.png", noise * level, 16)
        for i, level in enumerate((0.2, 1.0))
    ]
    assert min(p.stat().st_size for p in paths) > 520 * 1024
    post(client, write_stack(tmp_path / "warm", 2))  # first runs may write caches, not ours
    recorder = WriteRecorder.get()
    recorder.paths = []
    try:
        response = post(client, paths, strategy="extremes")
        failed = post(
            client, [paths[0], tmp_path / "in" / "exposure1.png"], names=["a.png", "b.bmp"]
        )
    finally:
        written, recorder.paths = recorder.paths, None
    assert response.status_code == 200, response.get_json()
    assert failed.status_code == 422
    assert written, "the recorder saw no writes; the upload should have been saved"
    root = str(temp_root.resolve())
    outside = [p for p in written if not str(Path(p).resolve()).startswith(root + os.sep)]
    assert outside == []
    assert any(Path(p).suffix == ".png" for p in written)  # uploads and the download
    assert list(temp_root.iterdir()) == []
    assert Path.cwd() == cwd and list(cwd.iterdir()) == []
    assert decode_png(client.get(response.get_json()["download_url"]).data).dtype == np.uint16


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textmef")
    web_cli.add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_serve_listens_on_localhost_by_default():
    args = serve_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert (args.max_upload_mb, args.max_pixels, args.max_files) == (200, 40_000_000, 9)
    assert (args.max_queue, args.max_result_mb, args.result_ttl) == (8, 512, 3600)
    assert args.weights is None and args.device == "cpu" and args.run is web_cli._cmd_serve
    for bad in (
        ["--max-files", "1"],
        ["--port", "70000"],
        ["--max-upload-mb", "0"],
        ["--max-queue", "0"],
        ["--max-result-mb", "0"],
        ["--result-ttl", "-1"],
    ):
        with pytest.raises(SystemExit):
            serve_parser().parse_args(["serve", *bad])


def test_serve_builds_the_app_without_serving(monkeypatch, capsys):
    seen = {}

    def fake_serve(server):
        seen["server"] = server
        seen["tempdir"] = Path(tempfile.gettempdir())
        assert seen["tempdir"].is_dir() and seen["tempdir"].name.startswith("textmef-serve-")

    monkeypatch.setattr(web_cli, "serve_forever", fake_serve)
    args = serve_parser().parse_args(
        ["serve", "--port", "0", "--threads", "1", "--max-files", "4", "--max-queue", "3"]
    )
    assert web_cli._cmd_serve(args) == 0
    server = seen["server"]
    assert server.host == "127.0.0.1" and server.port > 0
    # A thread for each fusion the queue admits (3 waiting + 1 running), and 4 spare.
    assert server.threads == 3 + 1 + 4
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{server.port}/" in out and "warning" not in out
    assert not seen["tempdir"].exists()  # removed at exit
    assert Path(tempfile.gettempdir()) != seen["tempdir"]


def test_serve_answers_http_until_stopped(monkeypatch, tmp_path):
    answers = {}

    def serve_briefly(server):
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            with urllib.request.urlopen(server.url + "healthz", timeout=10) as response:
                answers["health"] = json.load(response)
            with urllib.request.urlopen(server.url, timeout=10) as response:
                answers["page"] = response.read().decode()
        finally:
            server.stop()
            thread.join(10)
        answers["stopped"] = not thread.is_alive()

    monkeypatch.setattr(web_cli, "serve_forever", serve_briefly)
    args = serve_parser().parse_args(["serve", "--port", "0", "--threads", "1"])
    assert web_cli._cmd_serve(args) == 0
    assert answers["health"]["status"] == "ok"
    assert 'id="files"' in answers["page"] and answers["stopped"]


@pytest.mark.skipif(sys.platform == "win32", reason="waitress wakes its loop by a pipe on POSIX")
def test_stop_ends_the_server_even_when_its_wake_up_pipe_is_gone(model, temp_root):
    app = create_app(model, temp_root=temp_root)
    server = web_cli.make_server(app, "127.0.0.1", 0, max_upload_mb=1)
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    with urllib.request.urlopen(server.url + "healthz", timeout=10) as response:
        assert json.load(response)["status"] == "ok"
    # What a rare shutdown in tests/test_web_load.py met: the trigger's write end closed.
    os.close(server._server.trigger.trigger)
    server.stop()
    serving.join(10)
    assert not serving.is_alive()


def test_a_port_in_use_is_a_clear_error(model, temp_root):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(model, temp_root=temp_root)
        with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{port}"):
            web_cli.make_server(app, "127.0.0.1", port, max_upload_mb=1)


SERVE_SCRIPT = """
import argparse, sys
from textmef.web.cli import add_serve_parser
parser = argparse.ArgumentParser(prog="textmef")
add_serve_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.run(args))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_sigterm_stops_the_server_and_removes_its_temp_root(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, "serve", "--port", "0", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline() if ready else ""
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, f"no URL printed: {line!r}"
        with urllib.request.urlopen(url.group(0) + "healthz", timeout=10) as response:
            assert json.load(response)["status"] == "ok"
        roots = list(tmp_path.glob("textmef-serve-*"))
        assert len(roots) == 1 and roots[0].is_dir()
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out
    assert "stopped" in out
    assert list(tmp_path.iterdir()) == []
