"""SliderQuant's window schedule: which blocks are trained together, in which order.

With window `W`, stride `S` and fill `F` (the authors' W2A16 config: 2, 1, 4) over `L`
blocks, as in the authors' `quantize/sliderquant.py`:

- head windows grow: [0], [0, 1], ..., [0 .. F-1];
- the middle slides windows of W blocks by S, the first starting at block F - S, for
  ceil((L - 2(F - S) - W) / S) + 1 windows (each cut at the last block);
- tail windows shrink: [L-F .. L-1], [L-F+1 .. L-1], ..., [L-1].

L = 32 gives 4 + 25 + 4 = 33 windows. Their code indexes below 0 when L < F and skips
blocks when S > W; here S > W is refused and F is clipped to L (a shallow model gets
head and tail windows over all its blocks). Their formula also gives no middle window
when the middle is shorter than a window, which leaves blocks untrained if the head and
tail do not meet (e.g. L = 13, W = 4, F = 6 skips block 6): here one middle window
bridges them. An explicit list such as "0-3,2-5,4-7"
(ranges, both ends included; our addition) must start at block 0, end at the last
block and leave no block out between windows.
"""

from __future__ import annotations

import math

from lwq.errors import LwqError


def schedule(n_blocks: int, window: int = 2, stride: int = 1, fill: int = 4) -> list[range]:
    """The windows of the sliding schedule over `n_blocks` blocks, in training order."""
    for key, value in (("window", window), ("stride", stride), ("fill", fill)):
        if not isinstance(value, int) or value < 1:
            raise LwqError(f"quant.settings.{key} must be a positive integer, got {value!r}")
    if stride > window:
        raise LwqError(
            f"quant.settings.stride={stride} is wider than the window ({window}): the blocks "
            "between windows would never be trained; use a stride of at most the window"
        )
    if n_blocks < 1:
        raise LwqError("a model without blocks has no windows")
    fill = min(fill, n_blocks)
    head = [range(0, i + 1) for i in range(fill)]
    tail = [range(n_blocks - fill + i, n_blocks) for i in range(fill)]
    start = max(fill - stride, 0)  # a stride beyond the fill would start before block 0
    middle_blocks = n_blocks - 2 * (fill - stride)
    rounds = math.ceil((middle_blocks - window) / stride) + 1
    if rounds < 1 and fill < n_blocks - fill:  # head and tail do not meet: bridge them
        rounds = 1
    middle = [
        range(start + r * stride, min(start + r * stride + window, n_blocks))
        for r in range(max(rounds, 0))
        if start + r * stride < n_blocks  # a window past the last block would be empty
    ]
    windows = head + middle + tail
    check_covers(windows, n_blocks)
    return windows


def parse_windows(text: str, n_blocks: int) -> list[range]:
    """An explicit schedule, "a-b,c-d,...": each a range of blocks, both ends included."""
    windows = []
    for part in str(text).split(","):
        ends = part.strip().split("-")
        if len(ends) != 2 or not all(e.strip().isdigit() for e in ends):
            raise LwqError(
                f"quant.settings.windows: {part.strip()!r} is not a range of blocks; "
                "write first-last pairs, e.g. 0-3,2-5,4-7"
            )
        first, last = (int(e) for e in ends)
        if last < first:
            raise LwqError(f"quant.settings.windows: {first}-{last} runs backwards")
        windows.append(range(first, last + 1))
    check_covers(windows, n_blocks)
    return windows


def check_covers(windows: list[range], n_blocks: int) -> None:
    """Windows start at block 0, end at the last block, stay inside the model and leave no
    block untrained between one window and the next."""
    if not windows or windows[0].start != 0:
        raise LwqError("quant.settings.windows must start at block 0")
    if any(w.stop > n_blocks for w in windows):
        raise LwqError(f"quant.settings.windows name a block past the last ({n_blocks - 1})")
    if windows[-1].stop != n_blocks:
        raise LwqError(f"quant.settings.windows must end at the last block ({n_blocks - 1})")
    reached = 0  # blocks 0 .. reached-1 are in some window so far
    for w in windows:
        if w.start > reached:
            raise LwqError(
                f"quant.settings.windows leave block {reached} out (the next window starts "
                f"at {w.start})"
            )
        reached = max(reached, w.stop)
