"""Training machinery of ldvc_d2 that detectron2 does not provide the same way in every version.

* :mod:`.launch`: ``launch`` (multi-process runs on CPUs with gloo; GPUs go through detectron2's own
  launch unchanged) and ``create_ddp_model`` (no ``device_ids`` for a CPU module).
* :mod:`.schedule`: the total batch SOLVER.IMS_PER_BATCH trained on any number of processes, with
  gradient accumulation where one process may hold fewer images (SOLVER.MAX_IMS_PER_GPU).
* :mod:`.data`: the training data stream, a pure function of (seed, position): the sampler and the
  per-sample augmentation seeds live here, so detectron2 v0.6 and current detectron2 train on the same
  data, and ``--resume`` continues the stream where it stopped.
* :mod:`.train_loop`: one optimizer step over the accumulation steps.
* :mod:`.normaliser`: the loop's side of how a loss tells it its normaliser (exact accumulation; the
  loss's side is :mod:`ldvc_d2.utils.normaliser`, below the models).
* :mod:`.speed_profile`: where a training step's time goes (tools/benchmark_speed.py).

Submodules are imported explicitly (``from ldvc_d2.engine.data import ...``): the package itself imports
none of them.
"""
