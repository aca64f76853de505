"""Encoding dataset images (JPEG, PNG, WebP), in the calling thread or in encoder processes.

PIL lets go of the interpreter lock while it compresses, but takes it back for every block it
writes. On the filter thread that back-and-forth stalls the main thread, which drives the model:
with Vec2Face at 112 px and the model replayed, the main thread spent 0.62 ms of wall time per
image with the filter thread encoding and 0.53 ms with one encoder process, for 0.35 ms of its own
CPU time either way (2 cores; ``benchmarks/generation.py --vec2face``). The bytes are the same
either way: the processes get the PIL images themselves.
``runner.run_units`` starts the encoder processes before its first batch and stops them at its end.
"""

from __future__ import annotations

import io
import multiprocessing
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from PIL import Image

PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def encode_image(image: Image.Image, image_format: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": quality} if image_format in ("jpeg", "webp") else {}
    image.convert("RGB").save(buffer, format=PIL_FORMATS[image_format], **kwargs)
    return buffer.getvalue()


def encode_images(images: Sequence[Image.Image], image_format: str, quality: int) -> list[bytes]:
    return [encode_image(image, image_format, quality) for image in images]


def _ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def _ready() -> None:
    pass


class ImageEncoder:
    """Encodes lists of images, in order: in the calling thread, or split over ``processes`` processes.

    The processes start at ``start`` (or the first ``encode``) and stay until ``close``. They come from
    multiprocessing's fork server (spawned where there is none), which imports the program's
    ``__main__`` and this module once: later processes start in milliseconds, without a copy of the
    caller's memory. As with any multiprocessing, a script that calls ``facesynth.run`` needs an
    ``if __name__ == "__main__":`` guard. (Forking the caller directly was slower: the model's
    thread then pays copy-on-write faults on every page it writes.)
    """

    def __init__(self, image_format: str, quality: int, processes: int = 0) -> None:
        self.image_format, self.quality, self.processes = image_format, quality, processes
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the processes now, in the background, so that the first images do not wait for them."""
        if not self.processes or self._pool is not None:
            return
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":  # takes effect when the fork server starts (the first time only)
            context.set_forkserver_preload(["__main__", __name__])
        self._pool = ProcessPoolExecutor(self.processes, mp_context=context, initializer=_ignore_ctrl_c)
        for _ in range(self.processes):
            self._pool.submit(_ready)  # each submit starts a process while none is idle

    def encode(self, images: Sequence[Image.Image]) -> list[bytes]:
        if not self.processes or not images:
            return encode_images(images, self.image_format, self.quality)
        self.start()
        assert self._pool is not None
        size = -(-len(images) // self.processes)  # one task per process
        try:
            futures = [
                self._pool.submit(
                    encode_images, images[start : start + size], self.image_format, self.quality
                )
                for start in range(0, len(images), size)
            ]
            return [data for future in futures for data in future.result()]
        except BrokenProcessPool as exc:  # at submit, or while encoding
            broken, self._pool = self._pool, None  # the next encode starts new processes
            broken.shutdown(wait=False)
            raise RuntimeError(
                f"an image encoder process died ({exc}); set writer.encode_processes: 0 to encode in-process "
                '(a script that calls facesynth.run needs an `if __name__ == "__main__":` guard)'
            ) from exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
