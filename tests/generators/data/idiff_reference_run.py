"""Produce idiff_reference.npz with the PUBLISHED IDiff-Face code (not part of facesynth; not run by tests).

How the fixture was made (torch 2.13.0 CPU in both environments):
1. In the facesynth venv: write the tiny checkpoint in the published layout
   python -c "import sys; sys.path.insert(0, 'tests/generators'); from idiff_tiny import write_tiny; \
              write_tiny(__import__('pathlib').Path('/work/scratch/idiff/tiny'))"
2. In a scratch venv outside the project (python3 -m venv; pip install torch==2.13.0 einops omegaconf tqdm)
   with a checkout of github.com/fdbtrs/IDiff-Face (commit of the fetched mirror) in REF:
   python idiff_reference_run.py REF /work/scratch/idiff/tiny tests/generators/data/idiff_reference.npz
It builds the published DenoisingDiffusionProbabilisticModel(ConditionalUNet) from the hydra config,
loads the tiny weights strictly, and for each (context, seed) runs ``torch.manual_seed(seed)`` then
``sample(1, (3, 8, 8), context=...)`` (DDPM, all T steps) and the published VQDecoderInterface, rounding
like torchvision's save_image. Pair 0 is also sampled with ``sample_classifier_free_guided`` (scale 1.5).
The T = 1000 linear schedule buffers are stored whole (8 x 1000 float32).
"""

import sys
import types

import numpy as np
import torch
from omegaconf import OmegaConf

ref, tiny, out = sys.argv[1:4]
sys.path.insert(0, ref)
# utils.helpers imports pytorch_lightning for a logging decorator only
pl = types.ModuleType("pytorch_lightning")
pl.utilities = types.ModuleType("pytorch_lightning.utilities")
pl.utilities.rank_zero_only = lambda f: f
sys.modules.update({"pytorch_lightning": pl, "pytorch_lightning.utilities": pl.utilities})
torch.Tensor.cuda = lambda self, *a, **k: self  # the published sampler moves noise to CUDA; run on CPU

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel  # noqa: E402
from models.autoencoder.vqgan import VQDecoderInterface  # noqa: E402
from models.diffusion.unet import ConditionalUNet  # noqa: E402

torch.set_num_threads(1)
name = "unet-cond-ca-bs512-150K-cpd25"
cfg = OmegaConf.to_container(OmegaConf.load(f"{tiny}/trained_models/{name}/.hydra/config.yaml"), resolve=True)
unet_cfg = {k: v for k, v in cfg["model"].items() if k != "_target_"}
model = DenoisingDiffusionProbabilisticModel(
    ConditionalUNet(**unet_cfg), T=cfg["diffusion"]["T"], schedule_type=cfg["diffusion"]["schedule_type"]
)
model.load_state_dict(
    torch.load(f"{tiny}/trained_models/{name}/checkpoints/ema_averaged_model.ckpt"), strict=True
)
model.eval()
decoder = VQDecoderInterface(
    f"{tiny}/models/autoencoder/first_stage_config.yaml",
    f"{tiny}/models/autoencoder/first_stage_decoder_state_dict.pt",
).eval()

rng = np.random.default_rng(0)
contexts = rng.normal(size=(3, 512)).astype(np.float32)
contexts /= np.linalg.norm(contexts, axis=1, keepdims=True)
seeds = np.array([11, 12345, 2**40 + 7], dtype=np.int64)
size = (3, cfg["constants"]["image_size"] // 4, cfg["constants"]["image_size"] // 4)


def to_uint8(x):
    x = (x.clamp(-1, 1) + 1.0) / 2.0
    return x.mul(255).add_(0.5).clamp_(0, 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()


latents, images = [], []
with torch.no_grad():
    for context, seed in zip(contexts, seeds, strict=True):
        torch.manual_seed(int(seed))
        x = model.sample(1, size, context=torch.from_numpy(context)[None])
        latents.append(x[0].numpy())
        images.append(to_uint8(decoder(x))[0])
    torch.manual_seed(int(seeds[0]))
    cfg_x = model.sample_classifier_free_guided(1, size, torch.from_numpy(contexts[0])[None], 1.5)
    cfg_image = to_uint8(decoder(cfg_x))[0]

schedule = DenoisingDiffusionProbabilisticModel(torch.nn.Identity(), T=1000)
np.savez_compressed(
    out,
    contexts=contexts,
    seeds=seeds,
    latents=np.stack(latents),
    images=np.stack(images),
    cfg_scale=np.float32(1.5),
    cfg_latent=cfg_x[0].numpy(),
    cfg_image=cfg_image,
    **{f"schedule_{k}": v.numpy() for k, v in schedule.state_dict().items()},
)
print("wrote", out, [float(np.abs(x).max()) for x in latents])
