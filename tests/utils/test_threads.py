"""Thread policy (medeff.utils.threads): cgroup-aware core count, OpenMP waiting chosen from the load at startup
(spin on idle cores, passive otherwise), user settings win, set at the CLI's entry before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import medeff.utils.threads as threads
from medeff.errors import ConfigError
from medeff.utils.threads import (
    affinity_cores, apply_thread_policy, available_cores, busy_cores, cgroup_cpu_limit, choose_wait_policy,
    other_load, read_cpu_times, thread_env, user_environ,
)


def _v2(tmp_path, text):
    (tmp_path / "cpu.max").write_text(text + "\n")
    return tmp_path


def test_cgroup_v2_quota(tmp_path):
    assert cgroup_cpu_limit(_v2(tmp_path, "150000 100000")) == pytest.approx(1.5)
    assert cgroup_cpu_limit(_v2(tmp_path, "max 100000")) is None
    assert cgroup_cpu_limit(_v2(tmp_path, "garbage")) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == pytest.approx(1.0)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_available_cores_never_exceeds_quota_or_affinity(tmp_path):
    assert available_cores(_v2(tmp_path, "150000 100000"), affinity=8) == 2  # 1.5 CPUs: 2 threads, not 8
    assert available_cores(_v2(tmp_path, "400000 100000"), affinity=2) == 2  # affinity is the tighter bound
    assert available_cores(_v2(tmp_path, "10000 100000"), affinity=4) == 1  # a tenth of a CPU: still 1
    assert available_cores(_v2(tmp_path, "max 100000"), affinity=3) == 3
    assert 1 <= affinity_cores() <= (os.cpu_count() or 1)


def test_thread_env_fills_only_what_the_user_left_unset(tmp_path):
    root = _v2(tmp_path, "100000 100000")  # one CPU
    busy, idle = (lambda: 1.0), (lambda: 0.0)
    assert thread_env({}, root=root, measure=busy) == {
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MEDEFF_WAIT_POLICY": "passive", "OMP_WAIT_POLICY": "PASSIVE"}
    user = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    assert thread_env(user, root=root, measure=busy) == {"MKL_NUM_THREADS": "1"}
    assert thread_env({}, threads=8, root=root, measure=busy)["OMP_NUM_THREADS"] == "1"  # capped at the usable cores
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_thread_policy(env, root=root) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    unlimited = _v2(tmp_path, "max 100000")
    spin = thread_env({}, root=unlimited, measure=idle)  # idle cores: the runtime's default spinning, nothing set
    assert spin["MEDEFF_WAIT_POLICY"] == "spin" and "OMP_WAIT_POLICY" not in spin
    assert thread_env({}, root=unlimited, policy="passive", measure=pytest.fail)["OMP_WAIT_POLICY"] == "PASSIVE"


_STAT = """cpu  300 0 100 900 0 0 0 0 0 0
cpu0 100 0 50 450 0 0 0 0 0 0
cpu1 200 0 50 450 0 0 0 0 0 0
intr 12345
"""


def test_cpu_times_and_busy_cores(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(_STAT)
    before = read_cpu_times(stat)
    assert before == {0: (150, 600), 1: (250, 700)}  # the "cpu" total line is skipped
    # over the interval CPU 0 was busy 90 of 100 ticks (10 of them steal), CPU 1 idle (iowait is idle)
    stat.write_text(_STAT.replace("cpu0 100 0 50 450 0 0 0 0", "cpu0 160 0 70 460 0 0 0 10")
                    .replace("cpu1 200 0 50 450 0", "cpu1 200 0 50 540 10"))
    after = read_cpu_times(stat)
    assert busy_cores(before, after) == pytest.approx(0.9)
    assert busy_cores(before, after, cpus={1}) == pytest.approx(0.0)  # only the CPUs this process may use
    assert busy_cores(before, after, cpus={7}) is None  # none of them advanced
    assert read_cpu_times(tmp_path / "missing") is None
    stat.write_text("cpu0 a b c d\n")
    assert read_cpu_times(stat) is None
    assert other_load(0.0, path=tmp_path / "missing") is None
    load = other_load(0.05)  # the real /proc/stat of this machine, where there is one
    assert load is None or 0.0 <= load <= max(1, os.cpu_count() or 1)


def test_wait_policy_follows_the_load_at_startup(tmp_path):
    unlimited = _v2(tmp_path, "max 100000")
    assert choose_wait_policy({}, root=unlimited, measure=lambda: 0.1)[0] == "spin"
    policy, reason = choose_wait_policy({}, root=unlimited, measure=lambda: threads.BUSY_CORES)
    assert policy == "passive" and "busy" in reason
    assert choose_wait_policy({}, root=unlimited, measure=lambda: None)[0] == "passive"  # load unknown: the safe one
    quota = tmp_path / "quota"
    quota.mkdir()
    policy, reason = choose_wait_policy({}, root=_v2(quota, "50000 100000"), measure=pytest.fail)
    assert policy == "passive" and "quota" in reason  # spinning would spend the quota; the load is not even read
    for setting in ("spin", "passive"):  # the user's choice needs no measurement
        assert choose_wait_policy({"MEDEFF_WAIT_POLICY": setting.upper()}, measure=pytest.fail)[0] == setting
    assert choose_wait_policy({"MEDEFF_WAIT_POLICY": "auto"}, root=unlimited, measure=lambda: 0.0)[0] == "spin"
    with pytest.raises(ConfigError, match="MEDEFF_WAIT_POLICY='fast'.*Fix: unset it"):
        choose_wait_policy({"MEDEFF_WAIT_POLICY": "fast"})


def test_user_environ_drops_only_what_the_policy_added(monkeypatch):
    monkeypatch.setattr(threads, "_applied", {"OMP_WAIT_POLICY": "PASSIVE", "MEDEFF_WAIT_POLICY": "passive"})
    env = {"OMP_WAIT_POLICY": "PASSIVE", "MEDEFF_WAIT_POLICY": "passive", "HOME": "/h"}
    assert user_environ(env) == {"HOME": "/h"}
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # changed since: the user's
    assert user_environ(env) == {"OMP_WAIT_POLICY": "ACTIVE", "HOME": "/h"}


_PROBE = """
import sys, os
import medeff.utils.threads as t
orig = t.apply_thread_policy
def probe(*a, **k):
    print("torch imported before the policy:", "torch" in sys.modules)
    return orig(*a, **k)
t.apply_thread_policy = probe
from medeff.cli.main import main
main([])
import torch
print("policy:", os.environ.get("OMP_WAIT_POLICY"), os.environ.get("MEDEFF_WAIT_POLICY"),
      os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads())
"""


@pytest.mark.parametrize("medeff_policy, user_policy, expected", [
    ("passive", None, "PASSIVE passive"),
    ("spin", None, "None spin"),  # spinning: the OpenMP runtime's default, OMP_WAIT_POLICY stays unset
    (None, "ACTIVE", "ACTIVE None"),  # the user's OMP_WAIT_POLICY wins; medeff decides nothing
    (None, None, None),  # auto: chosen from the load at startup, either way consistent
])
def test_cli_entry_sets_the_policy_before_torch(medeff_policy, user_policy, expected):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "MEDEFF_WAIT_POLICY")}
    for key, value in (("MEDEFF_WAIT_POLICY", medeff_policy), ("OMP_WAIT_POLICY", user_policy)):
        if value:
            env[key] = value
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300,
                          check=True)
    assert "torch imported before the policy: False" in proc.stdout
    cores = available_cores()
    if expected is None:
        assert (f"policy: PASSIVE passive {cores} {cores}" in proc.stdout
                or f"policy: None spin {cores} {cores}" in proc.stdout), proc.stdout
    else:
        assert f"policy: {expected} {cores} {cores}" in proc.stdout


def test_cli_rejects_a_bad_wait_policy(monkeypatch, capsys):
    from medeff.cli.main import main

    monkeypatch.setenv("MEDEFF_WAIT_POLICY", "turbo")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["--version"]) == 2
    err = capsys.readouterr().err
    assert "MEDEFF_WAIT_POLICY='turbo' is not a wait policy" in err and "Fix:" in err
