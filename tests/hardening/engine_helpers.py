"""Small data and tiny trained checkpoints for the engine hardening tests (train/predict kills, batches, PHI).

Everything is synthetic (``medeff.demo.phantom``) and kept tiny so that a training run is one or two optimiser
steps of a width-0.25 network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

SMALL_NET = ["+model.width=0.25", "+model.depth=0.34"]
FAST = ["debug=fast", "trainer.accelerator=cpu", "+trainer.enable_model_summary=false",
        "trainer.gradient_clip_val=null", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
# a 3D organ U-Net on 16^3 patches of coarse (10-12 mm) phantoms
SEG = ["experiment=organ_seg_3d", "data.patch_size=[16,16,16]", "data.batch_size=1",
       "data.preprocessing.spacing=[10.0,12.0,12.0]", "augmentation.crop.num_samples=2",
       "trainer.check_val_every_n_epoch=1"] + SMALL_NET + FAST
SHAPE, SPACING = (36, 30, 14), (8.0, 8.0, 10.0)


def env() -> dict[str, str]:
    """Environment for medeff subprocesses: one thread each, no display."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")


def phantom_niftis(folder: Path, n: int, *, seed: int = 0, labels: bool = True) -> list[Path]:
    """``n`` phantom CT volumes ``ct{i}.nii.gz`` (and label maps ``ct{i}_seg.nii.gz`` beside them when asked)."""
    import nibabel as nib

    from medeff.demo.phantom import make_phantom_ct

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        ct, lab = make_phantom_ct(SHAPE, SPACING, seed=seed + i)
        nib.save(nib.Nifti1Image(ct.array, ct.affine_ras), str(folder / f"ct{i:03d}.nii.gz"))
        if labels:
            nib.save(nib.Nifti1Image(lab.array, lab.affine_ras), str(folder / f"ct{i:03d}_seg.nii.gz"))
        out.append(folder / f"ct{i:03d}.nii.gz")
    return out


def organ_index(root: Path) -> Path:
    """A 3-case segmentation index (folds 0, 1, 1) over phantom NIfTI volumes under ``root``."""
    from medeff.data.index_types import CaseRecord, DatasetIndex
    from medeff.demo.phantom import ORGAN_LABELS

    phantom_niftis(root, 3)
    records = [CaseRecord(case_id=f"ct{i:03d}", image=[f"ct{i:03d}.nii.gz"], label=f"ct{i:03d}_seg.nii.gz",
                          group=f"p{i}", fold=fold) for i, fold in zip(range(3), (0, 1, 1))]
    index = DatasetIndex(task="segmentation", source_kind="nifti", root=str(root), spatial_dims=3,
                         channel_names=["ct"], labels=dict(ORGAN_LABELS), class_names=[], num_folds=2, fold_seed=0,
                         stratified=False, all_cases=records)
    path = root / "index.json"
    path.write_text(json.dumps(index.to_json(), indent=1))
    return path


def train_in_process(overrides: list[str]) -> dict:
    """``medeff.engine.train.train`` on ``conf/train.yaml`` plus ``overrides`` (in this process)."""
    from medeff.config import compose
    from medeff.engine.train import train

    return train(compose("train", overrides))


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``medeff ARGS`` in a subprocess (text output captured)."""
    return subprocess.run([sys.executable, "-m", "medeff.cli.main", *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def rss_bytes() -> int:
    """Resident set size of this process (psutil when installed, else /proc/self/status)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot measure RSS")


def assert_seg_mask(path: Path, like: Path) -> None:
    """A written mask loads completely and lies on the grid of its input."""
    import nibabel as nib

    mask, src = nib.load(str(path)), nib.load(str(like))
    arr = np.asarray(mask.dataobj)  # a truncated .nii.gz fails here
    assert arr.shape == src.shape and np.allclose(mask.affine, src.affine, atol=1e-4)
    assert arr.min() >= 0 and arr.max() < 7


def nodule_index(root: Path, n_exams: int = 8) -> Path:
    """Index over a phantom nodule-slice archive (one case per nodule, 3 folds by exam), built by ``medeff index``."""
    from medeff.data.index_build import build_index
    from medeff.demo.phantom import make_nodule_archive

    root.mkdir(parents=True, exist_ok=True)
    make_nodule_archive(root, n_exams=n_exams, malignant_fraction=0.45, seed=1)
    build_index(root, root / "index.json", overrides=["folds.k=3", "class_names=[benign,malignant]"])
    return root / "index.json"


ZYGOTE = r"""
import json, os, sys
import medeff.cli.main as m, medeff.engine.train, medeff.engine.predict
m.build_parser()
print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "run":
        pid = os.fork()
        if pid == 0:
            fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            try:
                space = {"cmd": cmd}
                exec(cmd.get("prelude") or "", space)  # test hooks (e.g. RSS sampling), run in the child only
                rc = m.main(cmd["args"])
                exec(cmd.get("epilogue") or "", space)
            except BaseException:
                import traceback
                traceback.print_exc()
                rc = 99
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(rc or 0))
        print(json.dumps({"pid": pid}), flush=True)
    elif cmd["op"] == "wait":
        _, status = os.waitpid(cmd["pid"], 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    """A subprocess that imports medeff (torch, Lightning, MONAI) once and forks one child per command.

    The children start with everything imported, so a kill delay measured from the start of a command falls on the
    command's own work, and no run pays the import time again. ``start`` returns the child's pid (to SIGKILL it);
    ``wait`` returns its exit code (negative: killed by that signal).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=REPO, env=env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.n = 0

    def _ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, args: list[str], prelude: str = "", epilogue: str = "") -> tuple[int, Path]:
        """Fork a child running ``medeff ARGS`` (with Python ``prelude``/``epilogue`` code around it in the child);
        returns ``(pid, log file of its stdout and stderr)``."""
        self.n += 1
        log = self.log_dir / f"run{self.n:03d}.log"
        return self._ask(op="run", args=list(args), log=str(log), prelude=prelude, epilogue=epilogue)["pid"], log

    def wait(self, pid: int) -> int:
        return int(self._ask(op="wait", pid=pid)["rc"])

    def run(self, args: list[str], prelude: str = "", epilogue: str = "") -> tuple[int, str]:
        """Run ``medeff ARGS`` to the end: ``(exit code, its output)``."""
        pid, log = self.start(args, prelude, epilogue)
        rc = self.wait(pid)
        return rc, log.read_text(errors="replace")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
