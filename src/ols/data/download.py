"""``--download``: CIFAR-10, CIFAR-100 and CIFAR-10H fetched into ``--data-dir``, checked, never half-written.

Each file downloads to ``NAME.part`` beside its final place. An interrupted download resumes
where it stopped (an HTTP ``Range`` request; a server that ignores it sends the whole file
again); a finished one is checked against its published md5 (the CIFAR archives: the Toronto
page's, as torchvision's ``cifar.py`` records them) and only then renamed into place, so a file
that is there is whole. An archive is unpacked into a temporary folder that is then renamed, so
``cifar-10-batches-py`` is there whole or not at all. CIFAR-10H has no published checksum: its
array is checked instead (10,000 rows of 10 probabilities). ``OLS_DOWNLOAD_URL`` replaces the
servers' address (a mirror, or the tests' local server).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional


@dataclass(frozen=True)
class Remote:
    """A file to fetch: its address, its name, its md5 (``None``: none published), what it unpacks to."""

    url: str
    file: str
    md5: Optional[str]
    folder: Optional[str] = None  # an archive's top folder, once unpacked; None: the file itself is used


REMOTES = {
    "cifar10": Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": Remote("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                       "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
    "cifar10h": Remote("https://github.com/jcpeterson/cifar-10h/raw/master/data/cifar10h-probs.npy",
                       "cifar10h-probs.npy", None),
}
CHUNK = 1 << 20


def _url(remote: Remote) -> str:
    base = os.environ.get("OLS_DOWNLOAD_URL")
    return f"{base.rstrip('/')}/{remote.file}" if base else remote.url


def md5_of(path: Path) -> str:
    """The hex md5 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.md5()  # noqa: S324 - the published checksums are md5
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(remote: Remote, folder: Path, verbose: bool = True) -> Path:
    """``folder/remote.file``, downloaded (or finished) and checked; one line on any failure."""
    final, part = folder / remote.file, folder / (remote.file + ".part")
    if final.is_file():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(_url(remote), headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = have and response.status == 206
            if verbose:
                what = f"resuming at {have:,} bytes" if resumed else "downloading"
                print(f"{remote.file}: {what} from {_url(remote)}", file=sys.stderr, flush=True)
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the range starts at the end: the file is complete already
            pass
        else:
            raise ValueError(f"{_url(remote)}: the server answered {err.code} {err.reason}; try again "
                             f"later, or download {remote.file} yourself into {folder}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ValueError(f"{_url(remote)}: cannot download ({reason}); run again to resume from "
                         f"{part.stat().st_size if part.is_file() else 0:,} bytes, or download {remote.file} "
                         f"yourself into {folder}") from None
    if remote.md5 is not None:
        got = md5_of(part)
        if got != remote.md5:
            part.unlink()
            raise ValueError(f"{remote.file}: its md5 is {got}, not the published {remote.md5}: the "
                             "download is damaged (deleted); run again to fetch it afresh")
    os.replace(part, final)
    return final


def unpack(archive: Path, folder: Path, top: str) -> Path:
    """``folder/top`` from a ``.tar.gz``: unpacked beside it, then renamed into place whole."""
    target = folder / top
    if target.is_dir():
        return target
    with tempfile.TemporaryDirectory(dir=folder, prefix=".unpack-") as tmp:
        try:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():  # nothing may land outside the folder, nor be a link
                    name = Path(member.name)
                    if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                        raise ValueError(f"{archive}: member {member.name!r} would unpack outside {folder}")
                tar.extractall(tmp)  # noqa: S202 - every member checked above
        except tarfile.TarError as err:
            raise ValueError(f"{archive}: not a readable archive ({err}); delete it and run again") from None
        if not (Path(tmp) / top).is_dir():
            raise ValueError(f"{archive}: holds no {top}/ folder; delete it and run again")
        os.replace(Path(tmp) / top, target)
    return target


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (where the platform has one): other processes wait."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; parallel downloads there would share the .part file
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_download(name: str, data_dir: Optional[str]) -> None:
    """One line when ``--download`` cannot apply: a dataset ols does not fetch, or no ``--data-dir``."""
    if name not in ("cifar10", "cifar100"):
        raise ValueError(f"--download fetches cifar10 and cifar100; {name} is not downloaded by ols "
                         "(Fashion-MNIST: apt-get install dataset-fashion-mnist; the others: see the README)")
    if not data_dir:
        raise ValueError("--download needs --data-dir: the folder to put the dataset in")


def download_dataset(name: str, data_dir: Optional[str], verbose: bool = True) -> Path:
    """Dataset ``name``'s folder in ``data_dir``, fetched and unpacked first if it is not there."""
    check_download(name, data_dir)
    remote, folder = REMOTES[name], Path(data_dir)
    if (folder / remote.folder).is_dir():
        return folder / remote.folder
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / f".{name}.download-lock"):  # a sweep's parallel runs fetch it once
        archive = fetch(remote, folder, verbose)
        return unpack(archive, folder, remote.folder)


def download_human_probs(path: str, verbose: bool = True) -> Path:
    """CIFAR-10H's ``cifar10h-probs.npy`` at ``path``, fetched if missing (``load_human_probs`` checks it)."""
    target = Path(path)
    if target.is_file():
        return target
    remote = REMOTES["cifar10h"]
    return fetch(Remote(remote.url, target.name, None), target.parent, verbose)
