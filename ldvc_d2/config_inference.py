"""Config keys for speed (issue 15): batched sliding windows, half-precision inference, AMP training."""
from detectron2.config import CfgNode as CN

from .utils.precision import AMP_DTYPES, PRECISION_DTYPES

__all__ = ["add_inference_config", "inference_config_problems"]


def add_inference_config(cfg: CN) -> None:
    """Add the speed keys (called at the end of ``add_ldvc_config``)."""
    # Windows (sliding windows of one image, and of consecutive images of a batch with the same window size
    # and vocabulary) scored in one forward pass, at most this many; 0 or 1 = one window per pass. Scores
    # equal one-by-one's to float rounding (tests/test_batched_windows.py). 8 (ours): all 5 windows of a
    # 512x2048 image at crop 512 / stride 426, or of four 512x683 images (2 each), in one pass; the cost is
    # 8 windows' C x 512 x 512 fp32 scores at once (1.4 GB at 171 classes); lower it on small GPUs.
    cfg.MODEL.LDVC.INFERENCE.WINDOW_BATCH = 8
    # Arithmetic of the window forward passes: "fp32", "bf16" or "fp16" (torch.autocast on MODEL.DEVICE;
    # scores are returned, averaged and calibrated in fp32; text embeddings are encoded in fp32).
    cfg.MODEL.LDVC.INFERENCE.PRECISION = "fp32"
    # Autocast dtype of SOLVER.AMP.ENABLED training: "float16" (with a GradScaler) or "bfloat16" (no scaler;
    # the one CPUs run). detectron2's AMPTrainer has float16 only.
    cfg.SOLVER.AMP.DTYPE = "float16"


def inference_config_problems(cfg: CN) -> list:
    """What is wrong with the keys above (for ``validate_config``), each naming its key."""
    problems = []
    inference = cfg.MODEL.LDVC.INFERENCE
    if int(inference.WINDOW_BATCH) < 0:
        problems.append(f"MODEL.LDVC.INFERENCE.WINDOW_BATCH is {inference.WINDOW_BATCH}; it must be >= 0 "
                        "(0 or 1: one window per forward pass)")
    if inference.PRECISION not in PRECISION_DTYPES:
        problems.append(f"MODEL.LDVC.INFERENCE.PRECISION is '{inference.PRECISION}'; use one of {list(PRECISION_DTYPES)}")
    if cfg.SOLVER.AMP.DTYPE not in AMP_DTYPES:
        problems.append(f"SOLVER.AMP.DTYPE is '{cfg.SOLVER.AMP.DTYPE}'; use one of {list(AMP_DTYPES)}")
    return problems
