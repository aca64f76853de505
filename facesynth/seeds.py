"""Per-image seeds and prompts, derived from (recipe seed, identity, attempt) alone.

Anything derived here can be recomputed for one row without running the rest of the dataset.
"""

from __future__ import annotations

import numpy as np

from facesynth.recipe import PromptOptions

_SEED_SALT = 0x5EED
_PROMPT_SALT = 0x9A0B
_IDENTITY_SALT = 0x1DE7


def image_seed(seed: int, identity: int, attempt: int) -> int:
    """The diffusion seed of attempt ``attempt`` of ``identity``: a 63-bit integer."""
    state = np.random.SeedSequence([seed, _SEED_SALT, identity, attempt]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def identity_seed(seed: int, identity: int) -> int:
    """The seed of work done once per identity (e.g. refining its vector): a 63-bit integer."""
    state = np.random.SeedSequence([seed, _IDENTITY_SALT, identity]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def image_prompt(options: PromptOptions, seed: int, identity: int, attempt: int) -> str:
    """Fill the prompt template with one choice per slot, drawn from the image's own generator."""
    rng = np.random.default_rng([seed, _PROMPT_SALT, identity, attempt])
    picks = {slot: values[int(rng.integers(len(values)))] for slot, values in sorted(options.choices.items())}
    return " ".join(options.template.format(**picks).split())
