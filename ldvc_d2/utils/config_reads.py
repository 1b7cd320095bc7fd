"""Which config keys a piece of code reads: a CfgNode subclass that records every key looked up on it (used by
tools/config_table.py for configs/README.md's key table and by tests/test_configs.py: a config that sets a key its
method never reads fails)."""
import contextlib
from typing import Dict, Iterator, List, Set

from detectron2.config import CfgNode as CN

__all__ = ["ReadRecordingCfgNode", "recorded_reads", "set_keys"]

_READS: List[Set[str]] = []


class ReadRecordingCfgNode(CN):
    """A config whose attribute / ``get`` / item lookups are recorded (full dotted key) while
    :func:`recorded_reads` is active. Built from any config: ``ReadRecordingCfgNode(cfg)``."""

    def __init__(self, init_dict=None, key_list=None, new_allowed=False):
        super().__init__(init_dict, key_list, new_allowed)
        self.__dict__["_path"] = list(key_list or [])

    def _note(self, name):
        if _READS and isinstance(name, str) and dict.__contains__(self, name):
            _READS[-1].add(".".join(self.__dict__.get("_path", []) + [name]))

    def __getattr__(self, name):
        self._note(name)
        return super().__getattr__(name)

    def __getitem__(self, name):
        self._note(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self._note(name)
        return super().get(name, default)


@contextlib.contextmanager
def recorded_reads() -> Iterator[Set[str]]:
    """The set of full keys read (on ReadRecordingCfgNode configs) inside the block."""
    _READS.append(set())
    try:
        yield _READS[-1]
    finally:
        _READS.pop()


def set_keys(tree: Dict, prefix: str = "") -> Set[str]:
    """Leaf keys of a (merged) YAML dict, e.g. ``CfgNode.load_yaml_with_base(path)``."""
    keys = set()
    for k, v in tree.items():
        if k == "_BASE_":
            continue
        keys |= set_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return keys
