"""A sweep as a W&B sweep YAML (``ablate sweep SPEC --export-wandb PATH``): W&B's agents run the grid."""

from __future__ import annotations

import json
from typing import Any

from lightning_modules.backbones import parse_layout, variant_name
from lightning_modules.backbones.blocks import BLOCK_DESCRIPTIONS
from lightning_modules.backbones.registry import MATCHED

from .spec import SweepSpec


def wandb_sweep_config(spec: SweepSpec, project: str = "stacking-ablations") -> dict[str, Any]:
    """A W&B sweep (method grid) whose agents run ``ablate train`` with one grid point each: ``wandb sweep`` on
    the YAML, then one ``wandb agent`` per GPU. The layout axis is written as the model names it stands for."""
    def literal(value: Any) -> Any:  # the agent writes --key=value; jsonargparse reads JSON for lists and dicts
        return json.dumps(value) if isinstance(value, (list, dict)) else value

    if spec.init_from is not None:
        raise ValueError(f"sweep {spec.name}: a chained sweep (init_from) cannot be exported: each run's source "
                         "depends on its own grid point, which a W&B grid cannot express; run it with `ablate sweep`")
    parameters: dict[str, Any] = {key: {"value": literal(value)} for key, value in spec.fixed.items()}
    for key, values in spec.grid.items():
        if "," in key:
            raise ValueError(f"sweep {spec.name}: linked axis {key} cannot be exported: a W&B grid sweep crosses "
                             "every axis; run it with `ablate sweep` or write one sweep per linked value")
        if key == "layout":
            layouts = [str(parse_layout(str(v), BLOCK_DESCRIPTIONS)) for v in values]
            if all((spec.budget, layout) in MATCHED for layout in layouts):
                parameters["model.init_args.model"] = {"values": [variant_name(v, spec.budget) for v in layouts]}
            else:  # each agent's run sizes its layout for the budget (the registry's variant where there is one)
                parameters["model.init_args.model"] = {"values": layouts}
                parameters["model.init_args.budget"] = {"value": spec.budget}
        else:
            parameters[key] = {"values": [literal(v) for v in values]}
    return {
        "name": spec.name, "project": project, "method": "grid", "program": "ablations/cli.py",
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "-m", "ablations.cli", "train", f"--config={spec.config}",
                    "--wandb.enabled=true", f"--wandb.project={project}", f"--wandb.group={spec.name}", "${args}"],
    }
