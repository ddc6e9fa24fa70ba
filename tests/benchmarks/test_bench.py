"""``medeff bench``: the runner end to end with tiny sizes (fields, ratios, pass/fail), config errors, skipping."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from omegaconf import OmegaConf

from medeff.benchmarks import (
    allocated_peak_bytes, check_ratio, make_batch, markdown_report, resolve_config, saved_bytes, summarise_times,
    train_step,
)
from medeff.benchmarks import runner as bench_runner
from medeff.cli.main import main
from medeff.config import compose
from medeff.errors import ConfigError, OutputExistsError
from medeff.utils import threads
from medeff.utils.threads import user_environ


def _cfg(*overrides: str) -> dict:
    return OmegaConf.to_container(compose("bench", list(overrides)), resolve=True)


def test_check_ratio_time_is_median_of_per_round_ratios():
    times = {"a": [1.0, 2.0, 9.0], "b": [2.0, 2.0, 3.0]}
    assert check_ratio("time", {}, {}, "a", "b", times) == pytest.approx(1.0)  # median of 0.5, 1.0, 3.0
    assert check_ratio("memory", {"peak_delta_bytes": 30}, {"peak_delta_bytes": 60}) == pytest.approx(0.5)
    assert check_ratio("saved", {"saved_bytes": 9}, {"saved_bytes": 10}) == pytest.approx(0.9)
    assert check_ratio("memory", {"peak_delta_bytes": 30}, {"peak_delta_bytes": 0}) is None
    assert summarise_times([3.0, 1.0, 2.0]) == {"min_s": 1.0, "median_s": 2.0, "max_s": 3.0}


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="cls3d_b0"):
        resolve_config(_cfg("cases=[cls3d_b1]"))
    with pytest.raises(ConfigError, match="quick"):
        _cfg("bench_preset=quik")
    cfg = _cfg()
    cfg["case_defs"]["cls3d_b0"]["checks"][0]["ref"] = "peer"
    with pytest.raises(ConfigError, match="peer"):
        resolve_config(cfg)
    cfg = _cfg()
    cfg["case_defs"]["cls3d_b0"]["checks"].append({"metric": "peak_fraction", "side": "medef", "target": 0.1})
    with pytest.raises(ConfigError, match="medef"):  # a floor check names its side, and no ref
        resolve_config(cfg)


def test_quick_preset_merges_tiny_sizes():
    cfg = resolve_config(_cfg("bench_preset=quick"))
    assert cfg["preset"] == "quick" and cfg["output"] == "outputs/bench_quick.json"
    assert cfg["case_defs"]["cls3d_b0"]["input"] == {"batch": 2, "channels": 1, "size": [32, 32, 32], "classes": 2,
                                                     "task": "classification"}
    assert cfg["pairs"] == 2 and cfg["cases"] == ["cls3d_b0", "seg3d_b0_unet", "seg3d_b0_unet_wide", "cls2d_b0"]
    assert cfg["case_defs"]["seg3d_b0_unet_wide"]["input"]["size"] == [32, 32, 32]


def test_missing_peer_skips_the_case_with_its_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_runner, "peer_available", lambda b: "timm is not importable" if b == "timm" else None)
    report = bench_runner.run_bench(_cfg("bench_preset=quick", "cases=[cls2d_b0]", f"output={tmp_path / 'b.json'}"))
    case = report["cases"]["cls2d_b0"]
    assert case["status"] == "skipped" and "timm" in case["reason"]
    assert json.loads((tmp_path / "b.json").read_text())["cases"]["cls2d_b0"]["status"] == "skipped"


def test_saved_bytes_counts_what_autograd_keeps():
    x, _ = make_batch({"batch": 2, "channels": 3, "size": [8, 8], "classes": 2, "task": "classification"})
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    # for the weight gradient Linear saves its input (2x192 floats); for the input gradient also its weight
    assert saved_bytes(lin, x) == 2 * 192 * 4
    assert saved_bytes(lin, x.requires_grad_()) == (2 * 192 + 4 * 192) * 4


class _Wide(torch.nn.Module):
    """Linear model whose forward allocates a ``width``-float temporary per sample on top of its output."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 2)
        self.width = width

    def forward(self, x):
        tmp = x.new_ones(x.shape[0], self.width)  # freed before the step ends
        return self.lin(x) + tmp[:, :2] * 0


def test_allocated_peak_sees_a_transient_buffer():
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 0, 1])
    peaks = {}
    for width in (1_000, 1_000_000):
        model = _Wide(width)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_step(model, opt, x, y)  # gradients exist before the measured step, as in the benchmark
        peaks[width] = allocated_peak_bytes(model, opt, x, y)
    # both temporaries are held at the peak: the peaks differ by exactly the difference of their sizes
    assert peaks[1_000_000] - peaks[1_000] == 4 * (1_000_000 - 1_000) * 4
    assert 4 * 1_000 * 4 <= peaks[1_000] < 1_000_000


def test_cli_quick_run_writes_json_with_consistent_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "bench_preset=quick", "threads=1", "cases=[cls3d_b0]", f"output={out}"])
    assert rc == 0
    report = json.loads(out.read_text())
    env = report["environment"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and len(env["load_average_start"]) == 3
    assert env["available_cores"] >= 1
    waiting = report["cases"]["cls3d_b0"]["wait_policy"]  # decided from the load, or the user's OMP_WAIT_POLICY
    user = user_environ()  # not what an earlier main() in this process set
    if user.get("OMP_WAIT_POLICY"):
        assert waiting["omp_wait_policy"] == user["OMP_WAIT_POLICY"] and waiting["policy"] is None
    else:
        assert waiting["policy"] in ("spin", "passive") and waiting["reason"]
        assert waiting["omp_wait_policy"] == ("PASSIVE" if waiting["policy"] == "passive" else None)
    assert env["allocator_env"]["MALLOC_MMAP_MAX_"] == "0"
    assert env["memory_allocator_env"] == {"MALLOC_MMAP_THRESHOLD_": "1048576"}
    case = report["cases"]["cls3d_b0"]
    assert case["status"] == "ok"
    sides = case["sides"]
    for s in sides.values():
        assert len(s["times_s"]) == 2 and s["min_s"] <= s["median_s"] <= s["max_s"]
        assert s["saved_bytes"] > 0 and s["rss_peak_bytes"] >= s["rss_before_bytes"]
        assert s["peak_delta_bytes"] == s["rss_peak_bytes"] - s["rss_before_bytes"]
        assert s["alloc_peak_bytes"] > 0
        assert s["forward_flops"] > 0 and s["train_step_flops"] == 3 * s["forward_flops"]
        assert s["ms_per_gflop"] == pytest.approx(s["median_s"] * 1000 / (s["train_step_flops"] / 1e9))
        rate = s["train_step_flops"] / 1e9 / s["median_s"]
        assert s["gflops_per_s"] == pytest.approx(rate)
        assert s["peak_fraction"] == pytest.approx(rate / env["gemm_peak"]["gflops"])
    peak = env["gemm_peak"]
    assert peak["size"] == 256 and len(peak["times_s"]) == 2
    assert peak["gflops"] == pytest.approx(2 * 256**3 / min(peak["times_s"]) / 1e9)
    fractions = {c["side"]: c for c in case["checks"] if c["metric"] == "peak_fraction"}
    assert fractions["medeff"]["ratio"] == pytest.approx(sides["medeff"]["peak_fraction"])
    assert fractions["medeff"]["passed"] == (sides["medeff"]["peak_fraction"] >= 0.10)  # a floor, not a ceiling
    assert fractions["monai"]["passed"] is None and "ref" not in fractions["monai"]
    by_metric = {c["metric"]: c for c in case["checks"] if c.get("ref") in (None, "monai")}  # not monai_cl's
    expected_time = statistics.median(a / b for a, b in zip(sides["medeff"]["times_s"], sides["monai"]["times_s"]))
    assert by_metric["time"]["ratio"] == pytest.approx(expected_time)
    assert by_metric["time"]["passed"] == (expected_time <= 0.5)
    expected_min = min(sides["medeff"]["times_s"]) / min(sides["monai"]["times_s"])
    assert by_metric["time"]["min_ratio"] == pytest.approx(expected_min)
    assert by_metric["time"]["flops_ratio"] == 1.0  # the classifier comparison is equal work
    assert by_metric["time"]["per_flop_ratio"] == pytest.approx(expected_time)
    assert by_metric["saved"]["ratio"] == pytest.approx(sides["medeff"]["saved_bytes"] / sides["monai"]["saved_bytes"])
    assert by_metric["saved"]["passed"] is None  # no target: reported only
    expected_alloc = sides["medeff"]["alloc_peak_bytes"] / sides["monai"]["alloc_peak_bytes"]
    assert by_metric["alloc"]["ratio"] == pytest.approx(expected_alloc)
    assert by_metric["alloc"]["passed"] == (expected_alloc <= 0.8)
    assert "cls3d_b0" in capsys.readouterr().out
    table = markdown_report(report)
    assert f"| cls3d_b0 | time | medeff / monai | {expected_time:.3f} | <= 0.5 |" in table
    assert f"| {expected_min:.3f} | 1.000 | {expected_time:.3f} |" in table  # FLOPs ratio beside the time ratio
    gflops = sides["medeff"]["forward_flops"] / 1e9
    assert (f"| {gflops:.2f} | {3 * gflops:.2f} | {sides['medeff']['ms_per_gflop']:.2f} "
            f"| {100 * sides['medeff']['peak_fraction']:.1f}% |") in table
    assert f"| cls3d_b0 | peak_fraction | medeff | {fractions['medeff']['ratio']:.3f} | >= 0.1 |" in table
    assert f"GEMM peak {peak['gflops']:.1f} GFLOP/s" in table


def test_threads_auto_and_capped_at_the_usable_cores(monkeypatch):
    monkeypatch.setattr(bench_runner, "available_cores", lambda: 3)
    assert resolve_config(_cfg("threads=auto"))["threads"] == 3
    assert resolve_config(_cfg("threads=8"))["threads"] == 3
    assert resolve_config(_cfg("threads=1"))["threads"] == 1
    with pytest.raises(ConfigError, match="threads"):
        resolve_config(_cfg("threads=many"))


def test_timing_and_memory_workers_get_their_own_allocator_settings(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("MEDEFF_WAIT_POLICY", "passive")
    monkeypatch.setattr(threads, "_applied", {})  # an earlier main() in this process may have set the same value
    seen = []
    monkeypatch.setattr(bench_runner, "run_worker", lambda job, env, timeout=None: seen.append((job["mode"], env)) or (
        {"times_s": {n: [1.0] for n in job["sides"]}} if job["mode"] == "time"
        else {"gflops": 10.0, "size": 256, "threads": 1} if job["mode"] == "gemm"
        else {"peak_delta_bytes": 1, "alloc_peak_bytes": 1, "saved_bytes": 1}))
    bench_runner.run_bench(_cfg("bench_preset=quick", "cases=[cls3d_b0]"), write=False)
    modes = [mode for mode, _ in seen]
    assert modes == ["gemm", "time", "memory", "memory", "memory"]  # the GEMM yardstick runs in a timing worker
    assert seen[0][1] == seen[1][1]
    time_env, memory_env = seen[1][1], seen[2][1]
    assert time_env["MALLOC_MMAP_MAX_"] == "0" and "MALLOC_MMAP_THRESHOLD_" not in time_env
    assert memory_env["MALLOC_MMAP_THRESHOLD_"] == "1048576" and "MALLOC_MMAP_MAX_" not in memory_env
    assert time_env["OMP_NUM_THREADS"] == memory_env["OMP_NUM_THREADS"]
    assert time_env["OMP_WAIT_POLICY"] == memory_env["OMP_WAIT_POLICY"] == "PASSIVE"  # as MEDEFF_WAIT_POLICY asks
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's setting wins
    seen.clear()
    bench_runner.run_bench(_cfg("bench_preset=quick", "cases=[cls3d_b0]"), write=False)
    assert {env["OMP_WAIT_POLICY"] for _, env in seen} == {"ACTIVE"}


def test_wait_policy_is_decided_again_before_every_case(monkeypatch):
    for var in ("OMP_WAIT_POLICY", "MEDEFF_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    choices = iter([("spin", "idle"), ("passive", "busy"), ("spin", "idle again")])
    monkeypatch.setattr(bench_runner, "choose_wait_policy", lambda env: next(choices))
    seen = []
    monkeypatch.setattr(bench_runner, "run_worker", lambda job, env, timeout=None: seen.append((job["mode"], env)) or (
        {"times_s": {n: [1.0] for n in job["sides"]}} if job["mode"] == "time"
        else {"gflops": 10.0, "size": 256, "threads": 1}))
    report = bench_runner.run_bench(_cfg("bench_preset=quick", "cases=[cls3d_b0,cls2d_b0]", "memory=false"),
                                    write=False)
    assert [mode for mode, _ in seen] == ["gemm", "time", "time"]
    # spinning is the runtime's default (nothing set); passive waiting is OMP_WAIT_POLICY=PASSIVE
    assert [env.get("OMP_WAIT_POLICY") for _, env in seen] == [None, None, "PASSIVE"]
    assert [env["MEDEFF_WAIT_POLICY"] for _, env in seen] == ["spin", "spin", "passive"]
    assert report["cases"]["cls3d_b0"]["wait_policy"] == {"policy": "spin", "reason": "idle", "omp_wait_policy": None}
    assert report["cases"]["cls2d_b0"]["wait_policy"]["policy"] == "passive"
    assert "OpenMP wait policy cls3d_b0 spin, cls2d_b0 passive" in markdown_report(report)


def test_existing_output_without_overwrite_fails_before_measuring(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    out.write_text("{}")
    monkeypatch.setattr(bench_runner, "_run_case", lambda *a: pytest.fail("measured before checking the output"))
    with pytest.raises(OutputExistsError, match="bench.json"):
        bench_runner.run_bench(_cfg("bench_preset=quick", f"output={out}", "overwrite=false"))
    assert out.read_text() == "{}"


def test_a_side_can_run_in_channels_last():
    from medeff.benchmarks import build_side

    side = {"builder": "medeff", "kwargs": {"name": "efficientnetv2_b0", "channels_last": False}}
    plain = build_side(side, 3, 2, 2)
    cl = build_side({**side, "channels_last": True}, 3, 2, 2)
    assert plain.training and cl.training
    assert plain.conv_stem.weight.is_contiguous()
    assert cl.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not cl.conv_stem.weight.is_contiguous()
    cl3d = build_side({**side, "channels_last": True}, 1, 2, 3)
    assert cl3d.conv_stem.weight.is_contiguous(memory_format=torch.channels_last_3d)
    cfg = resolve_config(_cfg())  # the 2D case reports timm in both layouts
    sides = cfg["case_defs"]["cls2d_b0"]["sides"]
    assert sides["timm_cl"]["channels_last"] is True and not sides["timm"].get("channels_last")
