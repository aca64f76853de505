"""Upload a finished dataset folder to the Hugging Face Hub: resumable, in several commits, card last.

``upload_plan`` lists offline what goes up and refuses layouts the Hub cannot hold. ``push`` then
uploads everything but the dataset card with the library's resumable multi-commit upload
(``HfApi.upload_large_folder`` in huggingface_hub 1.x; in 2.x ``upload_folder`` itself became
resumable and multi-commit and ``upload_large_folder`` went away): re-running ``push`` after an
interruption skips what is already there. The card goes last, in one commit that also deletes shards
of an earlier version of the dataset, so the Hub shows the new dataset only once its data is there.
The token comes from huggingface_hub's usual sources (``HF_TOKEN``, ``hf auth login``); facesynth
never reads, prints or stores it.
"""

from __future__ import annotations

import glob
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from facesynth import layout
from facesynth.errors import FacesynthError, UserInputError

# The Hub's documented limits (docs "Repository limitations and recommendations").
MAX_ENTRIES_PER_FOLDER = 10_000
MAX_FILES_PER_REPO = 100_000
MAX_FILE_BYTES = 50 * 10**9  # hard limit; 20 GB and less recommended


@dataclass
class UploadPlan:
    """Files of a dataset folder (repo path -> size in bytes), in upload order: the card last."""

    folder: Path
    files: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def data(self) -> list[str]:
        """Everything but the card, shards first."""
        return [name for name in sorted(self.files, key=_order) if name != layout.CARD]


def _order(path: str) -> tuple[int, str]:
    """Shards first, then side tables and metadata, the card last."""
    if path.startswith(f"{layout.DATA}/"):
        return 0, path
    if path == layout.CARD:
        return 2, path
    return 1, path


def upload_plan(out: str | Path) -> UploadPlan:
    """What ``push`` uploads: every visible file of a finalized output.

    Refuses an unfinished output and layouts the Hub cannot hold (10k entries per folder).
    """
    from facesynth.finalize import finalize, is_finalized

    folder = Path(out).resolve()
    if not (folder / layout.RUN).exists() and not (folder / layout.STATS).exists():
        raise UserInputError(f"{folder} is not a facesynth output (no {layout.STATS})")
    if not is_finalized(folder):
        raise UserInputError(
            f"{folder} is not finalized; finish it with `facesynth run` (or `facesynth finalize {folder}` "
            "after a distributed run) before pushing"
        )
    finalize(folder)  # completes the cleanup of a finalize killed after its commit: units/ is not uploaded
    plan = UploadPlan(folder)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        # hidden files: temporary files, Slurm scripts and logs, caches of tools
        if path.is_dir() or any(part.startswith(".") for part in relative.parts):
            continue
        plan.files[relative.as_posix()] = path.stat().st_size

    entries: dict[str, set[str]] = defaultdict(set)  # folder -> names of its files and sub-folders
    for name in plan.files:
        parts = PurePosixPath(name).parts
        for depth in range(len(parts)):
            entries["/".join(parts[:depth]) or "."].add(parts[depth])
    crowded = {k: len(v) for k, v in entries.items() if len(v) >= MAX_ENTRIES_PER_FOLDER}
    if crowded:
        where, count = max(crowded.items(), key=lambda kv: kv[1])
        raise UserInputError(
            f"folder '{where}' of {folder} holds {count:,} entries but the Hub allows fewer than "
            f"{MAX_ENTRIES_PER_FOLDER:,} per folder; remake it with a larger output.shard_size_mb "
            "(fewer, bigger shards)"
        )
    if len(plan.files) >= MAX_FILES_PER_REPO:
        raise UserInputError(f"{len(plan.files):,} files; the Hub allows fewer than {MAX_FILES_PER_REPO:,}")
    too_big = [name for name, size in plan.files.items() if size > MAX_FILE_BYTES]
    if too_big:
        raise UserInputError(f"{too_big[0]} is larger than the Hub's 50 GB file limit; use smaller shards")

    if layout.CARD not in plan.files:
        raise UserInputError(f"{folder} has no {layout.CARD}; run `facesynth finalize {folder}` again")
    return plan


def push(
    out: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    api: Any = None,
) -> str:
    """Create the dataset repo if needed and upload ``out``, the card last; returns the repo URL.

    ``api`` is an ``huggingface_hub.HfApi`` (default: a new one with the usual token sources).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserInputError(f"--repo expects ORG/NAME (or USER/NAME), got '{repo_id}'")
    plan = upload_plan(out)
    api = api or HfApi()
    where = {"repo_id": repo_id, "repo_type": "dataset", "revision": revision}
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        remote = set(api.list_repo_files(**where))
        # Shards of an earlier, different version of the dataset would mix with ours: remove them.
        stale = sorted(p for p in remote if p.startswith(f"{layout.DATA}/") and p not in plan.files)
        data = [glob.escape(name) for name in plan.data]
        if hasattr(api, "upload_large_folder"):  # huggingface_hub 1.x
            api.upload_large_folder(folder_path=plan.folder, allow_patterns=data, private=private, **where)
        else:  # huggingface_hub 2.x: upload_folder is the resumable, multi-commit upload
            api.upload_folder(
                folder_path=plan.folder, allow_patterns=data, commit_message="facesynth: upload data", **where
            )
        card = [CommitOperationAdd(path_in_repo=layout.CARD, path_or_fileobj=str(plan.folder / layout.CARD))]
        api.create_commit(
            operations=[*card, *(CommitOperationDelete(path_in_repo=p) for p in stale)],
            commit_message="facesynth: dataset card"
            + (f", remove {len(stale)} old shard(s)" if stale else ""),
            **where,
        )
    except OfflineModeIsEnabled:
        raise UserInputError("HF_HUB_OFFLINE is set: unset it to push to the Hub") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        hint = (
            "; log in with `hf auth login` or set HF_TOKEN to a token with write access"
            if status in (401, 403)
            else "; run the same command again to resume"
        )
        raise FacesynthError(
            f"upload to {repo_id} failed: {' '.join(str(exc).split())[:300]}{hint}"
        ) from None
    return str(url)
