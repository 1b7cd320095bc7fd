#!/usr/bin/env python
"""Train and evaluate LDVC (Language-Driven Visual Consensus) with Detectron2.

    python train_net.py --config-file configs/voc.yaml --num-gpus 4
    python train_net.py --config-file configs/voc.yaml --eval-only MODEL.WEIGHTS output/model_final.pth

SOLVER.IMS_PER_BATCH is the *total* batch over all GPUs (the paper: 16 on 4 GPUs).
"""
import contextlib
import functools
import logging
import os
import time

import torch

import ldvc_d2  # noqa: F401  (first: applies the detectron2 0.6 shims; registers model, datasets, evaluator)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import DatasetEvaluators, verify_results
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ldvc_d2 import add_ldvc_config
from ldvc_d2.data import LDVCTestMapper, LDVCTrainMapper, add_register_argument, load_user_modules
from ldvc_d2.evaluation import ZeroShotSemSegEvaluator
from ldvc_d2.solver import build_lr_scheduler, build_optimizer


def inference_protocol(cfg) -> str:
    """One line describing how test predictions are made, logged by the evaluator: the method's own
    description (``describe_protocol`` of the registered meta-architecture)."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    describe = getattr(arch, "describe_protocol", None)
    return describe(cfg) if describe is not None else f"{cfg.MODEL.META_ARCHITECTURE}, short side {cfg.INPUT.MIN_SIZE_TEST}"


@contextlib.contextmanager
def ddp_kwargs(**kwargs):
    """Extra DistributedDataParallel arguments for the model DefaultTrainer wraps in its __init__."""
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    defaults.create_ddp_model = functools.partial(original, **kwargs)
    try:
        yield
    finally:
        defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """DefaultTrainer with LDVC's data mappers, zero-shot evaluator and optimizer."""

    def __init__(self, cfg):
        # ZegCLIP's head has trainable weights that get no gradient (its last layer after the attention
        # logits, and the never-called self-attention kept for the official parameter count): DDP must be
        # told so.
        unused = cfg.MODEL.SEM_SEG_HEAD.NAME == "ZegCLIPHead"
        with ddp_kwargs(find_unused_parameters=True) if unused else contextlib.nullcontext():
            super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type != "zero_shot_sem_seg":
            raise ValueError(
                f"Dataset '{dataset_name}' has evaluator_type={evaluator_type!r}; ldvc_d2 evaluates "
                "datasets registered with evaluator_type='zero_shot_sem_seg' (see datasets/README.md)."
            )
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators([ZeroShotSemSegEvaluator(
            dataset_name, distributed=True, output_dir=output_folder, protocol=inference_protocol(cfg)
        )])

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=LDVCTrainMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=LDVCTestMapper(cfg, dataset_name))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)


def setup(args):
    cfg = get_cfg()
    add_ldvc_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        logging.getLogger("ldvc_d2").warning("No CUDA device: running on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ldvc_d2")
    return cfg


def main(args):
    if args.register:
        load_user_modules(args.register)  # in every process: users' own dataset registrations
    cfg = setup(args)
    start = time.perf_counter()
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        res = trainer.train()
    logging.getLogger("ldvc_d2").info(f"Finished in {time.perf_counter() - start:.1f} s.")
    return res


if __name__ == "__main__":
    parser = default_argument_parser()
    add_register_argument(parser)
    args = parser.parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
