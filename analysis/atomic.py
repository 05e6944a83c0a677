"""Write outputs (tables, figures) whole or not at all, and only when their content changed.

Every output is written to a temporary file in its own folder and ``os.replace``d into place, so a
reader (or a crash) never sees it half-written and a failure leaves the previous file as it was. An
output whose content did not change is not rewritten (its bytes and mtime stay): CSVs are compared
byte for byte, PNGs by their decoded pixels (the PNG bytes also depend on the zlib and libpng
versions). PNGs carry no software version or timestamp, so the same figure gives the same file.
"""
from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path

# savefig metadata per format: no software version, no timestamp (deterministic files)
_DETERMINISTIC_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def replace_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = _new_file_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _mark_current(path: Path) -> None:
    """An unchanged output is made as new as its inputs (its mtime only, git ignores mtimes), so that
    the workflow does not take it for out of date and run its job again on every invocation."""
    os.utime(path)


def _current_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_bytes_if_changed(path, data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly these bytes; True if written."""
    path = Path(path)
    if _current_bytes(path) == data:
        _mark_current(path)
        return False
    replace_bytes(path, data)
    return True


def write_text_if_changed(path, text: str, encoding: str = "utf-8") -> bool:
    """``write_bytes_if_changed`` for text (written as is: no newline translation)."""
    return write_bytes_if_changed(path, text.encode(encoding))


def write_csv(frame, path, **kwargs) -> bool:
    """``frame.to_csv(path, **kwargs)``, atomically and only when the bytes change; True if written."""
    encoding = kwargs.pop("encoding", None) or "utf-8"
    if kwargs.get("compression") not in (None, "infer") or str(path).endswith((".gz", ".bz2", ".xz", ".zip")):
        raise ValueError(f"{path}: write_csv writes plain CSV only")
    kwargs.pop("compression", None)
    return write_text_if_changed(path, frame.to_csv(None, **kwargs), encoding)


def _pixels(data: bytes):
    """Decoded RGBA pixels of an image (None when it cannot be decoded)."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size, image.convert("RGBA").tobytes()
    except ImportError:
        import matplotlib.image

        try:
            array = matplotlib.image.imread(io.BytesIO(data), format="png")
        except Exception:  # noqa: BLE001 - an unreadable old file is simply replaced
            return None
        return array.shape, array.tobytes()
    except Exception:  # noqa: BLE001 - an unreadable old file is simply replaced
        return None


def save_figure(fig, path, dpi=None, **kwargs) -> bool:
    """``fig.savefig(path, dpi=dpi)`` without software version or timestamp, atomically, and only
    when the image changed (PNG: its decoded pixels; other formats: its bytes); True if written."""
    path = Path(path)
    fmt = kwargs.pop("format", None) or path.suffix.lstrip(".").lower() or "png"
    metadata = {**_DETERMINISTIC_METADATA.get(fmt, {}), **kwargs.pop("metadata", {})}
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata or None, **kwargs)
    data = buffer.getvalue()
    old = _current_bytes(path)
    if old == data:
        _mark_current(path)
        return False
    if old is not None and fmt == "png":
        new_pixels = _pixels(data)
        if new_pixels is not None and _pixels(old) == new_pixels:
            _mark_current(path)
            return False
    replace_bytes(path, data)
    return True
