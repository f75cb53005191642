"""Optional dependencies: which `pip install 'tunebench[EXTRA]'` brings each, and the one message
a feature gives when its package is missing (pyproject.toml's [project.optional-dependencies]).

In presets/ because every layer needs it: the schema checks `training.report_to`, the engine
bitsandbytes and the metrics, the TUI the YAML highlighter. Finding a module imports nothing.
"""

from __future__ import annotations

import importlib.util

from presets.errors import TunebenchError

# import name → (pip name, extra)
OPTIONAL = {
    "tensorboard": ("tensorboard", "tracking"),
    "wandb": ("wandb", "tracking"),
    "mlflow": ("mlflow", "tracking"),
    "trackio": ("trackio", "tracking"),
    "bitsandbytes": ("bitsandbytes", "gpu"),
    "liger_kernel": ("liger-kernel", "liger"),
    "rouge_score": ("rouge-score", "eval"),
    "sacrebleu": ("sacrebleu", "eval"),
    "tree_sitter_yaml": ("tree-sitter-yaml", "yaml"),
    "deepspeed": ("deepspeed", "deepspeed"),
    "flash_attn": ("flash-attn", "flash"),
    "mergekit": ("mergekit", "merge"),
    "trl": ("trl", "preference"),
}


class MissingExtra(TunebenchError):
    """A feature whose optional package is not installed."""


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed package
        return False


def install_hint(module: str) -> str:
    package, extra = OPTIONAL[module]
    return f"pip install 'tunebench[{extra}]' (or pip install {package})"


def missing_message(module: str, feature: str) -> str:
    package, _ = OPTIONAL[module]
    return f"{feature} needs {package}, which is not installed: {install_hint(module)}"


def require(module: str, feature: str) -> None:
    """MissingExtra naming the extra to install when `module` cannot be found."""
    if not is_installed(module):
        package, extra = OPTIONAL[module]
        raise MissingExtra(f"{feature} needs {package}, which is not installed", install_hint(module))
