"""The schedule is the same on any number of GPUs, and the training data stream is a
function of (seed, position) alone."""
import glob
import os

import numpy as np
import pytest

from ldvc_d2.engine.data import StreamBatchSampler, derive_seed
from ldvc_d2.engine.schedule import BatchPlan, batch_plan, resolve_schedule
from tests.conftest import REPO, tiny_cfg

CONFIGS = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 if not os.path.basename(p).startswith("Base-"))


@pytest.mark.parametrize("total,world,cap", [(16, 1, 4), (16, 2, 4), (16, 4, 4), (16, 8, 4), (16, 1, 6),
                                             (16, 1, 0), (8, 2, 3), (12, 4, 1)])
def test_batch_plan_splits_the_total_batch(total, world, cap):
    cfg = tiny_cfg("configs/demo.yaml", "SOLVER.IMS_PER_BATCH", str(total), "SOLVER.MAX_IMS_PER_GPU", str(cap))
    plan = batch_plan(cfg, world)
    assert plan.total == total and plan.world == world
    assert plan.world * plan.steps * plan.per_step == total
    assert cap == 0 or plan.per_step <= cap
    share = total // world
    fewer = [k for k in range(1, plan.steps) if share % k == 0 and (cap == 0 or share // k <= cap)]
    assert not fewer  # no smaller number of accumulation steps would do


def test_batch_plan_errors_name_the_key():
    with pytest.raises(ValueError, match="SOLVER.IMS_PER_BATCH"):
        batch_plan(tiny_cfg("configs/demo.yaml", "SOLVER.IMS_PER_BATCH", "16"), 3)
    with pytest.raises(ValueError, match="SOLVER.MAX_IMS_PER_GPU"):
        batch_plan(tiny_cfg("configs/demo.yaml", "SOLVER.MAX_IMS_PER_GPU", "-1"), 1)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_trains_the_same_schedule_on_1_2_4_8_gpus(config):
    cfg = tiny_cfg(config)
    keys = ("IMS_PER_BATCH", "BASE_LR", "MAX_ITER", "WARMUP_ITERS", "CHECKPOINT_PERIOD")
    written = [cfg.SOLVER[k] for k in keys]
    for world in (w for w in (1, 2, 4, 8) if cfg.SOLVER.IMS_PER_BATCH % w == 0):  # the quick start: 4 images
        resolved = resolve_schedule(cfg, world)
        assert [resolved.SOLVER[k] for k in keys] == written, (config, world)
        plan = batch_plan(resolved, world)
        assert plan.total == cfg.SOLVER.IMS_PER_BATCH
    if cfg.SOLVER.IMS_PER_BATCH == 16:  # LDVC/ZegCLIP: the paper's 4 images per GPU; C2S: 16 on 8 GPUs = 2
        per_gpu = 2 if "configs/c2s/" in config else 4
        assert cfg.SOLVER.MAX_IMS_PER_GPU == per_gpu
        assert batch_plan(cfg, 1) == BatchPlan(16, 1, 16 // per_gpu, per_gpu)


def test_reference_world_size_opts_in_to_detectron2_rescaling():
    cfg = tiny_cfg("configs/voc.yaml", "SOLVER.REFERENCE_WORLD_SIZE", "4")
    one = resolve_schedule(cfg, 1)
    assert one.SOLVER.IMS_PER_BATCH == 4 and one.SOLVER.MAX_ITER == 4 * cfg.SOLVER.MAX_ITER
    assert one.SOLVER.BASE_LR == pytest.approx(cfg.SOLVER.BASE_LR / 4)


def test_transductive_weights_are_a_checkpoint_of_the_inductive_run_on_any_gpu_count():
    for name in ("voc", "coco_stuff"):
        stage2, stage1 = tiny_cfg(f"configs/transductive/{name}.yaml"), tiny_cfg(f"configs/{name}.yaml")
        iteration = int(os.path.basename(stage2.MODEL.WEIGHTS)[len("model_"):-len(".pth")])
        for world in (1, 2, 4, 8):
            s1 = resolve_schedule(stage1, world).SOLVER
            assert (iteration + 1) % s1.CHECKPOINT_PERIOD == 0 and iteration < s1.MAX_ITER - 1, (name, world)
        assert os.path.dirname(stage2.MODEL.WEIGHTS) == stage1.OUTPUT_DIR


def _stream(num_images, plan, rank, seed=7, start=0, iterations=3):
    sampler = iter(StreamBatchSampler(num_images, plan, rank, seed, start))
    return [[next(sampler) for _ in range(plan.steps)] for _ in range(iterations)]


def test_every_split_of_the_batch_sees_the_same_images_per_step():
    splits = [BatchPlan(4, 1, 1, 4), BatchPlan(4, 1, 4, 1), BatchPlan(4, 2, 1, 2), BatchPlan(4, 2, 2, 1),
              BatchPlan(4, 4, 1, 1)]
    seen = []
    for plan in splits:
        per_iteration = [[] for _ in range(3)]
        for rank in range(plan.world):
            for i, steps in enumerate(_stream(10, plan, rank)):
                per_iteration[i] += [key for micro in steps for key in micro]
        seen.append([sorted(keys) for keys in per_iteration])
    assert all(s == seen[0] for s in seen)
    positions = [p for keys in seen[0] for p, _ in keys]
    assert positions == list(range(12))


def test_each_epoch_is_a_permutation_and_depends_on_the_seed():
    plan = BatchPlan(5, 1, 1, 5)
    indices = [i for steps in _stream(10, plan, 0, iterations=4) for micro in steps for _, i in micro]
    assert sorted(indices[:10]) == sorted(indices[10:]) == list(range(10))
    assert indices[:10] != indices[10:]
    other = [i for steps in _stream(10, plan, 0, seed=8, iterations=2) for micro in steps for _, i in micro]
    assert other != indices[:10]
    expected = np.random.Generator(np.random.PCG64(derive_seed(7, 0, 0))).permutation(10).tolist()
    assert indices[:10] == expected  # the documented definition, independently computed


def test_a_stream_started_later_continues_the_same_stream():
    plan = BatchPlan(4, 2, 2, 1)
    full = _stream(7, plan, 1, iterations=5)
    assert _stream(7, plan, 1, start=3, iterations=2) == full[3:]


class _FixedStream:
    """The same micro-batches every iteration, in the shape AccumulatingTrainer reads."""

    seed, start_iter = 0, 0

    def __init__(self, micro_batches):
        self.micro_batches = micro_batches

    def __iter__(self):
        while True:
            yield self.micro_batches


def _one_step(model, micro_batches):
    import torch
    from detectron2.utils.events import EventStorage

    from ldvc_d2.engine.train_loop import AccumulatingTrainer

    trainer = AccumulatingTrainer(model, _FixedStream(micro_batches), torch.optim.SGD(model.parameters(), lr=1e-3))
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_accumulation_is_the_full_batch_step_even_with_an_image_without_classes():
    """4 images in one forward = 4 accumulation steps of 1, to float precision, also when one image has no
    training class at all (its loss divides by max(0, 1) = 1, the full batch by the total count)."""
    import torch
    from detectron2.modeling import build_model

    from tests.conftest import registered_toy_dataset

    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, 5, (64, 64), generator=g), torch.full((64, 64), 255), torch.randint(0, 5, (64, 64), generator=g),
              torch.full((64, 64), 2)]  # class 2 is unseen: no training class present
    batch = [{"image": torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8), "sem_seg": t} for t in labels]
    with registered_toy_dataset("toy_accumulation") as name:
        cfg = tiny_cfg("configs/demo.yaml", "DATASETS.TRAIN", f"('{name}',)", "MODEL.LDVC.LCTD.DROPOUT", "0.0",
                       "MODEL.LDVC.LCTD.ATTN_DROPOUT", "0.0")
        torch.manual_seed(0)
        model = build_model(cfg).train()
        start = {k: v.clone() for k, v in model.state_dict().items()}
        full = _one_step(model, [batch])
        model.load_state_dict(start)
        accumulated = _one_step(model, [[x] for x in batch])
    moved = max((full[k] - start[k]).abs().max().item() for k in full)
    diff = max((full[k] - accumulated[k]).abs().max().item() for k in full)
    assert moved > 0 and diff < 1e-4 * moved, (diff, moved)
