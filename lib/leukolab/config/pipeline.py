"""The schemas of the stage graph (``params/pipeline.yaml``) and of a profile (``params/profiles/<name>.yaml``)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from leukolab.config import PARAMS_DIR, available
from leukolab.config.errors import ConfigError, unknown_key
from leukolab.config.experiment import Section
from leukolab.config.files import load_typed

PIPELINE_FILE = PARAMS_DIR / "pipeline.yaml"


class StageSpec(Section):
    notebook: str = Field(description="the stage's notebook, relative to `notebooks`")
    after: list[str] = Field([], description="stages (above this one) whose every task must finish first")
    foreach: str | None = Field(None, description="fan out over the experiments a profile lists under this key")
    deps: list[str] = Field([], description="files or folders whose contents are part of the stage's key")
    timeout: float | None = Field(None, gt=0, description="seconds after which the stage is stopped")
    schema_: str | None = Field(None, alias="schema",
                                description="`module:Class` whose fields the notebook's None parameters default to")

    def schema_class(self) -> type | None:
        """The class ``schema`` names, imported; None when the stage has none."""
        if not self.schema_:
            return None
        module, _, name = self.schema_.partition(":")
        return getattr(importlib.import_module(module), name)


class PipelineSpec(Section):
    notebooks: str = Field(".", description="the notebooks' folder, relative to this file")
    stages: dict[str, StageSpec]

    @model_validator(mode="after")
    def _after_stages_above(self):
        names = list(self.stages)
        for index, (name, stage) in enumerate(self.stages.items()):
            for upstream in stage.after:
                if upstream not in names[:index]:
                    raise ValueError(unknown_key(f"stage {name!r} runs after", upstream, names[:index], what="stage")
                                     + " (it must be a stage above this one)")
        return self


class Profile(Section):
    description: str = ""
    parameters: dict[str, Any] = Field({}, description="for every stage whose notebook declares the key")
    stage_parameters: dict[str, dict[str, Any]] = Field({}, description="stage -> parameters for that stage only")
    experiments: dict[str, list[str]] = Field({}, description="a fan-out key (`foreach`) -> experiment names")


def load_pipeline(path: str | Path | None = None) -> PipelineSpec:
    return load_typed(PipelineSpec, Path(path or PIPELINE_FILE))


def load_profile(profile: str) -> Profile:
    """A profile by name (``params/profiles/<name>.yaml``) or by the path of a YAML file."""
    if profile.endswith((".yaml", ".yml")):
        return load_typed(Profile, profile)
    if profile not in available("profiles"):
        raise ConfigError(unknown_key("--profile", profile, available("profiles"), what="profile") + ", or a YAML file")
    return load_typed(Profile, PARAMS_DIR / "profiles" / f"{profile}.yaml")
