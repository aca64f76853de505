"""``facesynth train``: a face-recognition model from a dataset and a training recipe, resumable exactly.

Run folder::

    train.yaml          the resolved recipe (a resume with a different recipe is refused)
    dataset.json        the dataset's fingerprint (path, rows, identities, stats/recipe hash)
    checkpoint.pt       model, head, optimiser, scheduler, RNG and data position (atomic, every N steps);
                        the head's class matrix whole, gathered from the processes that shard it
    metrics.csv         step, epoch, loss, lr, images/s and validation results
    model.safetensors   the backbone in arcface_torch's state-dict layout
    model.onnx          [N,3,112,112] RGB in (x-127.5)/127.5 -> [N,512]; an ``arcface-onnx`` embedder

Data order and augmentation depend only on (seed, epoch, position), and every other random draw
(Partial FC sampling) on (seed, step), so a run killed at any point and resumed from its last
checkpoint makes the same model as an uninterrupted one (bit for bit on CPU).

Across N processes (``accelerate launch`` / ``torchrun``) each process reads its own share of every
global batch (``EpochBatches``), the backbone is data-parallel (DDP) and the head's class matrix is
sharded (``heads.py``: Partial FC, model-parallel); only process 0 writes files. A run resumes with
the process count it was started with.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field, ValidationError

from facesynth import layout
from facesynth.errors import RecipeError, UserInputError
from facesynth.recipe import _line_index, _raise_validation, apply_overrides
from facesynth.recognition.data import EpochBatches, FaceDataset, FaceReader, open_reader, row_groups
from facesynth.recognition.heads import HEADS, MarginHead, class_shard
from facesynth.registry import StrictOptions

Validator = Callable[[torch.nn.Module], dict[str, float]]

RECIPE_FILE = "train.yaml"
FINGERPRINT = "dataset.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
MODEL = "model.safetensors"
ONNX = "model.onnx"


# ----------------------------------------------------------------------------- recipe


class ModelOptions(StrictOptions):
    backbone: Literal["r18", "r34", "r50", "r100", "r200", "ir_se50"] = "r50"
    embedding_size: int = Field(512, ge=8)
    dropout: float = Field(0.0, ge=0, lt=1)
    width: int | None = Field(None, ge=4, description="channels of layer1 (64 = published); tests only")
    layers: list[int] | None = Field(
        None, min_length=4, max_length=4, description="blocks per stage; tests only"
    )
    input_size: int = Field(
        112, ge=16, multiple_of=16, description="image side (112 = published); tests only"
    )


class HeadOptions(StrictOptions):
    name: Literal["arcface", "cosface", "adaface"] = "arcface"
    s: float = 64.0
    m: float | None = Field(None, description="margin; default 0.5 arcface, 0.35 cosface, 0.4 adaface")
    h: float = Field(0.333, description="AdaFace's norm concentration")
    sample_rate: float = Field(1.0, gt=0, le=1, description="Partial FC: share of class centres per step")

    def build(self, dim: int, num_classes: int, rank: int = 0, world: int = 1, seed: int = 0) -> MarginHead:
        """The head, holding rank's slice of the class centres when ``world`` processes share it."""
        kw: dict[str, Any] = {"s": self.s, "sample_rate": self.sample_rate}
        kw |= {"rank": rank, "world": world, "seed": seed}
        if self.m is not None:
            kw["m"] = self.m
        if self.name == "adaface":
            kw["h"] = self.h
        return HEADS[self.name](dim, num_classes, **kw)


class DataOptions(StrictOptions):
    batch_size: int = Field(128, ge=1, description="per process")
    num_workers: int = Field(4, ge=0)
    flip: bool = True
    random_erasing: float = Field(0.0, ge=0, le=1, description="probability (torchvision RandomErasing)")
    rand_augment: tuple[int, int] | None = Field(None, description="[num_ops, magnitude] of RandAugment")
    rand_augment_variant: Literal["torchvision", "idiff-face"] = "torchvision"
    shuffle_window: int = Field(4, ge=1, description="row groups shuffled together")


class OptimOptions(StrictOptions):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad_norm: float | None = Field(
        None, gt=0, description="backbone gradient norm clip (arcface_torch: 5)"
    )
    clip_head_grad_norm: float | None = Field(
        None, gt=0, description="head gradient norm clip (IDiff-Face: 5)"
    )


class ScheduleOptions(StrictOptions):
    epochs: int = Field(20, ge=1)
    kind: Literal["step", "poly"] = "step"
    milestones: list[int] = Field(
        default_factory=list, description="lr *= gamma once this many epochs are done (kind: step)"
    )
    gamma: float = 0.1
    warmup_epochs: float = Field(0.0, ge=0)
    power: float = Field(1.0, description="kind: poly (arcface_torch: 1, linear decay to 0)")
    max_steps: int | None = Field(None, ge=1, description="stop early (short runs, tests)")


class ValidateOptions(StrictOptions):
    every: int = Field(2000, ge=1, description="steps")
    sets: list[str] = Field(default_factory=list, description=".bin files (or pairs lists) to verify on")


class TrainRecipe(StrictOptions):
    name: str = "train"
    seed: int = 0
    model: ModelOptions = Field(default_factory=ModelOptions)
    head: HeadOptions = Field(default_factory=HeadOptions)
    data: DataOptions = Field(default_factory=DataOptions)
    optim: OptimOptions = Field(default_factory=OptimOptions)
    schedule: ScheduleOptions = Field(default_factory=ScheduleOptions)
    precision: Literal["no", "fp16", "bf16"] = "no"
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(1000, ge=1, description="steps; also at every epoch end and at the end")
    log_with: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    validate_: ValidateOptions = Field(default_factory=ValidateOptions, alias="validate")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def parse_train_recipe(
    text: str, source: str = "<train recipe>", overrides: list[str] | None = None
) -> TrainRecipe:
    """Parse and validate a training recipe; errors are one line naming the file, line and key."""
    try:
        data = yaml.safe_load(text) or {}
        lines = _line_index(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{source}{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a training recipe is a YAML mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return TrainRecipe.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, TrainRecipe, (), lines, source)
        raise  # unreachable: _raise_validation raises


def load_train_recipe(path: str | Path, overrides: list[str] | None = None) -> TrainRecipe:
    path = Path(path)
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise RecipeError(f"training recipe not found: {path}") from None
    return parse_train_recipe(text, str(path), overrides)


def train_recipe_json_schema() -> dict[str, Any]:
    return TrainRecipe.model_json_schema(by_alias=True)


# ----------------------------------------------------------------------------- pieces


def build_backbone(options: ModelOptions) -> torch.nn.Module:
    """The backbone a recipe names: an arcface_torch IResNet, or the IR-SE-50 of Vec2Face's harness."""
    from facesynth.recognition.iresnet import ir_se50, iresnet

    kw: dict[str, Any] = {
        "num_features": options.embedding_size,
        "dropout": options.dropout,
        "input_size": options.input_size,
    }
    if options.width:
        kw["width"] = options.width
    if options.layers:
        kw["layers"] = tuple(options.layers)
    return ir_se50(**kw) if options.backbone == "ir_se50" else iresnet(options.backbone, **kw)


def lr_factor(schedule: ScheduleOptions, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate multiplier per step: linear warmup, then step decay or polynomial decay."""
    warmup = int(schedule.warmup_epochs * steps_per_epoch)
    total = schedule.epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in schedule.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule.kind == "poly":
            return max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** schedule.power
        return schedule.gamma ** sum(step >= m for m in milestones)

    return factor


def dataset_fingerprint(path: str | Path, reader: FaceReader) -> dict[str, Any]:
    """What identifies the training data: a facesynth dataset's stats (recipe hash, bank), sizes."""
    path = Path(path)
    stats_file = path / layout.STATS
    stats = layout.read_json(stats_file) if stats_file.is_file() else {}
    return {
        "path": str(path.resolve()),
        "rows": len(reader),
        "identities": int(len(set(reader.labels.tolist()))),
        "recipe_hash": stats.get("recipe_hash"),
        "bank_sha256": stats.get("bank_sha256"),
        "stats_sha256": hashlib.sha256(stats_file.read_bytes()).hexdigest() if stats_file.is_file() else None,
    }


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = layout.temporary_name(path)
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def export_onnx(model: torch.nn.Module, path: Path, size: int = 112) -> None:
    """ONNX with a dynamic batch axis; the embedder's layout: input [N,3,112,112], output [N,dim]."""
    model = model.eval().float()
    tmp = layout.temporary_name(path)
    torch.onnx.export(
        model,
        torch.zeros(1, 3, size, size),
        str(tmp),
        input_names=["input"],
        output_names=["embedding"],
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    os.replace(tmp, path)


class MetricsLog:
    """metrics.csv, cut back to the checkpoint's step on resume so redone steps are not listed twice."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        rows = []
        if path.exists() and resume_step > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.rows: list[dict[str, Any]] = rows
        self._write()

    def _write(self) -> None:
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields or ["step"])
            writer.writeheader()
            writer.writerows(self.rows)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()


# ----------------------------------------------------------------------------- training


def _accelerator(recipe: TrainRecipe, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    for tracker, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if tracker in recipe.log_with:
            try:
                __import__(package)
            except ImportError:
                raise UserInputError(
                    f"log_with: {tracker} needs the {package} package (pip install {package}), "
                    f"or drop it from the recipe (metrics.csv is always written)"
                ) from None
    cuda = torch.cuda.is_available()
    if recipe.precision == "fp16" and not cuda:
        raise UserInputError(
            "precision: fp16 needs a CUDA GPU; on CPU use --set precision=bf16 or precision=no"
        )
    return Accelerator(
        mixed_precision=recipe.precision,
        cpu=not cuda,
        log_with=list(recipe.log_with) or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def _check_run_folder(out: Path, recipe: TrainRecipe, fingerprint: dict[str, Any]) -> None:
    saved = out / RECIPE_FILE
    if saved.exists():
        old = TrainRecipe.model_validate(yaml.safe_load(saved.read_text()))
        if old.content_hash() != recipe.content_hash():
            raise UserInputError(
                f"{out} holds a run of another training recipe; use a new --out or the recipe in {saved}"
            )
        old_fp = layout.read_json(out / FINGERPRINT)
        if {k: old_fp.get(k) for k in ("rows", "recipe_hash")} != {
            k: fingerprint[k] for k in ("rows", "recipe_hash")
        }:
            raise UserInputError(f"{out} was trained on another dataset ({old_fp['path']}); use a new --out")


def train(
    dataset: str | Path,
    recipe: TrainRecipe,
    out: str | Path,
    validate: Validator | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a run; returns the final metrics row. ``validate(model)`` gives eval metrics."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out = Path(out)
    reader = open_reader(dataset)
    if len(reader) == 0:
        raise UserInputError(f"{dataset}: the dataset has no rows")
    fingerprint = dataset_fingerprint(dataset, reader)
    _check_run_folder(out, recipe, fingerprint)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = _accelerator(recipe, out)
    main = accelerator.is_main_process
    if main:
        layout.atomic_write_bytes(
            out / RECIPE_FILE, yaml.safe_dump(recipe.to_dict(), sort_keys=False).encode()
        )
        layout.atomic_write_json(out / FINGERPRINT, fingerprint)

    world, rank = accelerator.num_processes, accelerator.process_index
    group_sizes = row_groups(reader)
    steps_per_epoch = EpochBatches.steps(len(reader), recipe.data.batch_size, world)
    if steps_per_epoch == 0:
        raise UserInputError(
            f"{dataset}: {len(reader)} rows are less than one batch of {recipe.data.batch_size} x {world} "
            f"processes; lower --set data.batch_size"
        )
    total_steps = recipe.schedule.epochs * steps_per_epoch
    if recipe.schedule.max_steps:
        total_steps = min(total_steps, recipe.schedule.max_steps)

    torch.manual_seed(recipe.seed)
    model = build_backbone(recipe.model)
    num_classes = int(reader.labels.max()) + 1
    if num_classes < world:
        raise UserInputError(f"{dataset}: {num_classes} identities cannot be shared by {world} processes")
    head = recipe.head.build(recipe.model.embedding_size, num_classes, rank, world, recipe.seed)
    shards = [class_shard(num_classes, r, world) for r in range(world)]
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    # Optimiser state entries of the head's centres: sharded like the centres themselves.
    head_slots = {len(params) - 1 - i for i, p in enumerate(reversed(list(head.parameters())))}
    if recipe.optim.name == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=recipe.optim.lr, momentum=recipe.optim.momentum, weight_decay=recipe.optim.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(recipe.schedule, steps_per_epoch))

    step = 0
    ckpt_path = out / CHECKPOINT
    state: dict[str, Any] = {}
    if ckpt_path.exists():
        # Our own file, but still loaded without arbitrary unpickling.
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("world", 1) != world:
            raise UserInputError(
                f"{ckpt_path} was written by a run of {state.get('world', 1)} process(es); resume it with "
                f"--num_processes {state.get('world', 1)} (the data position depends on the count), "
                f"or train into a new --out"
            )
        start, count = shards[rank]
        model.load_state_dict(state["model"])
        head.load_state_dict({**state["head"], "weight": state["head"]["weight"][start : start + count]})
        optimizer.load_state_dict(_slice_head_state(state["optimizer"], head_slots, start, count))
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(_per_rank(state["rng_cpu"], rank))
        if torch.cuda.is_available() and "rng_cuda" in state:
            torch.cuda.set_rng_state(_per_rank(state["rng_cuda"], rank))
        step = int(state["step"])
    # The head is not data-parallel: each process owns its slice of the class centres.
    head = head.to(accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    if "scaler" in state and accelerator.scaler is not None:  # fp16 loss scale, for an exact resume
        accelerator.scaler.load_state_dict(state["scaler"])
    if main and recipe.log_with:
        accelerator.init_trackers(recipe.name, config={"recipe_hash": recipe.content_hash()})
    metrics = MetricsLog(out / METRICS, step) if main else None

    def save_checkpoint() -> None:
        from accelerate.utils import gather_object

        accelerator.wait_for_everyone()
        # Every process joins the gathers; process 0 writes one file holding the whole class matrix.
        head_state = {**head.state_dict(), "weight": _gather_rows(accelerator, head.weight.detach(), shards)}
        optim_state = _gather_head_state(accelerator, optimizer.state_dict(), head_slots, shards)
        rng_cpu = gather_object([torch.get_rng_state()]) if world > 1 else torch.get_rng_state()
        rng_cuda = None
        if torch.cuda.is_available():
            rng_cuda = (
                gather_object([torch.cuda.get_rng_state()]) if world > 1 else torch.cuda.get_rng_state()
            )
        if not main:
            return
        state = {
            "model": accelerator.unwrap_model(model).state_dict(),
            "head": head_state,
            "optimizer": optim_state,
            "scheduler": scheduler.state_dict(),
            "rng_cpu": rng_cpu,
            "step": step,
            "world": world,
        }
        if rng_cuda is not None:
            state["rng_cuda"] = rng_cuda
        if accelerator.scaler is not None:
            state["scaler"] = accelerator.scaler.state_dict()
        _atomic_torch_save(state, ckpt_path)

    dataset_obj = FaceDataset(
        reader,
        seed=recipe.seed,
        flip=recipe.data.flip,
        random_erasing=recipe.data.random_erasing,
        rand_augment=recipe.data.rand_augment,
        rand_augment_variant=recipe.data.rand_augment_variant,
        size=recipe.model.input_size,
    )
    bar = tqdm(
        total=total_steps, initial=step, disable=not (progress and main), unit="step", dynamic_ncols=True
    )
    last: dict[str, Any] = {}
    if world > 1:
        print(
            f"facesynth train: process {rank} of {world} reads batches of {recipe.data.batch_size} rows, "
            f"{steps_per_epoch} per epoch; holds classes {shards[rank][0]}..{sum(shards[rank]) - 1}",
            file=sys.stderr,
            flush=True,
        )
    # A finished run keeps its files untouched (and their hashes, which `facesynth benchmark` caches by).
    finished = step >= total_steps and (out / MODEL).is_file() and (out / ONNX).is_file()
    t0, images = time.perf_counter(), 0
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        sampler = EpochBatches(
            group_sizes,
            recipe.data.batch_size,
            recipe.seed,
            epoch,
            start,
            rank,
            world,
            recipe.data.shuffle_window,
        )
        loader = torch.utils.data.DataLoader(
            dataset_obj,
            batch_sampler=sampler,
            num_workers=recipe.data.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            prefetch_factor=4 if recipe.data.num_workers else None,
        )
        model.train()
        head.train()
        for x, y in loader:
            x, y = x.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)
            # Partial FC's draw: a function of (seed, step) and, for its own slice, the rank.
            generator = torch.Generator().manual_seed((recipe.seed * 1_000_003 + step) * world + rank)
            with accelerator.autocast():
                loss = head(model(x), y, generator)
            accelerator.backward(loss)
            if accelerator.scaler is not None and world > 1:
                share_head_overflow_(list(head.parameters()))
            if recipe.optim.clip_grad_norm or recipe.optim.clip_head_grad_norm:
                accelerator.unscale_gradients()  # once per step (a second unscale_ is an error in fp16)
            if recipe.optim.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optim.clip_grad_norm)
            if recipe.optim.clip_head_grad_norm:
                clip_sharded_grad_norm_(list(head.parameters()), recipe.optim.clip_head_grad_norm, world)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            images += len(x) * world
            bar.update(1)
            if step % recipe.log_every == 0 or step == total_steps:
                seconds = time.perf_counter() - t0
                last = {
                    "step": step,
                    "epoch": epoch,
                    "loss": round(loss.item(), 6),
                    "lr": scheduler.get_last_lr()[0],
                    "images_per_s": round(images / seconds, 1) if seconds > 0 else None,
                }
                t0, images = time.perf_counter(), 0
                bar.set_postfix(
                    loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.4g}", img_s=last["images_per_s"]
                )
                if (
                    validate is not None
                    and main
                    and (step % recipe.validate_.every == 0 or step == total_steps)
                ):
                    net = accelerator.unwrap_model(model)
                    net.eval()
                    with torch.no_grad():
                        last.update(validate(net))
                    net.train()
                if main:
                    metrics.add(last)
                    if recipe.log_with:
                        accelerator.log({k: v for k, v in last.items() if k != "step"}, step=step)
            if step % recipe.checkpoint_every == 0 or step % steps_per_epoch == 0 or step == total_steps:
                save_checkpoint()
            if step >= total_steps:
                break
    bar.close()
    accelerator.wait_for_everyone()
    if main and not finished:
        net = accelerator.unwrap_model(model).float().cpu().eval()
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / MODEL))
        export_onnx(net, out / ONNX, recipe.model.input_size)
    accelerator.end_training()
    return last


def share_head_overflow_(params: list[torch.nn.Parameter]) -> None:
    """Make an fp16 overflow in any process's head slice an overflow in every process's (call before unscale).

    The loss scaler checks the gradients its own process holds. The backbone's are all-reduced, so
    the same everywhere, but each process holds only its slice of the head: without this, one process
    would skip a step that the others take, and the backbone replicas would silently drift apart.
    """
    grads = [p.grad for p in params if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    local = any(not bool(torch.isfinite(g).all()) for g in grads)
    overflow = torch.tensor([float(local)], device=device)
    torch.distributed.all_reduce(overflow, op=torch.distributed.ReduceOp.MAX)
    if overflow.item() and grads:
        grads[0].view(-1)[0] = float("inf")  # the scaler then skips this step here too


def clip_sharded_grad_norm_(params: list[torch.nn.Parameter], max_norm: float, world: int) -> None:
    """``clip_grad_norm_`` on parameters sharded across processes: the norm is the whole matrix's."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    squares = torch.stack([g.detach().float().pow(2).sum() for g in grads]).sum()
    if world > 1:
        torch.distributed.all_reduce(squares)
    coef = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)  # torch's clip_grad_norm_ formula
    for g in grads:
        g.mul_(coef.to(g.dtype))


def _per_rank(saved: Any, rank: int) -> torch.Tensor:
    """A saved RNG state: one per process (a list) or, from a one-process run, a single tensor."""
    return saved[rank] if isinstance(saved, list) else saved


def _gather_rows(accelerator: Any, local: torch.Tensor, shards: list[tuple[int, int]]) -> torch.Tensor:
    """The whole matrix from every process's row slice (slices may differ in size by one row)."""
    if len(shards) == 1:
        return local.cpu()
    padded = accelerator.pad_across_processes(local.contiguous(), dim=0)
    rows = accelerator.gather(padded).cpu()
    size = padded.shape[0]
    return torch.cat([rows[r * size : r * size + count] for r, (_, count) in enumerate(shards)])


def _gather_head_state(
    accelerator: Any, state: dict[str, Any], slots: set[int], shards: list[tuple[int, int]]
) -> dict[str, Any]:
    """The optimiser state with the head's per-centre entries (momentum, Adam moments) gathered whole."""
    count = shards[accelerator.process_index][1]
    per_param = dict(state["state"])
    for slot in sorted(slots & per_param.keys()):
        entries = dict(per_param[slot])
        for key, value in entries.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == count:
                entries[key] = _gather_rows(accelerator, value, shards)
        per_param[slot] = entries
    return {**state, "state": per_param}


def _slice_head_state(state: dict[str, Any], slots: set[int], start: int, count: int) -> dict[str, Any]:
    """This process's rows of the head's per-centre optimiser entries of a checkpoint."""
    per_param = dict(state["state"])
    for slot in slots & per_param.keys():
        per_param[slot] = {
            key: value[start : start + count] if torch.is_tensor(value) and value.dim() > 0 else value
            for key, value in per_param[slot].items()
        }
    return {**state, "state": per_param}


def bin_validator(sets: list[str]) -> Validator:
    """Verification metrics on eval sets with insightface's protocol (``facesynth eval``'s code)."""
    try:
        from facesynth.recognition.embed import verification_validator
    except ImportError:
        raise UserInputError(
            "validate.sets needs facesynth eval (facesynth.recognition.embed), which this install lacks; "
            "drop validate.sets (--set validate.sets=[]) or update facesynth"
        ) from None
    return verification_validator(sets)


def cmd_train(args: Any) -> int:
    """CLI entry: ``facesynth train DATASET --recipe R --out RUN [--set k=v ...]``."""
    recipe = load_train_recipe(args.recipe, args.overrides)
    validate = None
    if recipe.validate_.sets:
        validate = bin_validator(recipe.validate_.sets)
    row = train(args.dataset, recipe, args.out, validate=validate, progress=not args.no_progress)
    print(json.dumps(row) if row else f"nothing to do: {args.out} is already trained")
    return 0
