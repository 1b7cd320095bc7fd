"""tools/benchmark_speed.py at tiny sizes: the JSON has every section's keys, and its numbers agree with
each other and with the printed table (ratios recomputed from the printed times)."""
import json
import re

import pytest

from tests.scripts import load_script


def test_tiny_run_json_and_table_agree(tmp_path, capsys):
    tool, out = load_script("tools/benchmark_speed.py"), tmp_path / "speed.json"
    result = tool.main(["--clip-model", "LDVC-Tiny", "--sections", "lcsa,text,train", "--methods", "ldvc",
                        "--image-size", "64", "--batch", "1", "--repeats", "1", "--grids", "24,16", "--dropout-grids", "24",
                        "--output", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["lcsa"].keys() == {"24", "16"} and saved["text"].keys() == {"20", "171"}
    assert saved["lcsa"]["16"].keys() == {"inference", "training"}  # not in --dropout-grids
    assert set(saved["train"]) == {"ldvc"}
    assert saved["lcsa"]["24"].keys() == {"inference", "training", "training_dropout"}
    for mode, row in saved["lcsa"]["24"].items():
        assert row["time_ratio"] == pytest.approx(row["lcsa_s"] / row["global_s"])
        for key, ratio in (("mib", "memory_ratio"), ("tensor_mib", "tensor_memory_ratio")):
            if row[ratio] is not None:
                assert row[ratio] == pytest.approx(row[f"lcsa_{key}"] / row[f"global_{key}"])
        match = re.search(rf"lcsa 24x24 {mode}: ([\d.]+) / ([\d.]+) ms = ([\d.]+)", printed)
        lcsa_ms, global_ms, ratio = map(float, match.groups())
        assert ratio == pytest.approx(lcsa_ms / global_ms, abs=0.02)
        assert lcsa_ms == pytest.approx(row["lcsa_s"] * 1000, abs=0.06)
    for count in ("20", "171"):  # the cache answers without re-encoding
        assert 0 < saved["text"][count]["warm_s"] < saved["text"][count]["cold_s"]
    train = saved["train"]["ldvc"]
    assert (train["image_size"], train["batch"], train["training_classes"]) == (64, 1, 156)
    parts = train["breakdown_s"]
    assert set(parts) == {"text_encoder", "vit_forward", "head", "loss", "other_forward", "vit_backward",
                          "head_loss_text_backward", "data_loading_per_image"}
    assert all(v >= 0 for v in parts.values()) and parts["text_encoder"] > 0 and parts["loss"] > 0
    shares = train["breakdown_share"]
    assert sum(shares.values()) == pytest.approx(1.0) and "data_loading_per_image" not in shares
    assert shares["loss"] == pytest.approx(parts["loss"] / sum(v for k, v in parts.items() if k in shares))
    assert re.search(rf"train ldvc 64px x1: {train['step_s'] * 1000:.0f} ms/step", printed)
    assert result["lcsa"] == saved["lcsa"]


def test_tensor_peak_counts_live_tensors():
    """tensor_peak_mib against a hand count: 4 MiB + 2 MiB alive together, then 1 MiB after the first is
    freed -> 6 MiB; a tensor that exists before the call does not count."""
    import torch

    from ldvc_d2.utils.speed import tensor_peak_mib

    before = torch.empty(1024, 1024)

    def fn():
        a = torch.empty(1024, 1024)
        b = torch.empty(512, 1024)
        del a
        c = torch.empty(256, 1024)
        return b, c, before

    peak = tensor_peak_mib(fn, torch.device("cpu"))
    if peak is None:
        pytest.skip("this torch's profiler has no memory timeline")
    assert peak == pytest.approx(6.0)


def test_peak_measurement_puts_the_settled_allocator_back(monkeypatch):
    """A CPU peak measurement makes every allocation its own mapping meanwhile; afterwards glibc's malloc is
    in the timings' state again (settle_allocator: heap up to 32 MiB, 64 MiB of freed memory kept), not at
    a 32 MiB mmap threshold with whatever trim threshold the process had (the allocator then returned a
    lone layer's memory to the kernel after every call of later timings)."""
    import torch

    from ldvc_d2.utils import speed

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad):
            return 1

    monkeypatch.setattr(speed, "_libc", lambda: FakeLibc())
    assert speed.settle_allocator()
    settled = calls[:]
    assert sorted(settled) == [(-3, 32 * 2 ** 20), (-1, 64 * 2 ** 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    calls.clear()
    peak = speed.peak_mib(lambda: torch.empty(2 ** 20).fill_(1.0), torch.device("cpu"))
    if peak is None:
        pytest.skip("no /proc/self/status here")
    assert calls[0] == (-3, 64 * 1024) and calls[1:] == settled
