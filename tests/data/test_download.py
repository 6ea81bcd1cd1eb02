"""``--download`` against a local HTTP server: fetch, checksum, resume, unpack, and the refusals."""

import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

from ols.data import download, load_dataset
from ols.data.download import Remote, download_dataset, download_human_probs, fetch


def cifar_batch(rng, n):
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    return {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), b"labels": labels}


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder, honouring ``Range: bytes=N-`` (SimpleHTTPRequestHandler ignores it)."""

    requests: list = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append((self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        try:
            body = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        wanted = self.headers.get("Range")
        start = int(wanted.split("=")[1].rstrip("-")) if wanted else 0
        if start >= len(body) and wanted:
            self.send_error(416)
            return
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local server of ``tmp_path/served``; ``OLS_DOWNLOAD_URL`` points at it."""
    served = tmp_path / "served"
    served.mkdir()
    _Handler.requests = []
    handler = lambda *a, **k: _Handler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OLS_DOWNLOAD_URL", f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield served
    httpd.shutdown()


def cifar10_archive(path):
    """A small CIFAR-10 archive in the real layout (5 training batches of 4, a test batch of 3)."""
    rng = np.random.default_rng(0)
    batches = [cifar_batch(rng, 4) for _ in range(5)] + [cifar_batch(rng, 3)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in [*zip(names, batches), ("batches.meta", {b"label_names": [b"c"] * 10})]:
            buf = io.BytesIO()
            pickle.dump(batch, buf, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    return batches


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324


@pytest.fixture
def cifar_remote(server, monkeypatch):
    batches = cifar10_archive(server / "cifar-10-python.tar.gz")
    real = download.REMOTES["cifar10"]
    remote = Remote(real.url, real.file, md5(server / real.file), real.folder)
    monkeypatch.setitem(download.REMOTES, "cifar10", remote)
    return server, batches


def test_download_fetches_checks_and_unpacks_a_readable_dataset(tmp_path, cifar_remote, capsys):
    server, batches = cifar_remote
    data_dir = tmp_path / "data"
    folder = download_dataset("cifar10", str(data_dir))
    assert folder == data_dir / "cifar-10-batches-py"
    split = load_dataset("cifar10", str(data_dir))
    assert split.train_y.tolist() == sum((b[b"labels"] for b in batches[:5]), [])
    assert torch.equal(split.test_x.reshape(3, -1), torch.from_numpy(batches[5][b"data"]))
    assert "downloading from http://127.0.0.1" in capsys.readouterr().err
    assert not list(data_dir.glob("*.part")) and not list(data_dir.glob(".unpack-*"))
    # there already: no second request
    count = len(_Handler.requests)
    download_dataset("cifar10", str(data_dir))
    assert len(_Handler.requests) == count


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path, cifar_remote):
    server, _ = cifar_remote
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    whole = (server / "cifar-10-python.tar.gz").read_bytes()
    (data_dir / "cifar-10-python.tar.gz.part").write_bytes(whole[:100])  # what an interrupted run left
    download_dataset("cifar10", str(data_dir))
    assert _Handler.requests[-1][1] == "bytes=100-"
    assert (data_dir / "cifar-10-python.tar.gz").read_bytes() == whole


def test_a_damaged_download_is_deleted_and_named(tmp_path, server, monkeypatch):
    (server / "x.bin").write_bytes(b"not what was published")
    remote = Remote("unused", "x.bin", "0" * 32)
    damaged = r"x\.bin: its md5 is [0-9a-f]{32}, not the published 0{32}.*deleted"
    with pytest.raises(ValueError, match=damaged):
        fetch(remote, tmp_path / "d", verbose=False)
    assert not (tmp_path / "d" / "x.bin").exists() and not (tmp_path / "d" / "x.bin.part").exists()


def test_server_errors_and_unreachable_hosts_are_one_line(tmp_path, server, monkeypatch):
    with pytest.raises(ValueError, match=r"missing\.bin: the server answered 404.*yourself into"):
        fetch(Remote("unused", "missing.bin", None), tmp_path, verbose=False)
    monkeypatch.setenv("OLS_DOWNLOAD_URL", "http://127.0.0.1:9/")  # the discard port: refused
    with pytest.raises(ValueError, match=r"cannot download .*run again to resume from 0 bytes"):
        fetch(Remote("unused", "y.bin", None), tmp_path, verbose=False)


def test_an_archive_escaping_its_folder_is_refused(tmp_path, server, monkeypatch):
    evil = server / "cifar-10-python.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    monkeypatch.setitem(download.REMOTES, "cifar10", Remote("u", evil.name, md5(evil), "cifar-10-batches-py"))
    with pytest.raises(ValueError, match="would unpack outside"):
        download_dataset("cifar10", str(tmp_path / "data"))
    assert not (tmp_path / "outside").exists() and not (tmp_path / "data" / "cifar-10-batches-py").exists()


def test_download_refuses_what_it_cannot_fetch():
    with pytest.raises(ValueError, match="fetches cifar10 and cifar100; fashion_mnist is not"):
        download_dataset("fashion_mnist", "/tmp")
    with pytest.raises(ValueError, match="--download needs --data-dir"):
        download_dataset("cifar10", None)


def test_human_probs_are_fetched_to_the_path_given(tmp_path, server):
    probs = np.full((10000, 10), 0.1, dtype=np.float32)
    np.save(server / "cifar10h-probs.npy", probs)
    got = download_human_probs(str(tmp_path / "labels" / "cifar10h-probs.npy"), verbose=False)
    assert np.array_equal(np.load(got), probs)


def test_ols_train_download_flag(tmp_path, cifar_remote, capsys):
    from ols.cli import main

    data_dir, out = tmp_path / "data", tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--download", "--data-dir", str(data_dir),
                 "--out", str(out)])
    assert code == 2 and "fetches cifar10 and cifar100; digits" in capsys.readouterr().err
    assert not out.exists()
    assert 0 == main(["train", "--dataset", "cifar10", "--download", "--data-dir", str(data_dir),
                      "--model", "cnn", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                      "--out", str(out), "--no-progress"])
    assert (data_dir / "cifar-10-batches-py" / "test_batch").is_file()
    assert (out / "summary.json").is_file()
