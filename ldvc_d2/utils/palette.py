"""Class colours: the PASCAL VOC palette rule, shared by the dataset registrations (``stuff_colors``) and
the pictures of predictions (:mod:`.visualization`)."""
from typing import List, Tuple

__all__ = ["class_colors"]


def class_colors(num_classes: int) -> List[Tuple[int, int, int]]:
    """Distinct RGB colours, class k gets PASCAL VOC palette entry k + 1 (so VOC classes keep their
    familiar colours). The palette rule spreads the 24 bits of k + 1 over R, G, B, so it stays
    distinct past 255 entries (Context-459, ADE-full)."""
    assert num_classes < 2 ** 24, "the VOC palette rule gives 2**24 - 1 distinct colours"
    colors: List[Tuple[int, int, int]] = []
    for k in range(1, num_classes + 1):
        rgb = [0, 0, 0]
        label = k
        for shift in range(7, -1, -1):
            for c in range(3):
                rgb[c] |= ((label >> c) & 1) << shift
            label >>= 3
        colors.append((rgb[0], rgb[1], rgb[2]))
    return colors
