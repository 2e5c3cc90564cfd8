"""Hydra callback: the report of a sweep, written when the sweep ends."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

from simbench.report.cli import report

try:
    from hydra.experimental.callback import Callback
except ImportError:  # hydra is a dependency; this only keeps `simbench report` usable without it
    Callback = object


class ReportCallback(Callback):
    """Hydra callback: after a sweep, write the report of its runs (experiment presets turn it on).

    out: report directory, relative to where simbench was started; None: results/<experiment preset>
    (the preset's name is only known once the sweep runs, hence not an interpolation in the config).
    n_boot, seed, formats: as the CLI.
    """

    def __init__(self, out: str | None = None, n_boot: int = 200, seed: int = 0,
                 formats: Sequence[str] = ("png", "svg")):
        self.out = out
        self.n_boot = int(n_boot)
        self.seed = int(seed)
        self.formats = list(formats)

    def on_multirun_end(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        sweep_dir = str(config.hydra.sweep.dir)
        out = self.out
        if out is None:
            preset = config.hydra.runtime.choices.get("experiment") or Path(sweep_dir).name
            out = str(Path("results") / str(preset))
        # As typed: unresolved (an override may hold an interpolation such as ${hydra:runtime.choices.x},
        # which cannot resolve once the sweep is over) and quoted for a shell.
        overrides = (OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
                     if "overrides" in config.hydra else [])
        command = " ".join(["python -m simbench", *(shlex.quote(str(o)) for o in overrides)])
        written = report([sweep_dir], out, n_boot=self.n_boot, seed=self.seed, formats=self.formats,
                         command=command)
        print(f"\nreport: {sum(len(v) for v in written.values())} files in {out}")
