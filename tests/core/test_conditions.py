"""Each unit records what its pixels were made with; mixing what cannot be mixed is refused, and
`facesynth.regenerate` checks it can be exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from smoke import SMALL, SMOKE

import facesynth
from facesynth import layout
from facesynth.cli import main
from facesynth.encoding import encode_image
from facesynth.errors import UserInputError
from facesynth.finalize import finalize


def test_units_record_conditions_and_regenerate_checks_them(small_units: Path, tmp_path: Path) -> None:
    from importlib.metadata import version

    import pyarrow.parquet as pq

    out = tmp_path / "out"
    shutil.copytree(small_units, out)  # the units this recipe made in this process; the run finalizes
    stats = facesynth.run(SMOKE, out=out, overrides=SMALL, progress=False)
    (group,) = stats["made_with"]
    made = group["made_with"]
    assert group["units"] == [0, 1]
    assert made["device"] == "cpu" and made["dtype"] == "fp32" and made["batch_invariant"] is True
    assert made["batch_size"] == 8 and made["torch"] == version("torch") and made["cuda"] is None
    card = (out / layout.CARD).read_text()
    assert "bit-identical" in card and "cpu, fp32, batch size 8, batch-invariant" in card

    row = pq.read_table(sorted((out / "data").glob("*.parquet"))[0]).to_pylist()[0]
    image = facesynth.regenerate(out, row["identity"], row["attempt"])
    assert encode_image(image, "jpeg", 95) == row["image"]["bytes"]

    # The same dataset as if made on a GPU in fp16, batch-variant in batches of 8.
    recorded = json.loads((out / layout.STATS).read_text())
    recorded["made_with"][0]["made_with"].update(device="cuda:0", dtype="fp16", batch_invariant=False)
    (out / layout.STATS).write_text(json.dumps(recorded))
    with pytest.raises(UserInputError, match=r"dtype was 'fp16', now 'fp32'.*batches of 8.*exact=False"):
        facesynth.regenerate(out, row["identity"], row["attempt"])
    with pytest.warns(UserWarning, match="device was 'cuda:0', now 'cpu'"):
        again = facesynth.regenerate(out, row["identity"], row["attempt"], exact=False)
    assert again.tobytes() == image.tobytes()


@pytest.mark.slow
def test_batch_variant_units_of_another_batch_size_and_mixed_dtypes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import run_units

    overrides = [*SMALL, "generator.batch_invariant=false"]
    out = tmp_path / "out"
    prepare(load_recipe(SMOKE, overrides), out, progress=False)
    run_units(out, [0], progress=False)

    cmd = ["run", str(SMOKE), "--out", str(out), "--no-progress"]
    cmd += [arg for o in [*overrides, "generator.batch_size=4"] for arg in ("--set", o)]
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "batch size 8: units 0" in err and "batch size 4: units of this run" in err
    assert not layout.unit_done_marker(out, 1).exists(), "nothing was made before the refusal"

    prepare(load_recipe(SMOKE, overrides), out, progress=False)  # back to batch size 8: it resumes
    run_units(out, [1], progress=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    stats = finalize(out)
    assert [g["units"] for g in stats["made_with"]] == [[0, 1]]
    assert "differs slightly" in (out / layout.CARD).read_text()

    # A unit made by a worker whose `dtype: auto` resolved to fp16 (a GPU) cannot join fp32 units.
    marker = layout.unit_done_marker(mixed, 1)
    record = json.loads(marker.read_text())
    record["made_with"]["dtype"] = "fp16"
    marker.write_text(json.dumps(record))
    with pytest.raises(UserInputError, match=r"cannot mix generator dtypes \(fp32: units 0; fp16: units 1\)"):
        finalize(mixed)
