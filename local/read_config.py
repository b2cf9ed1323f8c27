#!/usr/bin/env python3
"""Print config values from a resolved training config (EXP/config.yaml) for shell recipes.

    local/read_config.py EXP/config.yaml model.name model.args.base_width
prints one value per key and line (an empty line for a key the config does not have; YAML null too).
"""

from __future__ import annotations

import sys

import yaml


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: read_config.py CONFIG.yaml KEY [KEY ...]", file=sys.stderr)
        return 1
    try:
        with open(argv[0], encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        print(f"read_config.py: {argv[0]}: {err}", file=sys.stderr)
        return 1
    for key in argv[1:]:
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        print("" if node is None else node)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
