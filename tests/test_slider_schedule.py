"""SliderQuant's window schedule against the authors' formula, and our refusals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lwq.errors import LwqError
from lwq.quant.slider_schedule import parse_windows, schedule


def _authors(n: int, window: int, stride: int, fill: int) -> list[list[int]]:
    """The authors' `layer_windows_scheduler` with fill windows (quantize/sliderquant.py),
    restated: valid where their code is (n >= fill, stride <= window)."""
    start = [list(range(i + 1)) for i in range(fill)]
    end = [list(range(n - fill + i, n)) for i in range(fill)]
    start_len = end_len = fill - stride
    rounds = math.ceil((n - start_len - end_len - window) / stride) + 1
    mid = [
        list(range(r * stride + start_len, min(r * stride + window + start_len, n)))
        for r in range(rounds)
    ]
    return start + mid + end


def test_the_papers_llama2_7b_schedule_has_33_windows():
    windows = [list(w) for w in schedule(32, window=2, stride=1, fill=4)]
    assert len(windows) == 33
    assert windows[:5] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [3, 4]]
    assert windows[-5:] == [[27, 28], [28, 29, 30, 31], [29, 30, 31], [30, 31], [31]]


@given(
    n=st.integers(1, 48),
    window=st.integers(1, 6),
    stride=st.integers(1, 6),
    fill=st.integers(1, 8),
)
def test_every_schedule_covers_every_block_and_matches_the_authors_where_theirs_runs(
    n, window, stride, fill
):
    if stride > window:
        with pytest.raises(LwqError, match="at most the window"):
            schedule(n, window, stride, fill)
        return
    windows = schedule(n, window, stride, fill)
    covered = sorted({b for w in windows for b in w})
    assert covered == list(range(n))
    assert all(0 <= w.start < w.stop <= n for w in windows)
    theirs = _authors(n, window, stride, fill) if n >= fill else None
    if theirs and sorted({b for w in theirs for b in w}) == list(range(n)):
        assert [list(w) for w in windows] == theirs  # wherever theirs trains every block


def test_a_shallow_model_gets_its_fill_clipped_to_its_blocks():
    assert [list(w) for w in schedule(3, window=2, stride=1, fill=4)] == [
        [0],
        [0, 1],
        [0, 1, 2],
        [0, 1, 2],
        [1, 2],
        [2],
    ]


def test_an_explicit_list_means_ranges_and_must_cover_every_block_in_order():
    assert parse_windows("0-3,2-5,4-7", 8) == [range(0, 4), range(2, 6), range(4, 8)]
    with pytest.raises(LwqError, match="leave block 4 out"):
        parse_windows("0-3,5-7", 8)
    with pytest.raises(LwqError, match="end at the last block"):
        parse_windows("0-3,2-5", 8)
    with pytest.raises(LwqError, match="start at block 0"):
        parse_windows("1-7", 8)
    with pytest.raises(LwqError, match="past the last"):
        parse_windows("0-8", 8)
    with pytest.raises(LwqError, match="not a range of blocks"):
        parse_windows("0-3,4", 8)
    with pytest.raises(LwqError, match="runs backwards"):
        parse_windows("0-3,7-4", 8)


def test_where_the_authors_formula_skips_blocks_one_middle_window_bridges_them():
    theirs = _authors(13, window=4, stride=1, fill=6)
    assert 6 not in {b for w in theirs for b in w}  # their head ends at 5, their tail starts at 7
    ours = [list(w) for w in schedule(13, window=4, stride=1, fill=6)]
    assert ours == theirs[:6] + [[5, 6, 7, 8]] + theirs[6:]


HEAD = [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]  # fill 4: head windows grow to 4 blocks


def _tail(n: int) -> list[list[int]]:
    """Fill 4: tail windows shrink from the last 4 blocks to the last one."""
    return [list(range(n - 4 + j, n)) for j in range(4)]


@pytest.mark.parametrize(
    ("n", "wsf", "expected"),
    [
        (1, (2, 1, 4), [[0], [0]]),
        (2, (2, 1, 4), [[0], [0, 1], [0, 1], [1]]),
        (
            5,
            (2, 1, 4),
            [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4], [3, 4], [4]],
        ),
        (
            12,
            (3, 2, 4),
            [
                [0],
                [0, 1],
                [0, 1, 2],
                [0, 1, 2, 3],
                [2, 3, 4],
                [4, 5, 6],
                [6, 7, 8],
                [8, 9, 10],
                [8, 9, 10, 11],
                [9, 10, 11],
                [10, 11],
                [11],
            ],
        ),  # fmt: skip
        (12, (1, 1, 1), [[0]] + [[i] for i in range(12)] + [[11]]),
        # the paper's depth and SmolLM2's: head, middle windows from block fill - stride, tail
        (30, (2, 1, 4), HEAD + [[i, i + 1] for i in range(3, 26)] + _tail(30)),
        (32, (2, 1, 4), HEAD + [[i, i + 1] for i in range(3, 28)] + _tail(32)),
        (30, (3, 2, 4), HEAD + [[i, i + 1, i + 2] for i in range(2, 27, 2)] + _tail(30)),
        (32, (3, 2, 4), HEAD + [[i, i + 1, i + 2] for i in range(2, 29, 2)] + _tail(32)),
        (30, (1, 1, 1), [[0]] + [[i] for i in range(30)] + [[29]]),
        (32, (1, 1, 1), [[0]] + [[i] for i in range(32)] + [[31]]),
        # below the fill: head and tail clipped to the blocks there are
        (1, (3, 2, 4), [[0], [0], [0]]),
        (2, (3, 2, 4), [[0], [0, 1], [0, 1], [0, 1], [1]]),
        (5, (3, 2, 4), HEAD + _tail(5)),
        (1, (1, 1, 1), [[0], [0], [0]]),
        (2, (1, 1, 1), [[0], [0], [1], [1]]),
        (5, (1, 1, 1), [[0]] + [[i] for i in range(5)] + [[4]]),
    ],
)
def test_hand_written_schedules(n, wsf, expected):
    assert [list(w) for w in schedule(n, *wsf)] == expected
