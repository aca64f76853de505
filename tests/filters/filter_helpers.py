"""Helpers shared by the filter tests (a module of its own: every test folder has a conftest)."""

from __future__ import annotations

from facesynth.interfaces import Candidate, FilterContext


def accept_all(filters: list, batch: list[Candidate], ctx: FilterContext) -> None:
    """What the pipeline does after the last filter: remember the accepted embeddings."""
    for c in batch:
        if c.accepted:
            for name, vector in c.embeddings.items():
                ctx.accepted_embeddings.setdefault(name, {}).setdefault(c.identity, []).append(vector)
            for f in filters:
                f.accept(c, ctx)
