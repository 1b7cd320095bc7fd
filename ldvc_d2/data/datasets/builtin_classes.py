"""Class lists and seen/unseen splits of the four benchmarks, as plain data (DESIGN.md §3).

Every list is the benchmark's full class order: a prepared label value ``k`` means ``CLASSES[k]``,
255 means ignore. Unseen splits are stored twice on purpose — as names (how papers state them) and
as indices (how the code uses them) — and :func:`check_split` asserts at import time that the two
agree, so an edit to one without the other fails loudly instead of silently moving the split.
The module imports nothing of ldvc_d2: the ``datasets/prepare_*.py`` scripts load it by path.
"""
from typing import Dict, List, Sequence, Tuple

__all__ = [
    "VOC_CLASSES", "VOC_UNSEEN_NAMES", "VOC_UNSEEN",
    "COCO_STUFF_CLASSES", "COCO_STUFF_UNSEEN_NAMES", "COCO_STUFF_UNSEEN",
    "COCO_STUFF_UNUSED_IDS", "COCO_STUFF_NUM_IDS",
    "CONTEXT59_CLASSES", "CONTEXT59_UNSEEN_NAMES", "CONTEXT59_UNSEEN",
    "ADE150_CLASSES", "BACKGROUND", "VOC21_CLASSES", "CONTEXT60_CLASSES", "COCO_OBJECT_CLASSES",
    "VOC_PROMPT_NAMES", "CONTEXT59_PROMPT_NAMES", "ADE150_PROMPT_NAMES", "VOC21_BACKGROUND_NAMES",
    "CONTEXT60_BACKGROUND_NAMES", "COCO_OBJECT_BACKGROUND_NAMES",
    "CITYSCAPES_CLASSES", "CITYSCAPES_LABEL_IDS",
    "check_split", "seen_indices",
]

# PASCAL VOC 2012, 20 object classes; background (VOC id 0) is ignored. Label k = VOC id k + 1.
VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
VOC_UNSEEN_NAMES: Tuple[str, ...] = ("pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOC_UNSEEN: Tuple[int, ...] = (15, 16, 17, 18, 19)

# COCO-Stuff 164k, 171 classes: the 80 COCO things, then the 91 stuff classes, in id order.
COCO_STUFF_CLASSES: Tuple[str, ...] = (
    # things (stuffthingmaps ids 0-90 minus the 11 unused ones)
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    # stuff (stuffthingmaps ids 91-181)
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCO_STUFF_UNSEEN_NAMES: Tuple[str, ...] = (
    "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
    "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete",
)
COCO_STUFF_UNSEEN: Tuple[int, ...] = (
    19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160,
)
# stuffthingmaps_trainval2017 PNGs hold 0-based ids 0..181 (COCO's 1-based ids minus 1) and 255.
# These 11 thing ids (1-based 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91) name no class.
COCO_STUFF_NUM_IDS = 182
COCO_STUFF_UNUSED_IDS: Tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

# PASCAL Context, the 59 most frequent classes (ordered by their id in the 459-class labels.txt,
# which is alphabetical). The other 400 classes and "background" are ignored.
CONTEXT59_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)
CONTEXT59_UNSEEN_NAMES: Tuple[str, ...] = (
    "cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor", "aeroplane",
    "keyboard",
)
CONTEXT59_UNSEEN: Tuple[int, ...] = (19, 33, 48, 14, 7, 24, 6, 54, 0, 31)

# ADE20K SceneParsing (ADEChallengeData2016), 150 classes; annotation k (1..150) = class k - 1.
ADE150_CLASSES: Tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)

# ------------------------------------------------------------------------------------- Cityscapes
# The 19 evaluation classes (cityscapesScripts helpers/labels.py: the labels whose trainId is not
# 255), in trainId order, and the labelId each comes from (the value in *_gtFine_labelIds.png);
# every other labelId (unlabelled, ego vehicle, ..., caravan, trailer) is ignored (255).
CITYSCAPES_CLASSES: Tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
CITYSCAPES_LABEL_IDS: Tuple[int, ...] = (
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# --------------------------------------------------------------------- benchmarks with background
# CLIPtrase's VOC-21, Context-60 and COCO-Object count "background" as a class. Label 0 is background
# in VOC-21 (VOC id 0; 1..20 = the VOC classes, 255 boundary) and Context-60 (everything outside the 59
# classes; 1..59 = Context-59 + 1). COCO-Object keeps the 80 COCO-Stuff thing indices 0..79 and puts
# background (all 91 stuff classes) last, at 80; 255 (unlabelled) stays ignored.
BACKGROUND = "background"
VOC21_CLASSES: Tuple[str, ...] = (BACKGROUND,) + VOC_CLASSES
CONTEXT60_CLASSES: Tuple[str, ...] = (BACKGROUND,) + CONTEXT59_CLASSES
COCO_OBJECT_CLASSES: Tuple[str, ...] = COCO_STUFF_CLASSES[:80] + (BACKGROUND,)

# The class names CLIPtrase's official code prompts with (configs/dataset_cfg.py, MIT), where they
# differ from the dataset's names above; registered as metadata ``prompt_class_names``. COCO-Stuff,
# COCO-Object, Context-459 and ADE-full use the dataset's names. ADE150's "bed " (trailing space) is
# the official string; CLIP's tokenizer gives it the same tokens as "bed".
VOC_PROMPT_NAMES: Tuple[str, ...] = VOC_CLASSES[:-1] + ("tv",)
CONTEXT59_PROMPT_NAMES: Tuple[str, ...] = tuple(
    "diningtable" if n == "table" else n for n in CONTEXT59_CLASSES)
ADE150_PROMPT_NAMES: Tuple[str, ...] = tuple("bed " if n == "bed" else n for n in ADE150_CLASSES)

# The official code's background words (metadata ``background_names``): each gets a text embedding,
# and a pixel whose arg-max is any of them is background. VOC-21's list is kept as the code evaluates
# it: 33 words with "bed" twice and "beachhill" (a missing comma joins 'beach' 'hill').
VOC21_BACKGROUND_NAMES: Tuple[str, ...] = (
    "background", "sky", "wall", "white", "tree", "wood", "grass", "road", "trail", "sea", "river",
    "water", "box", "signboard", "mountain", "sands", "bed", "bed", "building", "cloud", "lamp",
    "door", "window", "wardrobe", "ceiling", "shelf", "curtain", "stair", "floor", "ground",
    "beachhill", "rail", "fence",
)
CONTEXT60_BACKGROUND_NAMES: Tuple[str, ...] = (BACKGROUND,)
# 16 coarse stuff words, then the 91 COCO-Stuff stuff names in label order (107 words).
COCO_OBJECT_BACKGROUND_NAMES: Tuple[str, ...] = (
    "textile", "building", "furniture", "structural", "floor", "ceiling", "sky", "ground", "water",
    "food", "solid", "wall", "window", "desk", "lamp", "wardrobe",
) + COCO_STUFF_CLASSES[80:]


def check_split(
    classes: Sequence[str], unseen: Sequence[int], unseen_names: Sequence[str], num: int
) -> None:
    """Raise ``AssertionError`` unless ``classes`` has ``num`` unique names and ``unseen`` indexes
    exactly ``unseen_names`` (same order)."""
    assert len(classes) == num, f"expected {num} class names, got {len(classes)}"
    assert len(set(classes)) == num, "duplicate class names"
    got = tuple(classes[i] for i in unseen)
    assert got == tuple(unseen_names), f"unseen indices {tuple(unseen)} name {got}, " \
                                       f"expected {tuple(unseen_names)}"


def seen_indices(num_classes: int, unseen: Sequence[int]) -> List[int]:
    """All indices in ``range(num_classes)`` that are not in ``unseen``, ascending."""
    unseen_set = set(unseen)
    return [i for i in range(num_classes) if i not in unseen_set]


_SPLITS: Dict[str, tuple] = {
    "voc": (VOC_CLASSES, VOC_UNSEEN, VOC_UNSEEN_NAMES, 20),
    "coco_stuff": (COCO_STUFF_CLASSES, COCO_STUFF_UNSEEN, COCO_STUFF_UNSEEN_NAMES, 171),
    "context59": (CONTEXT59_CLASSES, CONTEXT59_UNSEEN, CONTEXT59_UNSEEN_NAMES, 59),
    "ade150": (ADE150_CLASSES, (), (), 150),
    "voc21": (VOC21_CLASSES, (), (), 21),
    "context60": (CONTEXT60_CLASSES, (), (), 60),
    "coco_object": (COCO_OBJECT_CLASSES, (), (), 81),
    "cityscapes": (CITYSCAPES_CLASSES, (), (), 19),
}
for _name, _split in _SPLITS.items():
    check_split(*_split)
assert COCO_STUFF_NUM_IDS - len(COCO_STUFF_UNUSED_IDS) == len(COCO_STUFF_CLASSES)
assert len(CITYSCAPES_LABEL_IDS) == len(set(CITYSCAPES_LABEL_IDS)) == len(CITYSCAPES_CLASSES)
assert len(VOC21_BACKGROUND_NAMES) == 33 and len(COCO_OBJECT_BACKGROUND_NAMES) == 107
