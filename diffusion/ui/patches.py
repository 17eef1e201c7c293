"""Changes to gradio's behaviour that the app needs, each applied by an explicit call from ``app.py``.

gradio 6 has no setting for how it writes output pictures to its file cache, so the one
change here replaces that function (see its docstring for why).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


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
    """
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "_diffusion_lab_atomic", False):
        return

    def save_pil_to_cache(img: Any, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
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

    save_pil_to_cache._diffusion_lab_atomic = True  # type: ignore[attr-defined]
    processing_utils.save_pil_to_cache = save_pil_to_cache
