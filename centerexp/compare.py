"""Compare finished runs: a table (grouped over seeds), overlaid curves, feature grids, a report.

Runs whose resolved configs differ only in ``train.seed`` form a group and are summarised as
mean +- std over seeds. Unfinished or failed runs are listed on their own rows, marked, and never
averaged with finished ones.
"""

import csv
import io
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from centerexp.config import flatten
from centerexp.errors import CenterexpError
from centerexp.runs import atomic_write_text, is_run_dir, metrics_columns, read_json

DEFAULT_THRESHOLDS = (0.98, 0.99)
GROUP_KEY_IGNORED = {"train.seed"}


@dataclass
class Run:
    path: Path
    name: str
    config: dict  # flattened: "train.epochs" -> 30
    summary: dict
    metrics: dict  # column -> list of floats, one per finished epoch

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")

    @property
    def finished(self) -> bool:
        return self.status == "completed"


def load_runs(paths: list[Path], warn=None) -> list[Run]:
    """Read every run folder in ``paths``; other folders are skipped with a warning."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    runs, seen = [], set()
    for path in map(Path, paths):
        if path.resolve() in seen:  # runs/* runs/v1_0 must not count v1_0 twice
            continue
        seen.add(path.resolve())
        if not is_run_dir(path):
            warn(f"skipping {path}: not a run folder (no config.yaml and summary.json)")
            continue
        try:
            config = flatten(yaml.safe_load((path / "config.yaml").read_text()))
            summary = read_json(path / "summary.json")
            metrics = metrics_columns(path / "metrics.csv") if (path / "metrics.csv").exists() else {}
        except (OSError, ValueError, yaml.YAMLError, KeyError, AttributeError) as e:
            warn(f"skipping {path}: unreadable run files ({e})")
            continue
        runs.append(Run(path, path.name, config, summary, metrics))
    return runs


# --- per-run figures -----------------------------------------------------------------------


def first_epoch_reaching(run: Run, threshold: float) -> tuple[int, float] | None:
    """(epoch, wall seconds) at which test accuracy first reached ``threshold``; None if never."""
    for epoch, acc, wall in zip(
        run.metrics.get("epoch", []), run.metrics.get("test_acc", []), run.metrics.get("wall_seconds", [])
    ):
        if acc >= threshold:
            return int(epoch), wall
    return None


def run_figures(run: Run, thresholds) -> dict:
    m = run.metrics
    if not m.get("epoch"):
        return {"epochs_done": 0}
    accs = m["test_acc"]
    figures = {
        "epochs_done": len(accs),
        "final_acc": accs[-1],
        "best_acc": max(accs),
        "acc_auc": sum(accs) / len(accs),  # mean test accuracy over epochs = normalised area under the curve
        "final_center": m["train_center"][-1],
        "intra_dist": m["intra_dist"][-1],
        "center_dist": m["center_dist"][-1],
        "compactness": m["compactness"][-1],
        "sec_per_epoch": statistics.fmean(m["epoch_seconds"]),
        "wall_seconds": m["wall_seconds"][-1],
    }
    for t in thresholds:
        hit = first_epoch_reaching(run, t)
        figures[f"epoch_to_{t:g}"] = hit[0] if hit else None
        figures[f"seconds_to_{t:g}"] = hit[1] if hit else None
    return figures


# --- grouping ------------------------------------------------------------------------------


@dataclass
class Group:
    runs: list[Run]
    figures: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        names = [r.name for r in self.runs]
        if len(names) == 1:
            return names[0] + ("" if self.runs[0].finished else f" [{self.runs[0].status}]")
        stems = {re.sub(r"[-_]?s(eed)?\d+$", "", n) for n in names}
        return stems.pop() if len(stems) == 1 else f"{names[0]} (+{len(names) - 1})"

    @property
    def n(self) -> int:
        return len(self.runs)

    def values(self, key: str) -> list:
        return [f.get(key) for f in self.figures]

    def mean_std(self, key: str) -> tuple[float, float] | None:
        vals = self.values(key)
        if not vals or any(v is None for v in vals):
            return None
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    def mean_curve(self, column: str) -> tuple[list[float], list[float], list[float], list[float]]:
        """Epochs covered by every run, mean, min and max of ``column`` over the group's runs."""
        n = min(len(r.metrics.get(column, [])) for r in self.runs)
        cols = [r.metrics[column][:n] for r in self.runs]
        epochs = self.runs[0].metrics["epoch"][:n]
        return (
            epochs,
            [statistics.fmean(v) for v in zip(*cols)],
            [min(v) for v in zip(*cols)],
            [max(v) for v in zip(*cols)],
        )


def group_runs(runs: list[Run], thresholds) -> list[Group]:
    """Finished runs with the same config apart from the seed share a group; others stand alone."""
    groups: dict[tuple, Group] = {}
    for i, run in enumerate(runs):
        if run.finished:
            key = tuple(sorted((k, repr(v)) for k, v in run.config.items() if k not in GROUP_KEY_IGNORED))
        else:
            key = ("unfinished", i)
        groups.setdefault(key, Group([])).runs.append(run)
    for g in groups.values():
        g.figures = [run_figures(r, thresholds) for r in g.runs]
    return list(groups.values())


def differing_keys(runs: list[Run], all_keys: bool = False) -> list[str]:
    keys = sorted({k for r in runs for k in r.config})
    if all_keys:
        return keys
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1 and k not in GROUP_KEY_IGNORED]


# --- the table -----------------------------------------------------------------------------


def _fmt(ms: tuple[float, float] | None, n: int, digits: int = 4, pct: bool = False) -> str:
    if ms is None:
        return "-"
    mean, std = ms
    scale = 100 if pct else 1
    if n == 1:
        return f"{mean * scale:.{digits}g}" if not pct else f"{mean * scale:.2f}"
    return f"{mean * scale:.{digits}g} ± {std * scale:.2g}" if not pct else f"{mean * scale:.2f} ± {std * scale:.2f}"


def _threshold_cell(group: Group, key: str, digits: int = 3) -> str:
    vals = group.values(key)
    reached = [v for v in vals if v is not None]
    if not reached:
        return "never"
    if len(reached) < len(vals):
        return f"{statistics.fmean(reached):.{digits}g} ({len(reached)}/{len(vals)} reached)"
    return _fmt(group.mean_std(key), group.n, digits)


def table_rows(groups: list[Group], keys: list[str], thresholds) -> tuple[list[str], list[list[str]]]:
    header = ["run", "n", "status", *keys, "final acc %", "best acc %"]
    for t in thresholds:
        header += [f"epoch to {t:g}", f"s to {t:g}"]
    header += ["final center loss", "intra dist", "center dist", "intra/center", "s/epoch"]
    rows = []
    for g in groups:
        first = g.runs[0]
        status = first.status
        if not first.finished:
            status = f"{first.status} ({g.figures[0].get('epochs_done', 0)}/{first.config.get('train.epochs')} epochs)"
        row = [g.label, str(g.n), status, *[str(first.config.get(k)) for k in keys]]
        row += [_fmt(g.mean_std("final_acc"), g.n, pct=True), _fmt(g.mean_std("best_acc"), g.n, pct=True)]
        for t in thresholds:
            row += [_threshold_cell(g, f"epoch_to_{t:g}"), _threshold_cell(g, f"seconds_to_{t:g}", 4)]
        row += [
            _fmt(g.mean_std(k), g.n, 3)
            for k in ("final_center", "intra_dist", "center_dist", "compactness", "sec_per_epoch")
        ]
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# --- differences and the seed's claims -------------------------------------------------------


def difference(a: Group, b: Group, key: str) -> dict | None:
    """Mean of a minus mean of b for ``key``, and whether it is within the seed-to-seed spread.

    "Within spread" means |difference| <= std_a + std_b (the sum of the two groups' sample standard
    deviations over seeds): a plain, conservative rule, stated in the report. With one seed per
    group there is no spread to compare against, which the report says.
    """
    ma, mb = a.mean_std(key), b.mean_std(key)
    if ma is None or mb is None:
        return None
    diff = ma[0] - mb[0]
    spread = ma[1] + mb[1]
    return {"diff": diff, "spread": spread, "within": abs(diff) <= spread, "single_seed": a.n < 2 or b.n < 2}


def find_v1_groups(groups: list[Group]) -> dict[str, Group] | None:
    """V1.0 / V1.1 / V1.2 among the finished groups: a deep + squared group, the group whose config
    differs from it only in loss.distance (sqrt), and the one differing from that only in model.arch
    (shallow). Returns the first complete triple, or None."""

    def config(g: Group) -> dict:
        return {k: v for k, v in g.runs[0].config.items() if k not in GROUP_KEY_IGNORED}

    finished = [g for g in groups if g.runs[0].finished]

    def find(config_wanted: dict) -> Group | None:
        return next((g for g in finished if config(g) == config_wanted), None)

    for v10 in finished:
        base = config(v10)
        if (base.get("model.arch"), base.get("loss.distance")) != ("deep", "squared"):
            continue
        v11 = find({**base, "loss.distance": "sqrt"})
        v12 = find({**base, "loss.distance": "sqrt", "model.arch": "shallow"})
        if v11 and v12:
            return {"V1.0": v10, "V1.1": v11, "V1.2": v12}
    return None


def acc_at_epochs(g: Group) -> dict[int, tuple[float, float]]:
    n = min(len(r.metrics["test_acc"]) for r in g.runs)
    out = {}
    for e in sorted({1, max(1, n // 2), n}):
        vals = [r.metrics["test_acc"][e - 1] for r in g.runs]
        out[e] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


def claim_verdict(fast: Group, slow: Group, thresholds) -> tuple[str, list[str]]:
    """Does ``fast`` converge faster than ``slow``? Judged on the area under the test-accuracy curve."""
    d = difference(fast, slow, "acc_auc")
    lines = []
    auc_f, auc_s = fast.mean_std("acc_auc"), slow.mean_std("acc_auc")
    lines.append(
        f"mean test accuracy over epochs (area under the curve): {auc_f[0]:.4f} ± {auc_f[1]:.4f} vs "
        f"{auc_s[0]:.4f} ± {auc_s[1]:.4f} (difference {d['diff']:+.4f}, seed spread {d['spread']:.4f})"
    )
    ea, eb = acc_at_epochs(fast), acc_at_epochs(slow)
    for e in sorted(set(ea) & set(eb)):
        lines.append(f"test accuracy at epoch {e}: {ea[e][0]:.4f} ± {ea[e][1]:.4f} vs {eb[e][0]:.4f} ± {eb[e][1]:.4f}")
    for t in thresholds:
        lines.append(
            f"epochs to {t:g}: {_threshold_cell(fast, f'epoch_to_{t:g}')} vs {_threshold_cell(slow, f'epoch_to_{t:g}')}"
        )
    if d["single_seed"]:
        direction = "supported" if d["diff"] > 0 else "not supported"
        verdict = f"{direction} (one seed: no spread to judge against)"
    elif d["within"]:
        verdict = "inconclusive: the difference is within the seed-to-seed spread"
    elif d["diff"] > 0:
        verdict = "supported"
    else:
        verdict = "contradicted: the other run converges faster"
    return verdict, lines


# --- figures --------------------------------------------------------------------------------


def plot_curves(groups: list[Group], out: Path) -> list[str]:
    from centerexp.plots import plt, save_figure, style_epoch_axes

    written = []
    specs = [
        ("accuracy.png", [("test_acc", "test accuracy", False)]),
        (
            "losses.png",
            [
                ("train_loss", "training loss (total, log scale)", True),
                ("train_center", "center loss (train, log scale)", True),
            ],
        ),
    ]
    for filename, panels in specs:
        fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5), squeeze=False)
        for ax, (column, label, log) in zip(axes[0], panels):
            for i, g in enumerate(groups):
                if not all(r.metrics.get(column) for r in g.runs):
                    continue
                epochs, mean, lo, hi = g.mean_curve(column)
                color = f"C{i % 10}"
                name = f"{g.label} (n={g.n})" if g.n > 1 else g.label
                ax.plot(epochs, mean, "o-", ms=3, color=color, label=name)
                if g.n > 1:
                    ax.fill_between(epochs, lo, hi, color=color, alpha=0.2)
            ax.set(
                xlabel="epoch",
                ylabel=label,
                title=label + (" (band: min-max over seeds)" if any(g.n > 1 for g in groups) else ""),
            )
            style_epoch_axes(ax, log)
            ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / filename)
        written.append(filename)
    return written


def plot_feature_grid(runs: list[Run], out: Path) -> str | None:
    import torch

    from centerexp.plots import add_digit_legend, plt, save_figure, scatter_features

    with_features = [r for r in runs if (r.path / "features.pt").is_file()]
    if not with_features:
        return None
    cols = min(3, len(with_features))
    rows = math.ceil(len(with_features) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 5 * rows), squeeze=False)
    for ax, run in zip(axes.flat, with_features):
        data = torch.load(run.path / "features.pt", weights_only=True)
        acc = run.metrics["test_acc"][-1] if run.metrics.get("test_acc") else float("nan")
        scatter_features(
            ax,
            data["features"],
            data["labels"],
            data["centers"],
            f"{run.name}: epoch {data['epoch']}, test acc {acc:.3f}",
        )
    for ax in list(axes.flat)[len(with_features) :]:
        ax.axis("off")
    add_digit_legend(fig)
    fig.suptitle("final test features (2-D) with class centers")
    fig.tight_layout(rect=(0, 0, 0.9, 0.97))
    save_figure(fig, out / "features_grid.png")
    return "features_grid.png"


# --- the command ----------------------------------------------------------------------------


def compare(
    paths: list[Path],
    out: Path,
    thresholds=DEFAULT_THRESHOLDS,
    csv_path: str | None = None,
    all_keys: bool = False,
    echo=print,
    warn=None,
) -> dict:
    """Build the table, figures and report for ``paths``; returns what it computed."""
    runs = load_runs(paths, warn)
    if not runs:
        raise CenterexpError("compare: no run folders given (expected folders written by centerexp train)", exit_code=2)
    thresholds = tuple(sorted(thresholds))
    groups = group_runs(runs, thresholds)
    keys = differing_keys(runs, all_keys)
    header, rows = table_rows(groups, keys, thresholds)
    table = markdown_table(header, rows)
    echo(table)

    notes = spread_notes(groups)
    for line in notes:
        echo(line)
    v1 = find_v1_groups(groups)
    claims = []
    if v1:
        claims = [
            (
                "1. squared center loss converges faster than sqrt (V1.0 vs V1.1)",
                *claim_verdict(v1["V1.0"], v1["V1.1"], thresholds),
            ),
            (
                "2. the deeper network converges faster (V1.1 vs V1.2)",
                *claim_verdict(v1["V1.1"], v1["V1.2"], thresholds),
            ),
        ]
        echo("")
        for title, verdict, _ in claims:
            echo(f"claim {title}: {verdict}")

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CenterexpError(f"cannot create {out}: {e.strerror or e}") from None
    csv_body = csv_text(header, rows)
    atomic_write_text(out / "compare.csv", csv_body)
    if csv_path == "-":
        echo(csv_body.rstrip("\n"))
    elif csv_path:
        atomic_write_text(Path(csv_path), csv_body)
    figures = plot_curves(groups, out)
    grid = plot_feature_grid(runs, out)
    if grid:
        figures.append(grid)
    atomic_write_text(out / "report.md", report_markdown(runs, table, notes, claims, figures, thresholds))
    echo(f"\nreport: {out / 'report.md'}")
    return {"groups": groups, "header": header, "rows": rows, "claims": claims, "notes": notes}


def spread_notes(groups: list[Group]) -> list[str]:
    """For each pair of multi-seed groups, say whether their final accuracies differ beyond the spread."""
    notes = []
    finished = [g for g in groups if g.runs[0].finished]
    for i, a in enumerate(finished):
        for b in finished[i + 1 :]:
            d = difference(a, b, "final_acc")
            if d is None or d["single_seed"]:
                continue
            verdict = "within their seed-to-seed spread" if d["within"] else "larger than their seed-to-seed spread"
            notes.append(
                f"{a.label} vs {b.label}: final test accuracy differs by {d['diff'] * 100:+.2f} points, "
                f"{verdict} ({d['spread'] * 100:.2f} points)"
            )
    return notes


def provenance(runs: list[Run]) -> list[str]:
    """Where the numbers come from: machine, software, commit and total training time of the runs."""
    envs = []
    for r in runs:
        try:
            envs.append(read_json(r.path / "env.json"))
        except (OSError, ValueError):
            continue
    if not envs:
        return []

    def describe(env: dict) -> str:
        git = env.get("git") or {}
        commit = f"commit {str(git.get('commit'))[:10]}" + (" (dirty)" if git.get("dirty") else "")
        device = f"{env.get('device_name')} ({env.get('threads')} threads)"
        return f"{device}, {env.get('precision')}, torch {env.get('torch')}, {commit}"

    machines = sorted({describe(e) for e in envs})
    total = sum(r.metrics["wall_seconds"][-1] for r in runs if r.metrics.get("wall_seconds"))
    return [f"Produced on: {'; '.join(machines)}. Training wall time of all runs together: {total / 60:.1f} min."]


def report_markdown(runs, table, notes, claims, figures, thresholds) -> str:
    parts = [
        "# centerexp comparison",
        "",
        f"{len(runs)} runs: {', '.join(r.name for r in runs)}.",
        "",
        *provenance(runs),
        "",
        "Rows group runs whose configs differ only in `train.seed` (mean ± sample std over seeds, n = seeds). "
        f"'epoch to t' / 's to t': first epoch and wall-clock seconds at which test accuracy reached t "
        f"(thresholds {', '.join(f'{t:g}' for t in thresholds)}). intra dist: mean distance of a test feature to "
        "its class center; center dist: mean distance between centers; intra/center: their ratio (lower = "
        "tighter, better separated clusters).",
        "",
        table,
        "",
    ]
    if notes:
        parts += [
            "## Differences between groups",
            "",
            "A difference is called within the seed-to-seed spread when it is no larger than the sum of the "
            "two groups' standard deviations.",
            "",
            *[f"- {n}" for n in notes],
            "",
        ]
    if claims:
        parts += [
            "## The seed's claims",
            "",
            "Convergence speed is judged on the area under the test-accuracy curve (mean test accuracy over "
            "the epochs run); a claim is supported when the difference exceeds the sum of the two groups' "
            "seed standard deviations, inconclusive when it does not.",
            "",
            "| claim | verdict |",
            "|---|---|",
            *[f"| {t} | {v} |" for t, v, _ in claims],
            "",
        ]
        for title, verdict, lines in claims:
            parts += [f"### {title}", "", f"**{verdict}**", "", *[f"- {line}" for line in lines], ""]
    parts += ["## Figures", "", *[f"![{f}]({f})" for f in figures], ""]
    return "\n".join(parts)
