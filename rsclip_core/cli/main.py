"""``rsclip``: export, reinforce, teacher, train and eval commands.

Each subcommand lives in its own module and is imported only when it runs, so ``rsclip --help``
stays fast and a missing optional dependency (torch, coremltools) only affects its command.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

# name -> "module:attribute" of a click command or group
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": ("rsclip_core.cli.export_cmd:export", "Reparameterize a model and export ONNX / Core ML."),
    "models": ("rsclip_core.cli.models_cmd:models", "List registered model configs."),
    "reinforce": ("rsclip_core.cli.reinforce_cmd:reinforce", "Build a reinforced dataset (shards)."),
    "teacher": ("rsclip_core.cli.teacher_cmd:teacher", "Fit or inspect teacher models."),
    "train": ("rsclip_core.cli.train_cmd:train", "Train a student on reinforced shards."),
    "eval": ("rsclip_core.cli.eval_cmd:eval_cmd", "Retrieval / zero-shot evaluation."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in SUBCOMMANDS if self._available(name))

    @staticmethod
    def _available(name: str) -> bool:
        module = SUBCOMMANDS[name][0].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS or not self._available(cmd_name):
            return None
        module_name, attr = SUBCOMMANDS[cmd_name][0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_name="rsclip")
def cli() -> None:
    """rsclip: lightweight image-text models for remote sensing."""


if __name__ == "__main__":  # pragma: no cover
    cli()
