#!/usr/bin/env python
"""Train and evaluate LDVC (Language-Driven Visual Consensus) with Detectron2.

    python train_net.py --config-file configs/voc.yaml --num-gpus 4
    python train_net.py --config-file configs/voc.yaml --eval-only MODEL.WEIGHTS output/model_final.pth

SOLVER.IMS_PER_BATCH is the *total* batch of one step (the paper: 16), trained as written on any number
of GPUs (gradient accumulation where SOLVER.MAX_IMS_PER_GPU asks for it). Without CUDA, --num-gpus N
runs N CPU processes (gloo); several machines: --num-machines, --machine-rank, --dist-url (README).
"""
import argparse
import logging
import os
import time
import weakref

import torch

import ldvc_d2  # noqa: F401  (first: applies the detectron2 0.6 shims; registers model, datasets, evaluator)
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, default_argument_parser, default_setup
from detectron2.evaluation import DatasetEvaluators, verify_results
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ldvc_d2 import add_ldvc_config
from ldvc_d2.checkpoint import Checkpointer, training_free
from ldvc_d2.config import load_config_file, merge_overrides, validate_config
from ldvc_d2.data import LDVCTestMapper, LDVCTrainMapper, add_register_argument, load_user_modules
from ldvc_d2.engine.data import build_train_stream
from ldvc_d2.engine.launch import create_ddp_model, launch, maybe_sync_batchnorm
from ldvc_d2.engine.schedule import resolve_schedule
from ldvc_d2.engine.train_loop import AccumulatingTrainer
from ldvc_d2.evaluation import ZeroShotSemSegEvaluator
from ldvc_d2.modeling import inference_model
from ldvc_d2.solver import build_lr_scheduler, build_optimizer
from ldvc_d2.utils.precision import AMP_DTYPES


def inference_protocol(cfg) -> str:
    """One line describing how test predictions are made, logged by the evaluator: the method's own
    description (``describe_protocol`` of the registered meta-architecture)."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    describe = getattr(arch, "describe_protocol", None)
    return describe(cfg) if describe is not None else f"{cfg.MODEL.META_ARCHITECTURE}, short side {cfg.INPUT.MIN_SIZE_TEST}"


class Trainer(DefaultTrainer):
    """DefaultTrainer with LDVC's data stream, mappers, zero-shot evaluator and optimizer.

    Differences from detectron2's (ldvc_d2.engine): the schedule is trained as written on any number of
    processes, with gradient accumulation where SOLVER.MAX_IMS_PER_GPU asks for it; the data stream and
    the dropout seeds are functions of (seed, iteration), so ``--resume`` continues exactly; DDP works on
    CPUs (gloo); checkpoints hold the optimizer (detectron2 v0.6 leaves it out) and are saved atomically.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)  # DefaultTrainer.__init__'s steps, with the pieces above
        cfg = resolve_schedule(cfg, comm.get_world_size())
        model = maybe_sync_batchnorm(self.build_model(cfg), comm.get_world_size())  # C2S's student on GPUs
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        # ZegCLIP's head has trainable weights that get no gradient (its last layer after the attention
        # logits, and the never-called self-attention kept for the official parameter count): DDP must be
        # told so.
        unused = cfg.MODEL.SEM_SEG_HEAD.NAME == "ZegCLIPHead"
        model = create_ddp_model(model, broadcast_buffers=False, find_unused_parameters=unused)
        amp_dtype = AMP_DTYPES[cfg.SOLVER.AMP.DTYPE] if cfg.SOLVER.AMP.ENABLED else None
        self._trainer = AccumulatingTrainer(model, data_loader, optimizer, amp_dtype=amp_dtype)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, partial_load=cfg.MODEL.WEIGHTS_PARTIAL_LOAD,
                                         trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def state_dict(self):
        """Iteration, hook states, the optimizer (as current detectron2 stores it) and the data seed."""
        return {**TrainerBase.state_dict(self), "_trainer": self._trainer.state_dict(), "data_seed": self.data_loader.seed}

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logging.getLogger("ldvc_d2").warning("The checkpoint holds no optimizer state (detectron2 v0.6 "
                                                 "trainer); resuming with a fresh optimizer.")
        if "data_seed" in state_dict:
            self.data_loader.seed = int(state_dict["data_seed"])

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, weights=None):
        """``weights``: the evaluated weights (Checkpointer.load_status), recorded in sem_seg_metrics.json."""
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type != "zero_shot_sem_seg":
            raise ValueError(
                f"Dataset '{dataset_name}' has evaluator_type={evaluator_type!r}; ldvc_d2 evaluates "
                "datasets registered with evaluator_type='zero_shot_sem_seg' (see datasets/README.md)."
            )
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators([ZeroShotSemSegEvaluator(
            dataset_name, distributed=True, output_dir=output_folder, protocol=inference_protocol(cfg), weights=weights,
            miou_rule=cfg.TEST.MIOU_RULE, skip_no_object_images=cfg.TEST.SKIP_NO_OBJECT_IMAGES,
        )])

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_stream(cfg, LDVCTrainMapper(cfg, True))

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
    load_config_file(cfg, args.config_file)  # YAML safe loader: a !!python tag is an error, never code
    merge_overrides(cfg, args.opts)
    validate_config(cfg, training=not args.eval_only)
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
        model = inference_model(Trainer.build_model(cfg))  # training-only modules (C2S) are dropped
        checkpointer = Checkpointer(model, save_dir=cfg.OUTPUT_DIR, partial_load=cfg.MODEL.WEIGHTS_PARTIAL_LOAD)
        if not cfg.MODEL.WEIGHTS and not (args.resume and checkpointer.has_checkpoint()) and not training_free(cfg):
            raise ValueError(f"--eval-only without MODEL.WEIGHTS would evaluate an untrained (random) "
                             f"{cfg.MODEL.META_ARCHITECTURE}; pass MODEL.WEIGHTS output/<run>/model_final.pth.")
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model, [Trainer.build_evaluator(cfg, name, weights=checkpointer.load_status)
                                        for name in cfg.DATASETS.TEST])
        if comm.is_main_process():
            verify_results(cfg, res)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        res = trainer.train()
    logging.getLogger("ldvc_d2").info(f"Finished in {time.perf_counter() - start:.1f} s.")
    return res


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's default options (--config-file, --eval-only, --resume, --num-gpus, ...) and --register."""
    parser = default_argument_parser()
    add_register_argument(parser)
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
