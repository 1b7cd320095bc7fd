"""Where inference windows lie in an image and which of them share a forward pass (DESIGN §1.4).

The grid is mmseg's ``slide_inference`` (the protocol ZegCLIP's and LDVC's published numbers come from):
``ceil((size - crop) / stride) + 1`` windows per axis every ``stride`` pixels, the last one clamped to the
image edge, row-major; an image smaller than the crop in one direction gets windows of its own size there.
So every window of one image has the same size, ``(min(crop, h), min(crop, w))``, and the windows of
consecutive images of the same size (and vocabulary) can be stacked into one batch.
"""
import math
from typing import Callable, Hashable, Iterator, List, Sequence, Tuple, TypeVar

__all__ = ["Box", "slide_boxes", "consecutive_chunks"]

Box = Tuple[int, int, int, int]  # (y1, y2, x1, x2), pixel rows y1..y2-1 and columns x1..x2-1
T = TypeVar("T")


def slide_boxes(h: int, w: int, crop: int, stride: int) -> List[Box]:
    """The windows of an h×w image in mmseg's grid, row-major (the order their scores are summed in)."""
    rows = max(math.ceil((h - crop) / stride), 0) + 1
    cols = max(math.ceil((w - crop) / stride), 0) + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride, max(h - crop, 0)), min(c * stride, max(w - crop, 0))
            boxes.append((y1, min(y1 + crop, h), x1, min(x1 + crop, w)))
    return boxes


def consecutive_chunks(items: Sequence[T], key: Callable[[T], Hashable], limit: int) -> Iterator[List[T]]:
    """``items`` in order, cut into runs of at most ``limit`` (>= 1) consecutive items with equal ``key``:
    the order of the items (and so of every sum over them) is that of one-by-one processing."""
    chunk: List[T] = []
    for item in items:
        if chunk and (len(chunk) == limit or key(item) != key(chunk[0])):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk
