"""``python -m tritoncnn.models NAME [options]``: print a model's summary table."""

from __future__ import annotations

import argparse
import ast

from tritoncnn import models
from tritoncnn.models.summary import summary


def _kv(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare string such as variant=imagenet


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tritoncnn.models", description=__doc__)
    p.add_argument("name", choices=models.names() + sorted(models.ALIASES))
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--depth", type=int, default=3, help="deepest module level shown")
    p.add_argument(
        "--set",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model keyword argument, e.g. --set variant=imagenet --set width_mult=0.5",
    )
    a = p.parse_args(argv)
    model = models.build(a.name, a.num_classes, a.in_channels, a.image_size, **dict(a.set))
    print(summary(model, (a.in_channels, a.image_size, a.image_size), depth=a.depth))


if __name__ == "__main__":
    main()
