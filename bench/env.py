"""Where a run happened: device name, versions, git commit, date (recorded in every row)."""
import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def git_commit():
    """The commit the run measured: ``FASTCELLS_COMMIT`` when set (it names the code of a
    copied tree, whatever ``.git`` that tree holds), else ``git rev-parse HEAD`` of the
    repository (``-dirty`` when the tree has changes), else 'unknown'."""
    if os.environ.get("FASTCELLS_COMMIT"):
        return os.environ["FASTCELLS_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def environment(device):
    """The fields every row carries, plus a few more for the run's metadata."""
    now = datetime.datetime.now(datetime.timezone.utc)
    env = dict(
        device=device_name(device),
        torch=torch.__version__,
        triton=triton_version(),
        commit=git_commit(),
        date=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    extra = dict(
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        cpu_threads=torch.get_num_threads(),
        python=platform.python_version(),
        triton_interpret=os.environ.get("TRITON_INTERPRET", ""),
        load_avg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    )
    return env, extra


def slug(text):
    """A file-name-safe form of a device name: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA-H100-80GB-HBM3'."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60] or "device"
