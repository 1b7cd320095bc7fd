"""The protocol configs of the five training-free rooms (configs/<method>/<benchmark>.yaml) against the
per-benchmark protocol of each paper's released configs, written out here (docs/training_free.md):
(short side, window, stride, probability threshold, logit scale)."""
import pytest

from tests.conftest import tiny_cfg

DATASETS = {"voc21": "voc21_val", "context60": "context60_val", "coco_object": "coco_object_val_harness", "voc20": "voc20_val",
            "context59": "context59_val", "coco_stuff": "coco_stuff_zs_val", "cityscapes": "cityscapes_val",
            "ade150": "ade150_val"}
_SCLIP_SIDES = {"voc21": 336, "context60": 336, "coco_object": 336, "voc20": 336, "context59": 336, "coco_stuff": 448,
                "cityscapes": 560, "ade150": 336}
PROTOCOL = {  # method -> benchmark -> (S, crop, stride, prob threshold, logit scale)
    "sclip": {k: (s, 224, 112, {"voc21": .1, "context60": .1, "coco_object": .1}.get(k, 0.0),
                  {"voc21": 65.0, "context60": 50.0, "coco_object": 50.0}.get(k, 40.0)) for k, s in _SCLIP_SIDES.items()},
    "naclip": {k: (s, 224, 112, {"voc21": .1, "context60": .1, "coco_object": .1}.get(k, 0.0), 40.0)
               for k, s in _SCLIP_SIDES.items()},
    "maskclip": {k: (s, 224, 112, {"voc21": .1, "context60": .1, "coco_object": .1}.get(k, 0.0), 40.0)
                 for k, s in _SCLIP_SIDES.items()},
    "clearclip": {k: (448, 224 if k == "cityscapes" else 448, 224,
                      {"voc21": .5, "context60": .15, "coco_object": .4}.get(k, 0.0), 50.0) for k in DATASETS},
    "proxyclip": {k: ({"cityscapes": 448, "ade150": 448}.get(k, 336), 224 if k == "cityscapes" else 336, 112,
                      {"voc21": .2, "context60": .15, "coco_object": .25}.get(k, 0.0), 40.0) for k in DATASETS},
}
META = {"sclip": "SCLIP", "naclip": "NACLIP", "maskclip": "MaskCLIP", "clearclip": "ClearCLIP", "proxyclip": "ProxyCLIP"}


@pytest.mark.parametrize("method", sorted(PROTOCOL))
def test_benchmark_configs_follow_the_papers_protocol(method):
    for bench, (side, crop, stride, thd, scale) in PROTOCOL[method].items():
        for suffix in ("", "_pamr") if method == "naclip" else ("",):
            cfg = tiny_cfg(f"configs/{method}/{bench}{suffix}.yaml")
            inf, tf = cfg.MODEL.SEGMENTOR.INFERENCE, cfg.MODEL.TRAINING_FREE
            got = (cfg.INPUT.MIN_SIZE_TEST, inf.CROP_SIZE, inf.STRIDE, tf.PROB_THRESHOLD, tf.LOGIT_SCALE)
            assert got == (side, crop, stride, thd, scale), f"{method}/{bench}{suffix}"
            assert cfg.MODEL.META_ARCHITECTURE == META[method] and cfg.DATASETS.TEST == (DATASETS[bench],)
            assert (inf.MODE, cfg.INPUT.MAX_SIZE_TEST, cfg.TEST.MIOU_RULE) == ("slide", 2048, "mmseg")
            assert inf.PAMR_STEPS == (10 if suffix else 0)
            assert tf.AREA_THRESHOLD == (0.1 if (method, bench) == ("sclip", "voc21") else 0.0)
            assert list(cfg.MODEL.CLIP.TEXT_TEMPLATES) == ["imagenet80"] and cfg.MODEL.CLIP.POS_INTERPOLATION == "bicubic"


def test_protocol_line_names_the_harness_settings():
    from ldvc_d2.modeling import NACLIP

    line = NACLIP.describe_protocol(tiny_cfg("configs/naclip/voc21_pamr.yaml"))
    assert "sliding window 224x224 stride 112" in line and "PAMR 10 steps dilations [8, 16]" in line
    assert "probability threshold 0.1" in line and "logit scale 40.0" in line and "naclip attention (sigma 5.0)" in line
