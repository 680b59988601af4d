"""Run a preset: train each (level, seed) suite, sweep them into one store, measure, judge, write the files.

Layout under `out` (one folder per preset; `<preset>-tiny` for --tiny runs, so they never mix with full ones):

    out/<preset>/suites/<model>/        the trained suites (reused when their config is equal)
    out/<preset>/store/                 one store, every suite of the experiment as its own model
    out/<preset>/measurements.csv       level, seed, model, metric, value: read from the store only
    out/<preset>/verdicts.md            effects per level (mean, std over seeds) and the verdict table
    out/<preset>/report.html            the comparison report (build_report over the store)
    out/<preset>/run.json               what ran: preset, seeds, tiny, base config, command, wall time (`seconds`;
                                        `cold_seconds`: that of the run that trained the suites, kept by reruns)
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pythia_dynamics.lab.measures import measure
from pythia_dynamics.lab.presets import Preset, get_preset
from pythia_dynamics.lab.verdicts import ROBUST_RULE, RULE, effects

__all__ = ["ExperimentResult", "run_experiment", "experiment_dir", "read_experiment", "verdict_markdown"]

log = logging.getLogger(__name__)


@dataclass
class ExperimentResult:
    preset: Preset
    folder: Path
    measurements: pd.DataFrame  # level, seed, model, metric, value
    effects: pd.DataFrame  # level, metric, mean, std, n
    verdicts: pd.DataFrame  # statement, metric, level, baseline, effect, noise, threshold, verdict
    run: dict

    def table(self) -> str:
        return verdict_markdown(self.preset, self.effects, self.verdicts, self.run)


def experiment_dir(out: str | Path, name: str, tiny: bool) -> Path:
    return Path(out) / (f"{name}-tiny" if tiny else name)


def _init_extra(level, source_dir: Path | None) -> dict:
    """init_from for a level with a final-* init: the source level's seed-0 suite."""
    if dict(level.changes).get("init", "standard") == "standard":
        return {}
    return {"init_from": str(source_dir)}


def run_experiment(name: str, *, seeds: int = 3, tiny: bool = False, out: str | Path = "runs/lab",
                   report: bool = True, progress: bool = True, command: str | None = None) -> ExperimentResult:  # fmt: skip
    """Train (or reuse) every (level, seed) suite of preset `name`, sweep them into one store, and compute the
    verdict table from the store. `tiny` uses the preset's `tiny_base` (seconds; a smoke check, never an answer)."""
    from pythia_dynamics.sweeps import sweep
    from pythia_dynamics.train.loop import train_suite

    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    preset = get_preset(name)
    base = preset.base_config(tiny)
    folder = experiment_dir(out, name, tiny)
    started = time.perf_counter()
    levels, source_dir = list(preset.levels), None
    if preset.init_source:  # the source level trains first: the final-* inits read its seed-0 suite
        levels.sort(key=lambda level: level.name != preset.init_source)
        source_dir = folder / "suites" / levels[0].config(base, name, 0).name
    models = []
    for level in levels:
        for seed in range(seeds):
            config = level.config(base, name, seed, **_init_extra(level, source_dir))
            suite = train_suite(config, folder / "suites" / config.name, progress=progress)
            sweep(suite, folder / "store", analyses=list(preset.analyses), progress=progress, audit=False)
            models.append((level.name, seed, config.name))
    measurements = measure_store(preset, folder / "store", models, base.total_steps)
    measurements.to_csv(folder / "measurements.csv", index=False)
    verdicts = preset.verdicts(measurements, base.total_steps)
    run = {"preset": name, "seeds": seeds, "tiny": tiny, "seconds": round(time.perf_counter() - started, 1),
           "command": command or f"pythia-dynamics experiment {name} --seeds {seeds}{' --tiny' if tiny else ''}",
           "base_config": base.to_dict(), "python": platform.python_version(), "torch_threads": _torch_threads(),
           "models": models}  # fmt: skip
    run["cold_seconds"] = _cold_seconds(folder / "run.json", run)
    if report:
        from pythia_dynamics.report import build_report

        build_report([folder / "store"], folder / "report.html")
    result = ExperimentResult(preset, folder, measurements, effects(measurements), verdicts, run)
    (folder / "verdicts.md").write_text(result.table() + "\n", encoding="utf-8")
    (folder / "run.json").write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    log.info("%s: %d suites in %.0f s; verdicts in %s", name, len(models), run["seconds"], folder / "verdicts.md")
    return result


def _cold_seconds(path: Path, run: dict) -> float:
    """The wall time of the run that trained this experiment's suites: an earlier run.json's, when it ran the same
    models (this run then reused its suites and results), else this run's."""
    if path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if [list(m) for m in earlier.get("models", [])] == [list(m) for m in run["models"]]:
            return earlier.get("cold_seconds", earlier["seconds"])
    return run["seconds"]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def measure_store(preset: Preset, store_path: str | Path, models: list[tuple[str, int, str]], total_steps: int) -> pd.DataFrame:
    """level, seed, model, metric, value for every (level, seed, model) and every measure of `preset`, read
    from the store at `store_path` only."""
    from pythia_dynamics.store import Store

    store = Store(store_path)
    rows = [{"level": level, "seed": seed, "model": model, "metric": metric,
             "value": measure(store, model, metric, total_steps)}
            for level, seed, model in models for metric in preset.measures]  # fmt: skip
    return pd.DataFrame(rows, columns=["level", "seed", "model", "metric", "value"])


def read_experiment(folder: str | Path) -> ExperimentResult:
    """An experiment already run, its verdicts recomputed from its store (run.json says which models)."""
    folder = Path(folder)
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    preset = get_preset(run["preset"])
    models = [tuple(m) for m in run["models"]]
    total_steps = run["base_config"]["total_steps"]
    measurements = measure_store(preset, folder / "store", models, total_steps)
    return ExperimentResult(preset, folder, measurements, effects(measurements),
                            preset.verdicts(measurements, total_steps), run)  # fmt: skip


def _number(value) -> str:
    return "n/a" if pd.isna(value) else f"{value:.4g}"


def verdict_markdown(preset: Preset, effect_table: pd.DataFrame, verdicts: pd.DataFrame, run: dict) -> str:
    """The effects per level and the verdict table of one experiment, as markdown."""
    kind = "TINY smoke check, not an answer" if run.get("tiny") else "full size"
    seconds = run.get("cold_seconds", run["seconds"])
    lines = [f"### {preset.name} ({kind}; {run['seeds']} seeds; {seconds:.0f} s to train, sweep and judge)", "",
             f"Question: {preset.question}", "", f"Factor: {preset.factor}", "",
             "| level | " + " | ".join(preset.measures) + " |", "|---" * (len(preset.measures) + 1) + "|"]  # fmt: skip
    for level in preset.levels:
        cells = []
        for metric in preset.measures:
            row = effect_table[(effect_table["level"] == level.name) & (effect_table["metric"] == metric)]
            cells.append("n/a" if row.empty else f"{_number(row['mean'].iloc[0])} ± {_number(row['std'].iloc[0])}")
        lines.append(f"| {level.name} | " + " | ".join(cells) + " |")
    lines += ["", "(mean ± standard deviation over seeds)", "",
              "| statement | metric | effect (robustness: mean) | threshold | verdict |", "|---|---|---|---|---|"]  # fmt: skip
    for row in verdicts.itertuples():
        lines.append(f"| {row.statement} | {row.metric} | {_number(row.effect)} | {_number(row.threshold)} | **{row.verdict}** |")
    lines += ["", f"Rule: {ROBUST_RULE if preset.robust else RULE}."]
    return "\n".join(lines)
