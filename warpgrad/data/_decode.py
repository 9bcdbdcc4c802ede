"""Reading images, zips and pickles with errors that name the file (never a bare traceback)."""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from .errors import DataError

_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, TypeError)
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
                  KeyError, ValueError, TypeError, OSError)


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, where: str,
                 mode: str, size: int | None) -> np.ndarray:
    """Decode encoded image bytes to a uint8 array (``[H, W]`` for ``"L"``, ``[H, W, 3]``
    for ``"RGB"``), resized to ``size x size`` if given; ``where`` names the source."""
    from PIL import Image

    if isinstance(data, np.ndarray):
        data = data.tobytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = img.convert(mode)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(img)
    except (*_IMAGE_ERRORS, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {where}: {exc} (corrupt or truncated?)") from exc


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DataError(f"cannot open zip file {path}: {exc} (corrupt or truncated?)") from exc


def read_zip_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError, KeyError) as exc:
        raise DataError(f"cannot read {name} from zip file {path}: {exc} "
                        f"(corrupt or truncated?)") from exc


# -- pickles ------------------------------------------------------------------------------------
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                  "numpy.core.numeric", "numpy._core.numeric"}
_NUMPY_NAMES = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}
_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "slice",
                  "complex", "int", "float", "str", "object"}


def _safe_class(module: str, name: str) -> bool:
    """The pickles we read hold only numpy arrays and plain containers."""
    if module in _NUMPY_MODULES:
        return name in _NUMPY_NAMES
    if module in ("builtins", "__builtin__"):
        return name in _SAFE_BUILTINS
    return (module, name) in {("collections", "OrderedDict"), ("_codecs", "encode"),
                              ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not _safe_class(module, name):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays "
                                         f"and plain containers are expected)")
        return super().find_class(module, name)


def load_pickle(path: Path) -> Any:
    """Unpickle a dataset file (numpy arrays and containers only); DataError names the file."""
    # latin1: pickles written by Python 2
    return _unpickle(path, ("ASCII", "latin1"),
                     lambda f, encoding: _SafeUnpickler(f, encoding=encoding))


def _unpickle(path: Path, encodings: tuple[str, ...],
              unpickler: Callable[[BinaryIO, str], pickle.Unpickler],
              before: Callable[[], None] = lambda: None) -> Any:
    """``unpickler(file, encoding).load()`` with each encoding in turn until the strings
    decode (``before()`` runs ahead of each try); any failure is a DataError naming the file."""
    for encoding in encodings:
        try:
            before()
            with open(path, "rb") as f:
                return unpickler(f, encoding).load()
        except UnicodeDecodeError:
            continue
        except DataError:
            raise
        except _PICKLE_ERRORS as exc:
            raise DataError(f"cannot read pickle {path}: {type(exc).__name__}: {exc} "
                            f"(corrupt or truncated?)") from exc
    raise DataError(f"cannot read pickle {path}: undecodable strings")


def _is_blob(v: Any, depth: int = 0) -> bool:
    if isinstance(v, (bytes, bytearray, str)):
        return len(v) > 256
    if isinstance(v, np.ndarray):
        return v.nbytes > 256
    if depth < 2 and isinstance(v, (tuple, list)):
        return any(_is_blob(x, depth + 1) for x in v)
    return False


class _StreamingUnpickler(pickle._Unpickler):  # the pure-Python unpickler: hookable
    """Unpickles a top-level list, handing each item to ``sink`` instead of keeping it.

    Items are dropped (and large memo entries forgotten) as soon as they are consumed, so a
    list of N encoded images never needs to be in memory at once.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, sink, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._sink = sink
        self._target: list | None = None

    def find_class(self, module: str, name: str) -> Any:
        if not _safe_class(module, name):
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)

    def _consume(self, items: list) -> None:
        for item in items:
            self._sink(item)
        for key in [k for k, v in self.memo.items() if _is_blob(v)]:
            del self.memo[key]

    def load_empty_list(self) -> None:
        lst: list = []
        if self._target is None and not self.stack and not self.metastack:
            self._target = lst
        self.append(lst)

    dispatch[pickle.EMPTY_LIST[0]] = load_empty_list

    def load_append(self) -> None:
        value = self.stack.pop()
        if self.stack[-1] is self._target:
            self._consume([value])
        else:
            self.stack[-1].append(value)

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        if self.stack[-1] is self._target:
            self._consume(items)
        else:
            self.stack[-1].extend(items)

    dispatch[pickle.APPENDS[0]] = load_appends


def stream_pickled_list(path: Path, sink, start) -> Any:
    """Call ``sink(item)`` for each item of the pickled list in ``path``, in order.

    ``start()`` is called before each attempt (a Python 2 pickle is read twice: first as
    ASCII, then with ``encoding="bytes"``). Returns the (emptied) list. DataError names the
    file.
    """
    return _unpickle(path, ("ASCII", "bytes"),
                     lambda f, encoding: _StreamingUnpickler(f, sink, encoding), start)
