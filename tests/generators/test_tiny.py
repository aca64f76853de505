from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
from transformers import CLIPTokenizer

from facesynth.generators import load_generator
from facesynth.generators.arc2face import ID_PROMPT, Arc2FaceGenerator
from facesynth.generators.tiny import build_tiny_checkpoints, tiny_config_hash


def as_arrays(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


PUBLISHED_FILES = [
    "sd15-base/model_index.json",
    "sd15-base/vae/config.json",
    "sd15-base/vae/diffusion_pytorch_model.safetensors",
    "sd15-base/tokenizer/vocab.json",
    "sd15-base/tokenizer/merges.txt",
    "sd15-base/tokenizer/tokenizer_config.json",
    "sd15-base/tokenizer/special_tokens_map.json",
    "sd15-base/scheduler/scheduler_config.json",
    "sd15-base/text_encoder/config.json",
    "sd15-base/unet/config.json",
    "arc2face/arc2face/config.json",
    "arc2face/arc2face/diffusion_pytorch_model.safetensors",
    "arc2face/encoder/config.json",
    "arc2face/encoder/pytorch_model.bin",
]


def test_checkpoints_have_the_published_layout(tiny_dirs):
    model, base = tiny_dirs
    root = model.parent
    assert root.name == f"tiny-{tiny_config_hash()}"
    for name in PUBLISHED_FILES:
        assert (root / name).is_file(), name


def test_tokenizer_knows_the_arc2face_prompt(tiny_dirs):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_dirs[1], subfolder="tokenizer")
    assert len(tokenizer.encode("id", add_special_tokens=False)) == 1
    tokens = tokenizer.tokenize(ID_PROMPT)
    assert tokens == ["photo</w>", "of</w>", "a</w>", "id</w>", "person</w>"]
    empty = tokenizer("", padding="max_length", max_length=77).input_ids
    assert empty[:2] == [tokenizer.bos_token_id, tokenizer.eos_token_id] and len(empty) == 77


def _digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".bin"})
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_weights_are_the_same_on_every_build_and_concurrent_builds_are_safe(tiny_dirs, tmp_path):
    results: list[tuple[Path, Path]] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_tiny_checkpoints(tmp_path))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert [p.name for p in tmp_path.iterdir()] == [tiny_dirs[0].parent.name]  # no temp folders left
    # same config -> byte-identical weights (safetensors weights are stable across builds)
    assert _digest(results[0][0] / "arc2face") == _digest(tiny_dirs[0] / "arc2face")
    assert _digest(results[0][1]) == _digest(tiny_dirs[1])


def test_tiny_generator_is_arc2face_on_the_tiny_folders(tiny_dirs, vectors):
    cache = tiny_dirs[0].parent.parent
    gen = load_generator("tiny", cache_dir=str(cache))
    assert isinstance(gen.inner, Arc2FaceGenerator)
    assert (gen.name, gen.dim, gen.batch_size, gen.uses_prompts) == ("tiny", 512, 16, False)
    info = gen.describe()
    assert info["model_path"] == str(tiny_dirs[0].resolve()) and "not faces" in info["note"]
    assert (info["steps"], info["guidance"], info["size"]) == (4, 3.0, 64)
    images = gen.generate(vectors[:3], [0, 1, 2])
    assert [(im.mode, im.size) for im in images] == [("RGB", (64, 64))] * 3
    # tiny is the arc2face code: same folders and options give the same pixels
    same = load_generator("arc2face", model=str(tiny_dirs[0]), base_model=str(tiny_dirs[1]), size=64, steps=4)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(as_arrays(images), as_arrays(same.generate(vectors[:3], [0, 1, 2])), strict=True)
    )


def test_tiny_at_112_pixels(tiny_dirs, vectors):
    gen = load_generator("tiny", cache_dir=str(tiny_dirs[0].parent.parent), size=112, steps=2)
    (image,) = gen.generate(vectors[:1], [3])
    assert image.size == (112, 112) and np.asarray(image).std() > 1
