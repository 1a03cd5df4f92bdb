"""Check the chart against the operator it deploys: flags, settings and default images.

Renders the operator Deployment with each value set and feeds its container's args to the
operator's own argument parser and its environment to the operator's own config loader, so a
renamed flag or setting fails here instead of in a crash-looping pod. With the default
values, the images handed to the operator must equal the operator's built-in defaults.

Usage: python charts-tests/contract.py HELM   (with the project's packages importable)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from clawdbot_api.v1alpha1 import AcceleratorType, Runtime
from clawdbot_operator.config import DEFAULT_IMAGES, OperatorConfig, image_key
from clawdbot_operator.main import parse_args

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "clawdbot"
VALUE_SETS = {
    "default": [],
    "all-features": ["-f", str(ROOT / "charts-tests" / "values" / "all-features.yaml")],
    "namespaced": ["-f", str(ROOT / "charts-tests" / "values" / "namespaced.yaml")],
}


def operator_container(helm: str, extra: list[str]) -> dict[str, Any]:
    """The operator container of the rendered Deployment."""
    rendered = subprocess.run(
        [helm, "template", "clawdbot", str(CHART), "--show-only", "templates/deployment.yaml",
         *extra],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    deployment = yaml.safe_load(rendered)
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def check(name: str, container: dict[str, Any]) -> list[str]:
    """Problems with one rendering (empty when the operator accepts it)."""
    problems = []
    try:
        parse_args(container["args"])
    except SystemExit:
        problems.append(f"{name}: the operator rejects its arguments {container['args']}")
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    config = OperatorConfig.load(env)
    for runtime in Runtime:
        for accel in AcceleratorType:
            variable = "CLAWDBOT_" + image_key(runtime, accel).upper()
            if variable not in env:
                problems.append(f"{name}: {variable} is not set")
            elif config.image_for(runtime, accel) != env[variable]:
                problems.append(f"{name}: the operator does not read {variable}")
    if name == "default" and dict(config.images) != dict(DEFAULT_IMAGES):
        for pair, image in DEFAULT_IMAGES.items():
            if config.images.get(pair) != image:
                problems.append(
                    f"default: chart image {config.images.get(pair)!r} for "
                    f"{pair[0].value}/{pair[1].value} differs from the operator's {image!r}"
                )
    for variable, setting in (("CLAWDBOT_IMAGE_FETCH_HF", "image_fetch_hf"),
                              ("CLAWDBOT_IMAGE_FETCH_RCLONE", "image_fetch_rclone")):  # fmt: skip
        if getattr(config, setting) != env.get(variable):
            problems.append(f"{name}: the operator does not read {variable}")
    return problems


def main() -> int:
    """Check every value set; print one line per problem."""
    helm = sys.argv[1]
    problems = []
    for name, extra in VALUE_SETS.items():
        problems += check(name, operator_container(helm, extra))
    for problem in problems:
        print(problem)
    print(f"chart/operator contract: {len(VALUE_SETS)} value sets, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
