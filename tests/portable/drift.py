"""How far do the bits of a run move with the thread count and the CPU code path? (`make drift`)

Trains one small real-MNIST conv run (V1.0, the deep net) several times with the same config and
seed, changing only the environment: this machine's default, one thread, oneDNN capped at AVX2,
ATen's scalar code path (bf16: default and one thread only; a capped code path runs bf16
convolutions on oneDNN's reference kernels, which takes far too long). Prints, per precision, the
difference from the default run in the last metrics row. Bit-exact is only promised for the same
machine type, thread count, torch version and precision; this measures what "close" means
otherwise. Not a test: it asserts nothing. About 10 minutes on 2 cores.
"""

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {
    "default": {},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "oneDNN AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "ATen default": {"ATEN_CPU_CAPABILITY": "default"},
}
OVERRIDES = ["train.epochs=2", "train.batch_size=64", "data.train_subset=1024", "data.test_subset=500"]
OVERRIDES += ["data.subset_mode=random", "plot.gif=false"]
COLUMNS = ("train_loss", "test_ce", "test_acc", "test_center", "compactness_ratio")


def last_row(run: Path) -> dict:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))[-1]


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="centerexp-drift-"))
    print(f"runs in {out}; V1.0, {' '.join(OVERRIDES)}")
    for precision in ("fp32", "bf16"):
        rows = {}
        for name, env in SETTINGS.items():
            if precision == "bf16" and name != "1 thread" and name != "default":
                continue  # capped code paths run bf16 convolutions on oneDNN's reference kernels: far too slow
            folder = f"{precision}-{name.replace(' ', '_')}"
            args = [sys.executable, "-m", "centerexp", "train", str(REPO / "configs" / "v1_0.yaml"), "-q"]
            args += ["--runs-dir", str(out), "--name", folder, "--set", f"train.precision={precision}"]
            for o in OVERRIDES:
                args += ["--set", o]
            subprocess.run(args, check=True, env={**os.environ, **env}, capture_output=True)
            rows[name] = last_row(out / folder)
        base = rows["default"]
        print(f"\n{precision}: |value - value of the default run| in the last row (test_acc in percentage points)")
        print("| setting | " + " | ".join(COLUMNS) + " |")
        print("|---|" + "---|" * len(COLUMNS))
        for name, row in rows.items():
            diffs = [abs(float(row[c]) - float(base[c])) for c in COLUMNS]
            cells = [f"{d:.2e}" if c != "test_acc" else f"{100 * d:.2f}" for c, d in zip(COLUMNS, diffs)]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
