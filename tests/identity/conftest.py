"""Session fixtures for identity tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def astronaut_folder(tmp_path_factory: pytest.TempPathFactory):
    """One identity folder: skimage's astronaut and augmented copies (flip, crop, brightness, rotation)."""
    import skimage.data
    from PIL import Image, ImageEnhance

    root = tmp_path_factory.mktemp("faces")
    folder = root / "astronaut"
    folder.mkdir()
    image = Image.fromarray(skimage.data.astronaut())
    variants = {
        "original": image,
        "flipped": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "cropped": image.crop((40, 0, 400, 360)).resize((384, 384)),
        "darker": ImageEnhance.Brightness(image).enhance(0.7),
        "rotated": image.rotate(8, resample=Image.Resampling.BILINEAR),
    }
    for name, picture in variants.items():
        picture.save(folder / f"{name}.jpg", quality=92)
    return root
