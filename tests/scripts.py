"""Import the repository's scripts (tools/, demo/, train_net.py) as modules, to call their functions."""
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Tuple

from tests.conftest import REPO


def load_script(relative_path: str) -> ModuleType:
    """The script at ``REPO/relative_path`` as a module named after its file (imported once)."""
    name = "script_" + os.path.splitext(relative_path.replace(os.sep, "_"))[0]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relative_path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class _Records(logging.Handler):
    """Every log record, once (a record may reach several of the loggers the handler is attached to)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("[%(name)s]: %(message)s"))
        self.lines, self._last = [], None

    def emit(self, record: logging.LogRecord) -> None:
        if record is not self._last:
            self._last = record
            self.lines.append(self.format(record))


def run_train_net(*argv: str) -> Tuple[object, str]:
    """``python train_net.py *argv`` with one process, run in this process: the same parser and ``main``
    (train_net's launch calls ``main`` directly for one process). Returns ``main``'s results and the log
    lines of the run (detectron2's, ldvc_d2's, ...), one record a line as ``[logger]: message``."""
    from detectron2.utils.logger import setup_logger

    train_net = load_script("train_net.py")
    args = train_net.argument_parser().parse_args(list(argv))
    assert args.num_gpus == 1 and args.num_machines == 1, "several processes: run train_net.py itself"
    handler = _Records()
    # detectron2's setup_logger stops propagation of these; the root logger gets everything else
    loggers = [logging.getLogger(name) for name in ("", "detectron2", "d2", "fvcore", "ldvc_d2")]
    before = {logger.name: list(logger.handlers) for logger in loggers}
    for logger in loggers:
        logger.addHandler(handler)
    try:
        results = train_net.main(args)
    finally:
        # the run's own handlers (console, OUTPUT_DIR/log.txt) go with it, as they would with its process:
        # otherwise every later run in this process would also print and write into this run's log file
        for logger in loggers:
            for h in [h for h in logger.handlers if h not in before[logger.name]]:
                logger.removeHandler(h)
                if h is not handler:
                    h.close()
        if hasattr(setup_logger, "cache_clear"):
            setup_logger.cache_clear()  # a later run with the same OUTPUT_DIR sets its handlers up again
    return results, "\n".join(handler.lines)
