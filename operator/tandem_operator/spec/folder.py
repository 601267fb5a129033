"""Model folders: where a model's (or the difficulty estimator's) files come from."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field, model_validator

from tandem_operator.spec.rules import Rule, SpecModel, described

MODEL_MOUNT_DIR = "/models"
DTYPES = ("bfloat16", "float16", "float32")
ABSOLUTE = "^/"


class ModelSource(str, enum.Enum):
    """Where a folder comes from."""

    PVC = "pvc"
    HOST_PATH = "hostPath"
    IMAGE = "image"


class PvcFolder(SpecModel):
    """A folder inside a PersistentVolumeClaim."""

    claim_name: str = described("The claim.", min_length=1)
    path: str = described("Folder inside the claim (relative; default: its root).", default="",
                          pattern="^([^/].*)?$")

    RULES = (Rule("!has(self.path) || !(self.path == '..' || self.path.startsWith('../') || "
                  "self.path.endsWith('/..') || self.path.contains('/../'))",
                  "must stay inside the claim (no '..')",
                  lambda pvc: ".." not in pvc.path.split("/"), field="path"),)


class HostFolder(SpecModel):
    """A folder on every node."""

    path: str = described("Absolute folder on the node.", pattern=ABSOLUTE)


class ImageFolder(SpecModel):
    """A folder baked into the image."""

    path: str = described("Absolute folder in the image.", pattern=ABSOLUTE)


class FolderSpec(SpecModel):
    """A folder from exactly one of pvc, hostPath or image."""

    pvc: PvcFolder | None = described("A PersistentVolumeClaim holding the folder.", default=None)
    host_path: HostFolder | None = described("A folder on every node.", default=None)
    image: ImageFolder | None = described("A folder baked into the image.", default=None)

    # The API server checks the one-of with these branches; `_one_source` is the same rule here.
    SCHEMA_EXTRA = {"oneOf": [{"required": [source.value]} for source in ModelSource]}

    @model_validator(mode="after")
    def _one_source(self) -> FolderSpec:
        if sum(where is not None for where in (self.pvc, self.host_path, self.image)) != 1:
            raise ValueError("give exactly one of pvc, hostPath or image")
        return self

    @property
    def source(self) -> ModelSource:
        """Which of the three sources the folder comes from."""
        if self.pvc is not None:
            return ModelSource.PVC
        return ModelSource.HOST_PATH if self.host_path is not None else ModelSource.IMAGE

    @property
    def path(self) -> str:
        """The folder in its source (relative inside a claim, else absolute)."""
        where = self.pvc or self.host_path or self.image
        assert where is not None  # _one_source
        return where.path

    @property
    def claim_name(self) -> str | None:
        """The PersistentVolumeClaim, for a pvc source."""
        return self.pvc.claim_name if self.pvc is not None else None


class ModelSpec(FolderSpec):
    """One model: its folder, the name it is served under, and its weights' dtype."""

    served_name: str | None = Field(default=None, alias="name", min_length=1,
                                    description="Name the model is served under (--model-name).")
    dtype: Literal["bfloat16", "float16", "float32"] = described("Weights dtype.",
                                                                 default="bfloat16")
