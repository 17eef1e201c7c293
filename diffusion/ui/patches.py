"""Changes to gradio's behaviour that the app needs, each applied by an explicit call from ``app.py``.

gradio 6 has no setting for how it writes output pictures to its file cache, so the one
change here replaces that function (see its docstring for why).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

REMEMBERED = 4096  # pictures whose cached file is remembered by their pixels (a few hundred bytes each)
PNG_LEVEL = 1  # zlib level of output PNGs: lossless all the same; about 3× faster than 6, about 6 % larger


def publish_cached_images_atomically() -> None:
    """Make gradio write output pictures to its file cache without a moment of a half-written file.

    gradio stores each output picture under a name made from its content's hash, and
    rewrites that file every time the same picture is produced again (``write_bytes``
    truncates it first). In a classroom the same pictures come back all the time: the
    t = 0 frame of the noising strip for the example image, or a double click's twin
    request. A student still downloading the file then gets it cut short: the load
    benchmark saw "peer closed connection without sending complete message body
    (received 0 bytes, expected 84661)". Here an existing file is kept as it is, and a
    new one is written under a temporary name and renamed into place, as gradio
    already does for files it copies (``save_file_to_cache``). Idempotent.

    It also encodes each picture once. A streaming handler sends the same pictures again
    with every update (a gallery that grows by one method at a time), and gradio encoded
    all of them every time: under a class's burst of denoising requests, PNG encoding took
    a fifth of the server's time. A picture whose pixels, size, mode, metadata and format
    were encoded before gets the same file back while that file exists, and PNGs are
    written at zlib level :data:`PNG_LEVEL`.
    """
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "_diffusion_lab_atomic", False):
        return
    known: OrderedDict[str, str] = OrderedDict()
    lock = threading.Lock()

    def encode(img: Any, format: str) -> bytes:
        if format.lower() != "png":
            return processing_utils.encode_pil_to_bytes(img, format)
        with io.BytesIO() as out:  # gradio's own PNG encoding, at a faster zlib level
            img.save(out, "png", pnginfo=processing_utils.get_pil_metadata(img), compress_level=PNG_LEVEL)
            return out.getvalue()

    def write(img: Any, cache_dir: str, name: str, format: str) -> str:
        data = encode(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        if target.exists():
            os.utime(target)  # gradio's delete_cache ages files by time: this one is in use again
            return str(target)
        handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return str(target)

    def save_pil_to_cache(img: Any, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        pixels = hashlib.blake2b(img.tobytes(), digest_size=20)
        pixels.update(repr((img.mode, img.size, sorted(map(str, img.info.items())), format, name,
                            str(cache_dir))).encode())
        key = pixels.hexdigest()
        with lock:
            path = known.get(key)
            if path is not None:
                known.move_to_end(key)
        if path is not None and os.path.exists(path):
            os.utime(path)
            return path
        path = write(img, cache_dir, name, format)
        with lock:
            known[key] = path
            while len(known) > REMEMBERED:
                known.popitem(last=False)
        return path

    save_pil_to_cache._diffusion_lab_atomic = True  # type: ignore[attr-defined]
    processing_utils.save_pil_to_cache = save_pil_to_cache
