"""ffruntime.graph_runtime: batches cut over lanes (pieces of similar length run side by side)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ffruntime.graph_runtime import Feeds, GraphRuntime, length_pieces
from ffruntime.graph_spec import TOKENIZER_FILE, GraphSpec, IOSpec
from ffruntime.settings import LoadSettings, available_cores


@pytest.mark.parametrize(
    ("lengths", "pieces"),
    [([5], 2), ([3, 9, 4, 9, 2, 7, 7, 8], 2), (list(range(1, 33)), 3), ([4] * 10, 4), ([30, 2, 2, 2], 2)],
)
def test_length_pieces_cover_every_row_once_in_at_most_the_pieces_asked(
    lengths: list[int], pieces: int
) -> None:
    groups = length_pieces(lengths, pieces)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert 1 <= len(groups) <= pieces
    assert all(lengths[g[0]] == max(lengths[i] for i in g) for g in groups)  # longest row first


def test_length_pieces_balance_padded_tokens() -> None:
    """One long row and many short ones: the long row goes alone, not padded beside the short ones."""
    groups = length_pieces([30, 2, 2, 2, 2, 2], 2)
    assert groups[0] == [0]
    cost = [len(g) * max([30, 2, 2, 2, 2, 2][i] for i in g) for g in groups]
    assert cost == [30, 10]
    assert length_pieces([], 2) == []
    assert length_pieces([3, 4], 1) == [[1, 0]]


class Recording(GraphRuntime):
    """A graph that returns each row's token sum and records the shapes and threads of its runs."""

    def __init__(
        self, spec: GraphSpec, lanes: int, delay: float = 0.0, files: dict[str, Path] | None = None
    ) -> None:
        super().__init__(spec, files or {}, memory_bytes=0, lanes=lanes)
        self.runs: list[tuple[tuple[int, ...], int]] = []
        self.delay = delay
        self.barrier: threading.Barrier | None = None  # every piece waits for the others: they run at once
        self._lock = threading.Lock()

    def run_graph(self, feeds: Feeds) -> Feeds:
        time.sleep(self.delay)
        if self.barrier is not None:
            self.barrier.wait(timeout=10)
        first = next(iter(feeds.values()))
        with self._lock:
            self.runs.append((first.shape, threading.get_ident()))
        if "input_ids" in feeds:
            total = (feeds["input_ids"] * feeds["attention_mask"]).sum(1, keepdims=True)
            return {"out": total.astype(np.float32)}
        return {"y": feeds["x"] * 2}


TEXT = GraphSpec(
    task="classify",
    inputs=(IOSpec(name="input_ids", datatype="INT64", shape=(-1, -1)),),
    outputs=(IOSpec(name="out", datatype="FP32", shape=(-1, 1)),),
)
TENSOR = GraphSpec(
    task="tensor",
    inputs=(IOSpec(name="x", datatype="FP32", shape=(-1, 3)),),
    outputs=(IOSpec(name="y", datatype="FP32", shape=(-1, 3)),),
)


def _text_runtime(tmp_path: Path, lanes: int) -> Recording:
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / TOKENIZER_FILE))
    rt = Recording(TEXT, lanes, files={TOKENIZER_FILE: tmp_path / TOKENIZER_FILE})
    rt.barrier = threading.Barrier(lanes) if lanes > 1 else None
    return rt


def test_text_rows_run_as_pieces_of_similar_length_at_once_and_come_back_in_order(tmp_path: Path) -> None:
    rt = _text_runtime(tmp_path, lanes=2)
    rows = [[1] * n for n in (3, 12, 4, 11, 2, 12)]
    requests = [rows[:2], rows[2:3], rows[3:]]
    out = rt._run_rows(requests)
    assert [o.ravel().tolist() for o in out] == [[3.0, 12.0], [4.0], [11.0, 2.0, 12.0]]
    shapes = sorted(shape for shape, _ in rt.runs)
    assert len(rt.runs) == 2 and len({t for _, t in rt.runs}) == 2  # two threads
    assert shapes[0][1] < 12 and shapes[1][1] == 12  # the short piece is not padded to 12


def test_one_lane_runs_the_whole_batch_in_one_call(tmp_path: Path) -> None:
    rt = _text_runtime(tmp_path, lanes=1)
    out = rt._run_rows([[[1, 1], [1, 1, 1, 1]]])
    assert out[0].ravel().tolist() == [2.0, 4.0]
    assert [shape for shape, _ in rt.runs] == [(2, 4)]


def test_tensor_batches_are_cut_over_the_lanes_only_when_a_run_is_slow() -> None:
    quick = Recording(TENSOR, lanes=2)
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    for _ in range(3):
        assert np.array_equal(quick._run_feeds([{"x": x}])[0]["y"], x * 2)
    assert [shape for shape, _ in quick.runs] == [(8, 3)] * 3  # microseconds: never worth a hand-off

    slow = Recording(TENSOR, lanes=2, delay=0.01)
    outs = slow._run_feeds([{"x": x[:3]}, {"x": x[3:]}])  # first run: measured whole
    outs = slow._run_feeds([{"x": x[:3]}, {"x": x[3:]}])
    assert np.array_equal(np.concatenate([o["y"] for o in outs]), x * 2)
    assert [shape for shape, _ in slow.runs] == [(8, 3), (4, 3), (4, 3)]


def test_lanes_default_to_one_single_thread_lane_per_core() -> None:
    assert LoadSettings().n_lanes == available_cores() and LoadSettings().n_lane_threads == 1
    assert (LoadSettings(threads=4).n_lanes, LoadSettings(threads=4).n_lane_threads) == (4, 1)
    split = LoadSettings(threads=8, lanes=2)
    assert (split.n_lanes, split.n_lane_threads) == (2, 4)
    assert LoadSettings(threads=1, lanes=3).n_lane_threads == 1
