"""Thread policy (medeff.utils.threads): cgroup-aware core count, passive OpenMP waiting, user settings win, set at
the CLI's entry before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medeff.utils.threads import (
    affinity_cores, apply_thread_policy, available_cores, cgroup_cpu_limit, thread_env,
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
    assert thread_env({}, root=root) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    user = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    assert thread_env(user, root=root) == {"MKL_NUM_THREADS": "1"}
    assert thread_env({}, threads=8, root=root)["OMP_NUM_THREADS"] == "1"  # capped at the usable cores
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_thread_policy(env, root=root) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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
print("policy:", os.environ.get("OMP_WAIT_POLICY"), os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads())
"""


@pytest.mark.parametrize("user_policy", [None, "ACTIVE"])
def test_cli_entry_sets_the_policy_before_torch(user_policy):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    if user_policy:
        env["OMP_WAIT_POLICY"] = user_policy
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300,
                          check=True)
    assert "torch imported before the policy: False" in proc.stdout
    cores = available_cores()
    assert f"policy: {user_policy or 'PASSIVE'} {cores} {cores}" in proc.stdout
