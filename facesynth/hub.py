"""Upload a finished dataset folder to the Hugging Face Hub, resumably, in planned commits.

The plan is computed offline from the folder: which files go up, under which path, in which
commit. Each commit is one ``HfApi.upload_folder`` call restricted to its files; files already on
the Hub with the same content are skipped by the library, so re-running ``push`` after an
interruption resumes where it stopped. Shards go first and the dataset card last, so the Hub shows
the dataset only once its data is there. The token comes from huggingface_hub's usual sources
(``HF_TOKEN``, ``hf auth login``); facesynth never reads, prints or stores it.
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
FILES_PER_COMMIT = 50  # the Hub recommends < 100 files per commit
BYTES_PER_COMMIT = 20 * 10**9


@dataclass
class UploadPlan:
    """Files of a dataset folder (repo path -> size in bytes) and the commits that carry them."""

    folder: Path
    files: dict[str, int] = field(default_factory=dict)
    commits: list[list[str]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def _order(path: str) -> tuple[int, str]:
    """Shards first, then side tables and metadata, the card last."""
    if path.startswith(f"{layout.DATA}/"):
        return 0, path
    if path == layout.CARD:
        return 2, path
    return 1, path


def upload_plan(
    out: str | Path, files_per_commit: int = FILES_PER_COMMIT, bytes_per_commit: int = BYTES_PER_COMMIT
) -> UploadPlan:
    """What ``push`` uploads: every visible file of a finalized output, in commits of bounded size.

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

    batch: list[str] = []
    batch_bytes = 0
    for name in sorted(plan.files, key=_order):
        size = plan.files[name]
        if batch and (len(batch) >= files_per_commit or batch_bytes + size > bytes_per_commit):
            plan.commits.append(batch)
            batch, batch_bytes = [], 0
        batch.append(name)
        batch_bytes += size
    if batch:
        plan.commits.append(batch)
    return plan


def push(
    out: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    api: Any = None,
) -> str:
    """Create the dataset repo if needed and upload ``out`` along its plan; returns the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserInputError(f"--repo expects ORG/NAME (or USER/NAME), got '{repo_id}'")
    plan = upload_plan(out)
    api = api or HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        remote = set(api.list_repo_files(repo_id, repo_type="dataset", revision=revision))
        # Shards of an earlier, different version of the dataset would mix with ours: remove them.
        stale = sorted(p for p in remote if p.startswith(f"{layout.DATA}/") and p not in plan.files)
        for n, commit in enumerate(plan.commits, start=1):
            last = n == len(plan.commits)
            api.upload_folder(
                repo_id=repo_id,
                repo_type="dataset",
                folder_path=plan.folder,
                revision=revision,
                allow_patterns=[glob.escape(name) for name in commit],
                delete_patterns=[glob.escape(name) for name in stale] if last and stale else None,
                commit_message=f"facesynth: upload part {n} of {len(plan.commits)}",
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
