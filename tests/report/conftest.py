"""Session fixtures of the report tests: the smoke dataset and its exports in every format the readers read."""

from __future__ import annotations

from pathlib import Path

import pytest

import facesynth
from facesynth.cli import main
from facesynth.export import export

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "smoke.yaml"


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``facesynth run recipes/smoke.yaml identities.count=4``: 4 identities x 3-4 tiny (non-face) images
    (few: the report tests embed them with dlib in four formats, ~0.1-0.2 s an image)."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    facesynth.run(SMOKE, out=out, overrides=["identities.count=4"], progress=False)
    return out


@pytest.fixture(scope="session")
def smoke_formats(smoke: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The smoke dataset as parquet (itself), ImageFolder, RecordIO and LMDB."""
    root = tmp_path_factory.mktemp("formats")
    paths = {"parquet": smoke}
    for kind, name in (("imagefolder", "folder"), ("recordio", "rec"), ("lmdb", "smoke.lmdb")):
        export(smoke, kind, root / name, progress=False)
        paths[kind] = root / name
    return paths


@pytest.fixture(scope="session")
def smoke_report(smoke: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``facesynth report SMOKE --embedder dlib --aligned --detector none --out OUT``: the one dlib pass over the smoke
    dataset, whose cache the four-format test starts from."""
    out = tmp_path_factory.mktemp("smoke-report") / "report"
    before = {str(p.relative_to(smoke)): p.stat().st_mtime for p in smoke.rglob("*")}
    # the smoke images are not faces: no detector pass for their pose (--detector none)
    args = ["report", str(smoke), "--embedder", "dlib", "--aligned", "--detector", "none", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert {
        str(p.relative_to(smoke)): p.stat().st_mtime for p in smoke.rglob("*")
    } == before  # nothing written there
    return out
