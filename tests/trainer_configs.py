"""One builder for the small trainer config.toml that the trainer tests train with."""

from __future__ import annotations


def trainer_toml(
    model_name: str = "arm",
    *,
    trees: int,
    depth: int | None = None,
    horizon_s: float | None = None,
) -> str:
    """The text of a config with 80-sample windows every 40 samples and a small forest.

    `depth` and `horizon_s` are written only when given (the trainer's defaults otherwise);
    a caller appends further tables (labels sources, …) to the text.
    """
    lines = [
        "[trainer]",
        f'model_name = "{model_name}"',
        "[trainer.features]",
        "window = 80",
        "hop = 40",
        "[trainer.model]",
        f"n_estimators = {trees}",
    ]
    if depth is not None:
        lines.append(f"max_depth = {depth}")
    if horizon_s is not None:
        lines += ["[trainer.labels]", f"horizon_s = {horizon_s}"]
    return "\n".join(lines) + "\n"
