"""Without peft, a LoRA is an error that says how to fix it, never a silently weaker model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# `sys.modules["peft"] = None` makes `import peft` fail and importlib find no peft, as when it is not
# installed; it must happen before diffusers is imported, hence a fresh interpreter.
SCRIPT = """
import json, sys
sys.modules["peft"] = None
from facesynth.errors import FacesynthError
from facesynth.generators import load_generator

model, base, lcm_lora, faceid_lora = sys.argv[1:]
results = []
for name, options in (
    ("arc2face", {"model": model}),
    ("arc2face", {"model": model, "lcm_lora": lcm_lora}),
    ("ipadapter-faceid", {"adapter": faceid_lora}),
):
    try:
        load_generator(name, base_model=base, size=64, **options)
        results.append("loaded")
    except FacesynthError as exc:
        results.append(str(exc))
print(json.dumps(results))
"""


@pytest.mark.slow
def test_loras_without_peft_are_errors_that_say_pip_install_peft(tiny_dirs, lcm_lora_dir, faceid_lora_dir):
    model, base = tiny_dirs
    args = [str(model), str(base), str(lcm_lora_dir), str(faceid_lora_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    plain, lcm, faceid = json.loads(done.stdout.strip().splitlines()[-1])
    assert plain == "loaded"  # peft is only needed for LoRAs
    assert lcm.startswith("generator.lcm_lora: LCM-LoRA needs the peft package")
    assert faceid.startswith("generator.adapter: the FaceID LoRA in ip-adapter-faceid_sd15.bin needs")
    assert "peft package" in faceid
    assert all("pip install -U peft" in m and "\n" not in m for m in (lcm, faceid))
