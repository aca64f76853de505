"""An int8 screen for CPUs: exact integer products through onnxruntime, about 2x a bfloat16 screen.

A frozen block of keys (accepted identities that will not change again) is quantised once to int8
and handed to onnxruntime as a constant, so its integer GEMM packs it once and then runs at about
twice the speed of a bfloat16 product on AVX512-VNNI CPUs. The graph returns only the largest
integer product per query row, so nothing of size queries x keys leaves it.

Error bound: a unit row ``u`` is stored as ``s * q`` with integer ``q``; the residual
``r = u - s * q`` is measured for every row in float64. Integer products are exact, so for unit
rows ``|s_a s_b (q_a . q_b) - u_a . u_b| <= |r_a| + |r_b| + |r_a||r_b|`` (Cauchy-Schwarz).
Rows whose screened maximum lies within that margin of the threshold are left to the bfloat16
screen (``separation.screen_against``), which re-checks them pair by pair.

Value ranges keep every x86 kernel exact: queries are uint8 ``q + 127`` with ``|q| <= 127``, keys
int8 with ``|q| <= 64``, so the pairwise int16 sums of AVX2's ``vpmaddubsw`` (``2 * 254 * 64``)
cannot saturate; VNNI kernels accumulate in int32 directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

QUERY_LEVELS = 127  # queries: |q| <= 127, stored as uint8 q + 127
KEY_LEVELS = 64  # keys: |q| <= 64 as int8 (see the module docstring)
# Largest products per onnxruntime call (int32): 256 MB, reused through a shared arena.
CALL_ELEMENTS = 1 << 26
# A frozen block whose rounding error would widen the margin beyond this is not worth screening
# in int8 (nearly every row would fall back to bfloat16); such keys stay bfloat16-only.
MAX_MARGIN = 0.08


def int8_screen_available(device: torch.device) -> bool:
    """The int8 screen is for CPUs; on a GPU the bfloat16 screen is faster."""
    return device.type == "cpu"


@dataclass
class Int8Queries:
    """Candidate rows quantised with one scale per row: ``unit[i] ~ scale[i] * (codes[i] - 127)``."""

    codes: np.ndarray  # [N, D] uint8
    scale: np.ndarray  # [N] float64
    err: np.ndarray  # [N] float64 residual norms

    @classmethod
    def of(cls, vectors: np.ndarray, norms: np.ndarray) -> Int8Queries:
        unit = np.asarray(vectors, dtype=np.float64) / norms[:, None]
        scale = np.abs(unit).max(axis=1) / QUERY_LEVELS
        q = np.clip(np.rint(unit / scale[:, None]), -QUERY_LEVELS, QUERY_LEVELS)
        err = np.linalg.norm(unit - scale[:, None] * q, axis=1)
        return cls((q + QUERY_LEVELS).astype(np.uint8), scale, err)


class Int8Keys:
    """A frozen block of keys, quantised with one shared scale and packed into an onnxruntime session."""

    def __init__(self, vectors: np.ndarray, norms: np.ndarray, offset: int) -> None:
        self.offset = offset
        self.count = len(vectors)
        # One scale for the block: the screen needs max_j of products, and per-key scales would
        # make the integer maximum meaningless.
        self.scale = max(float(np.abs(unit).max()) for _, unit in _unit_rows(vectors, norms)) / KEY_LEVELS
        codes = np.empty((vectors.shape[1], self.count), dtype=np.int8)  # transposed: [D, N]
        self.err = 0.0
        for start, unit in _unit_rows(vectors, norms):
            q = np.clip(np.rint(unit / self.scale), -KEY_LEVELS, KEY_LEVELS)
            self.err = max(self.err, float(np.linalg.norm(unit - self.scale * q, axis=1).max()))
            codes[:, start : start + len(q)] = q.T
        self._session = _row_max_session(codes)

    def margin(self, queries: Int8Queries) -> np.ndarray:
        """Per query row, the worst-case |screened - exact| cosine against any key of this block."""
        # 1e-9 covers the float64 arithmetic of the residual norms and of the rescaling.
        return queries.err + self.err + queries.err * self.err + 1e-9

    def row_max(self, queries: Int8Queries, rows: np.ndarray) -> np.ndarray:
        """Screened maximum cosine of each of ``queries[rows]`` over the block's keys (float64)."""
        out = np.empty(len(rows), dtype=np.float64)
        step = max(1, CALL_ELEMENTS // self.count)
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            (best,) = self._session.run(None, {"queries": queries.codes[part]})
            out[start : start + len(part)] = best * queries.scale[part] * self.scale
        return out


def screen_rows(
    keys: Int8Keys, queries: Int8Queries, rows: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` by their int8 maximum: (surely above ``threshold``, too close to call).

    The remaining rows are surely below ``threshold`` against every key of the block.
    """
    value = keys.row_max(queries, rows)
    margin = keys.margin(queries)[rows]
    above = value - margin > threshold
    unsure = ~above & (value + margin >= threshold)
    return rows[above], rows[unsure]


def _unit_rows(vectors: np.ndarray, norms: np.ndarray, block: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
    """Float64 unit rows in blocks, so quantising a large block needs little extra memory."""
    for start in range(0, len(vectors), block):
        yield (
            start,
            np.asarray(vectors[start : start + block], dtype=np.float64) / norms[start : start + block, None],
        )


def _row_max_session(keys_t: np.ndarray):
    """An onnxruntime session computing ``max_j (queries - 127) @ keys_t[:, j]`` per query row."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMulInteger", ["queries", "keys", "zero"], ["products"]),
            helper.make_node("ReduceMax", ["products"], ["row_max"], axes=[1], keepdims=0),
        ],
        "int8_row_max",
        [helper.make_tensor_value_info("queries", TensorProto.UINT8, [None, keys_t.shape[0]])],
        [helper.make_tensor_value_info("row_max", TensorProto.INT32, [None])],
        [
            numpy_helper.from_array(keys_t, "keys"),
            helper.make_tensor("zero", TensorProto.UINT8, [], [QUERY_LEVELS]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime we support
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Idle sessions must not spin on the cores; all sessions share one arena for their products.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.use_env_allocators", "1")
    _register_shared_arena()
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@cache
def _register_shared_arena() -> None:
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    # Extend by exactly what is asked (1), not the next power of two: products are large.
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
