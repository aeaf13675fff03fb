"""Downloads against a real HTTP server on 127.0.0.1: they end (deadline, minimum rate, per-read
timeout), say why, and leave nothing behind; local write errors name the path.

Every server loop is bounded (a byte count, a stop event set at teardown, a socket timeout), so
the server threads end by themselves; each test takes seconds."""

import errno
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from smallsample.data import omniglot
from smallsample.data.files import (
    DEADLINE_ENV,
    MIN_RATE,
    MIN_RATE_ENV,
    DataError,
    atomic_write_bytes,
    default_deadline,
    download,
)

REPO = Path(__file__).resolve().parents[1]
TRICKLE_GAP = 0.2  # seconds between the trickling server's bytes
SERVER_PATIENCE = 10.0  # no handler lives longer than this


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers from ``server.routes``: path -> (behaviour, body)."""

    timeout = SERVER_PATIENCE  # socket timeout on the server side too

    def log_message(self, *args):
        pass

    def _start(self, length):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()

    def do_GET(self):  # noqa: N802 (http.server's name)
        behaviour, body = self.server.routes.get(self.path, ("missing", b""))
        stop = self.server.stop
        try:
            if behaviour == "missing":
                self.send_error(404, "File not found")
            elif behaviour == "ok":
                self._start(len(body))
                self.wfile.write(body)
            elif behaviour == "trickle":  # one byte every TRICKLE_GAP seconds
                self._start(len(body))
                for i in range(len(body)):
                    if stop.wait(TRICKLE_GAP):
                        return
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
            elif behaviour == "steady":  # 10 pieces, 0.05 s apart
                self._start(len(body))
                step = -(-len(body) // 10)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    self.wfile.flush()
                    if stop.wait(0.05):
                        return
            elif behaviour == "endless":  # no Content-Length, more than anyone asked for
                self._start(None)
                for _ in range(10_000):
                    if stop.is_set():
                        return
                    self.wfile.write(body)
            elif behaviour == "stall":  # a good start, then nothing
                self._start(len(body))
                self.wfile.write(body[:10])
                self.wfile.flush()
                stop.wait(SERVER_PATIENCE)
            elif behaviour == "silent":  # the request is read, no answer ever comes
                stop.wait(SERVER_PATIENCE)
        except OSError:  # the client gave up and closed: the handler ends
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads


@pytest.fixture
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes = {}
    httpd.stop = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(SERVER_PATIENCE)
    assert not thread.is_alive()


@pytest.fixture(autouse=True)
def _no_download_settings(monkeypatch):
    monkeypatch.delenv(DEADLINE_ENV, raising=False)
    monkeypatch.delenv(MIN_RATE_ENV, raising=False)


def _body(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _timed(fn):
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        fn()
    return time.monotonic() - start, str(info.value)


def test_good_download(server, tmp_path):
    httpd, url = server
    body = _body(300_000)
    httpd.routes["/a.bin"] = ("ok", body)
    dest = tmp_path / "data" / "a.bin"
    assert download(f"{url}/a.bin", dest, sha256=_sha(body), size=len(body)) == dest
    assert dest.read_bytes() == body
    assert _leftovers(dest.parent) == ["a.bin"]


def test_slow_but_steady_download_is_not_cut(server, tmp_path):
    # ~5 kB/s in ten pieces: above a 1 kB/s floor checked after 0.1 s, so it must complete.
    httpd, url = server
    body = _body(2_500, seed=1)
    httpd.routes["/s.bin"] = ("steady", body)
    dest = tmp_path / "s.bin"
    download(f"{url}/s.bin", dest, sha256=_sha(body), min_rate=1_000, grace=0.1, deadline=5)
    assert dest.read_bytes() == body and _leftovers(tmp_path) == ["s.bin"]


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    httpd, url = server
    body = _body(50_000, seed=2)
    httpd.routes["/c.bin"] = ("ok", body)
    dest = tmp_path / "data" / "c.bin"
    (dest.parent).mkdir()
    with pytest.raises(DataError, match=f"has sha256 {_sha(body)}, expected {'ab' * 32}"):
        download(f"{url}/c.bin", dest, sha256="ab" * 32)
    assert _leftovers(dest.parent) == []


def test_http_404_leaves_nothing(server, tmp_path):
    _, url = server
    dest = tmp_path / "d.bin"
    elapsed, message = _timed(lambda: download(f"{url}/nowhere.bin", dest, sha256="0" * 64))
    assert "HTTP Error 404" in message and f"{url}/nowhere.bin" in message
    assert f"place it at {dest}" in message
    assert elapsed < 5 and _leftovers(tmp_path) == []


def test_connection_refused_leaves_nothing(tmp_path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "r.bin"
    elapsed, message = _timed(
        lambda: download(f"http://127.0.0.1:{port}/r.bin", dest, sha256="0" * 64))
    assert "could not download" in message and "refused" in message.lower()
    assert elapsed < 5 and _leftovers(tmp_path) == []


def test_trickle_hits_the_deadline(server, tmp_path):
    httpd, url = server
    body = _body(1_000, seed=3)
    httpd.routes["/t.bin"] = ("trickle", body)
    dest = tmp_path / "t.bin"
    elapsed, message = _timed(lambda: download(f"{url}/t.bin", dest, sha256=_sha(body),
                                               deadline=2, min_rate=0))
    assert 2 <= elapsed < 4  # the deadline, not the 20 s per-read timeout, ended it
    assert "deadline of 2 s" in message and DEADLINE_ENV in message
    assert f"{url}/t.bin to {dest}" in message and f"place it at {dest}" in message
    received = int(message.split(" bytes received in ")[0].rsplit("(", 1)[1])
    assert 3 <= received <= 2 / TRICKLE_GAP + 1  # about one byte per gap arrived
    assert " bytes received in 2." in message
    assert _leftovers(tmp_path) == []


def test_trickle_falls_below_the_minimum_rate(server, tmp_path):
    httpd, url = server
    body = _body(1_000, seed=4)
    httpd.routes["/t.bin"] = ("trickle", body)
    dest = tmp_path / "t.bin"
    elapsed, message = _timed(lambda: download(f"{url}/t.bin", dest, sha256=_sha(body),
                                               min_rate=100, grace=1))
    assert 1 <= elapsed < 3  # the default deadline is 70 s: the rate rule ended it
    assert "below 100 bytes/s after 1 s" in message and MIN_RATE_ENV in message
    assert f"place it at {dest}" in message and _leftovers(tmp_path) == []


def test_stall_mid_transfer_ends_when_the_rate_falls_short(server, tmp_path):
    # Nothing arrives after the first 10 bytes: the wait for the next read is cut to the moment
    # the average falls below the floor, not the 20 s per-read timeout.
    httpd, url = server
    httpd.routes["/m.bin"] = ("stall", _body(1_000, seed=9))
    dest = tmp_path / "m.bin"
    elapsed, message = _timed(
        lambda: download(f"{url}/m.bin", dest, sha256="0" * 64, min_rate=5, grace=1))
    assert 2 <= elapsed < 4 and "below 5 bytes/s after 1 s" in message  # 10 bytes / 5 B/s = 2 s
    assert "(10 bytes received in 2." in message and _leftovers(tmp_path) == []


@pytest.mark.parametrize("limits, reason", [({"deadline": 1.5}, "deadline of 1.5 s"),
                                            ({"timeout": 1.0}, "timed out")])
def test_server_that_never_answers(server, tmp_path, limits, reason):
    httpd, url = server
    httpd.routes["/q.bin"] = ("silent", b"")
    dest = tmp_path / "q.bin"
    elapsed, message = _timed(lambda: download(f"{url}/q.bin", dest, sha256="0" * 64, **limits))
    assert elapsed < 4 and reason in message and "0 bytes received" in message
    assert _leftovers(tmp_path) == []


def test_server_that_sends_too_much(server, tmp_path):
    httpd, url = server
    httpd.routes["/e.bin"] = ("endless", _body(4096, seed=5))
    dest = tmp_path / "e.bin"
    elapsed, message = _timed(
        lambda: download(f"{url}/e.bin", dest, sha256="0" * 64, size=10_000))
    assert "more than the expected 10000 bytes" in message
    assert elapsed < 5 and _leftovers(tmp_path) == []


def test_deadline_from_the_environment_reaches_omniglot(server, tmp_path, monkeypatch):
    httpd, url = server
    name = "images_background_small1.zip"
    httpd.routes[f"/{name}"] = ("trickle", _body(1_000, seed=6))
    monkeypatch.setenv("SMALLSAMPLE_OMNIGLOT_URL", url + "/")
    monkeypatch.setenv(DEADLINE_ENV, "1.5")
    root = tmp_path / "data"
    elapsed, message = _timed(lambda: omniglot.locate(name, root))
    assert 1.5 <= elapsed < 4 and "deadline of 1.5 s" in message
    assert f"place it at {root / 'omniglot' / name}" in message
    assert _leftovers(root / "omniglot") == []


@pytest.mark.parametrize("value", ["soon", "-1", "inf"])
def test_a_bad_setting_is_named(tmp_path, monkeypatch, value):
    monkeypatch.setenv(DEADLINE_ENV, value)
    with pytest.raises(ValueError, match=f"{DEADLINE_ENV}='{value}' must be a finite number"):
        download("http://127.0.0.1:9/x", tmp_path / "x", sha256="0" * 64)
    with pytest.raises(ValueError, match="min_rate=-5 must be"):
        download("http://127.0.0.1:9/x", tmp_path / "x", sha256="0" * 64, min_rate=-5,
                 deadline=1)
    assert _leftovers(tmp_path) == []


def test_default_deadline_lets_the_minimum_rate_finish():
    size = 9_464_212  # images_background.zip
    assert default_deadline(size) == pytest.approx(60 + size / MIN_RATE)
    assert default_deadline(size) > size / MIN_RATE  # a transfer at the floor rate ends in time
    assert default_deadline(size, min_rate=0) == default_deadline(size)
    assert default_deadline(size, min_rate=50_000) == pytest.approx(60 + size / 50_000)
    assert default_deadline(None) == 600


# ------------------------------------------------------------ real processes: Ctrl-C, EFBIG
def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop(DEADLINE_ENV, None)
    env.pop(MIN_RATE_ENV, None)
    return env


_INTERRUPTED_CHILD = """
import sys
from pathlib import Path
from smallsample.data.files import download
download(sys.argv[1], Path(sys.argv[2]), sha256="0" * 64, deadline=60, min_rate=0)
"""


def test_ctrl_c_leaves_nothing(server, tmp_path):
    httpd, url = server
    httpd.routes["/k.bin"] = ("trickle", _body(1_000, seed=7))
    dest = tmp_path / "k.bin"
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_CHILD, f"{url}/k.bin", str(dest)],
                            env=_child_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        until = time.monotonic() + 30
        while not any(n.endswith(".part") for n in _leftovers(tmp_path)):
            assert proc.poll() is None and time.monotonic() < until, "the download never started"
            time.sleep(0.05)
        time.sleep(3 * TRICKLE_GAP)  # a few bytes in
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert _leftovers(tmp_path) == []


_SMALL_FILE_LIMIT_CHILD = """
import json, resource, signal, sys
from pathlib import Path
from smallsample.data.files import atomic_write_bytes, download
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
out = {}
for what, call in [
        ("write", lambda: atomic_write_bytes(Path(sys.argv[1]), b"x" * 100_000)),
        ("download", lambda: download(sys.argv[2], Path(sys.argv[3]), sha256=sys.argv[4]))]:
    try:
        call()
        out[what] = None
    except OSError as e:
        out[what] = [e.errno, str(e), type(e).__name__]
print(json.dumps(out))
"""


def test_write_errors_keep_their_errno_and_name_the_path(server, tmp_path):
    httpd, url = server
    body = _body(100_000, seed=8)
    httpd.routes["/big.bin"] = ("ok", body)
    written, fetched = tmp_path / "w" / "state.json", tmp_path / "d" / "big.bin"
    written.parent.mkdir()
    written.write_bytes(b"old")  # a failed write leaves the previous version in place
    proc = subprocess.run([sys.executable, "-c", _SMALL_FILE_LIMIT_CHILD, str(written),
                           f"{url}/big.bin", str(fetched), _sha(body)],
                          env=_child_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for what, path in [("write", written), ("download", fetched)]:
        assert out[what] is not None, f"{what} past RLIMIT_FSIZE did not fail"
        code, message, kind = out[what]
        assert code == errno.EFBIG and kind == "OSError", out[what]
        assert str(path) in message and os.strerror(errno.EFBIG) in message
    assert _leftovers(written.parent) == ["state.json"] and written.read_bytes() == b"old"
    assert _leftovers(fetched.parent) == []


def test_atomic_write_bytes_replaces_whole(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second" and _leftovers(path.parent) == ["f.bin"]


def test_atomic_write_bytes_names_a_folder_it_cannot_make(tmp_path):
    (tmp_path / "file").write_bytes(b"")  # a file where a folder should be
    with pytest.raises(OSError, match=f"could not write {tmp_path / 'file' / 'x.bin'}") as info:
        atomic_write_bytes(tmp_path / "file" / "x.bin", b"data")
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert _leftovers(tmp_path) == ["file"]
