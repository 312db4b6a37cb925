"""What produced the numbers: software versions, machine, runtime choices and git commit (env.json)."""

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path


def git_info() -> dict:
    """Commit and dirty flag of the source tree centerexp runs from (None outside a git checkout)."""
    src = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")  # how a user caps the CPU code path


def isa_caps() -> dict[str, str]:
    """The caps a user set on oneDNN's and ATen's choice of instructions (AMX, AVX-512, AVX2, ...)."""
    return {k: os.environ[k] for k in ISA_CAP_VARIABLES if k in os.environ}


def cpu_code_path() -> str:
    """ATen's vector ISA and any caps, e.g. "AVX512" or "AVX512, ONEDNN_MAX_CPU_ISA=AVX2": the same
    CPU runs at other speeds, and rounds otherwise, on another path."""
    import torch

    return ", ".join([torch.backends.cpu.get_cpu_capability(), *(f"{k}={v}" for k, v in isa_caps().items())])


def env_info(runtime) -> dict:
    """Software, machine and runtime choices of this process (``runtime``: a runtime.Runtime)."""
    import torch

    device = runtime.device
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": importlib.metadata.version("torchvision"),  # importing it costs ~2 s
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # the CPU code path: ATen's vector ISA and the caps a user set on it and on oneDNN
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": isa_caps(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "precision": runtime.precision,
        "precision_choice": runtime.precision_choice,
        "conv_algorithms": runtime.conv_algorithms,
        "conv_choice": runtime.conv_choice,
        "channels_last": runtime.channels_last,
        "deterministic": runtime.deterministic,
        "cuda": torch.version.cuda,
        "git": git_info(),
        "argv": sys.argv,
    }
