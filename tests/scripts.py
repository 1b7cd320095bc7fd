"""Import the repository's command-line scripts (tools/, demo/) as modules, to call their functions."""
import importlib.util
import os
import sys
from types import ModuleType

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


def run_train_net(*argv: str):
    """``python train_net.py *argv`` with one process, run in this process: the same parser and ``main``
    (train_net's launch calls ``main`` directly for one process). Returns ``main``'s results."""
    train_net = load_script("train_net.py")
    args = train_net.argument_parser().parse_args(list(argv))
    assert args.num_gpus == 1 and args.num_machines == 1, "several processes: run train_net.py itself"
    return train_net.main(args)
