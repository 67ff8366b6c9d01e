"""TF Serving's model configuration: the ``models.config`` text proto and the version layout on disk.

A model is a directory ``<base_path>`` holding one numbered sub-directory per version, each a
SavedModel: ``<base_path>/<version>/saved_model.pb``. Which versions are served follows the
model's ``model_version_policy`` exactly like ``tensorflow_model_server``: the newest one by default
(``latest { num_versions: N }`` for the N newest), ``all {}``, or ``specific { versions: ... }``.

Example ``models.config``:

    model_config_list {
      config {
        name: 'student'
        base_path: '/models/student'
        model_platform: 'tensorflow'
        model_version_policy { specific { versions: 2 } }
        version_labels { key: 'stable' value: 2 }
      }
    }

Relative ``base_path`` values are taken relative to the working directory, as TF Serving does.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping

from google.protobuf import text_format
from google.protobuf.message import Message
from tensorflow_serving.config import model_server_config_pb2

SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")
MODELS_CONFIG_FILE = "models.config"  # the name exports give their ModelServerConfig
TENSORFLOW_PLATFORM = "tensorflow"


@dataclasses.dataclass(frozen=True)
class ServableModel:
    """One configured model, resolved against the disk.

    Attributes:
        name: the model name clients put in ``ModelSpec.name``.
        base_path: the directory holding the numbered version directories.
        versions: the versions to serve, ascending.
        version_labels: label → version, as in the config's ``version_labels``.
    """

    name: str
    base_path: pathlib.Path
    versions: tuple[int, ...]
    version_labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def version_path(self, version: int) -> pathlib.Path:
        return self.base_path / str(version)


def read_text_proto(path: str | os.PathLike, message: Message, what: str,
                    allow_unknown_field: bool = False) -> Message:
    """Parses the text proto at ``path`` into ``message`` (returned).

    Raises:
        FileNotFoundError: ``path`` cannot be read; the message names ``what`` (``model config
            file``) and the file.
        ValueError: the text is not a valid ``message``; the message names the file and the type.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise FileNotFoundError(f"cannot read {what} {path}: {error}") from error
    try:
        text_format.Parse(text, message, allow_unknown_field=allow_unknown_field)
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a valid {message.DESCRIPTOR.full_name} text proto: "
                         f"{error}") from error
    return message


def read_model_server_config(path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
    """Parses a ``models.config`` text proto into a ``ModelServerConfig``."""
    return read_text_proto(path, model_server_config_pb2.ModelServerConfig(), "model config file")


def single_model_config(name: str, base_path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
    """The config ``tensorflow_model_server --model_name --model_base_path`` builds."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = str(base_path)
    model.model_platform = TENSORFLOW_PLATFORM
    return config


def models_config(models: Mapping[str, str | os.PathLike]) -> model_server_config_pb2.ModelServerConfig:
    """A config serving the newest version of each ``name → base_path``."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in models.items():
        config.model_config_list.config.extend(single_model_config(name, base_path).model_config_list.config)
    return config


def write_model_server_config(path: str | os.PathLike,
                              config: model_server_config_pb2.ModelServerConfig | Mapping[str, str | os.PathLike],
                              ) -> pathlib.Path:
    """Writes ``config`` (a ``ModelServerConfig`` or ``{name: base_path}``) as a text proto."""
    if not isinstance(config, model_server_config_pb2.ModelServerConfig):
        config = models_config(config)
    path = pathlib.Path(path)
    path.write_text(text_format.MessageToString(config), encoding="utf-8")
    return path


def available_versions(base_path: str | os.PathLike) -> list[int]:
    """The versions under ``base_path``: numeric sub-directories holding a SavedModel, ascending.

    A numeric directory without ``saved_model.pb`` is skipped (an export still being written).
    """
    base_path = pathlib.Path(base_path)
    if not base_path.is_dir():
        raise FileNotFoundError(f"model base_path {base_path} is not a directory; expected "
                                f"{base_path}/<version>/saved_model.pb")
    versions = []
    for child in base_path.iterdir():
        if child.is_dir() and child.name.isdigit() and any(
                (child / filename).is_file() for filename in SAVED_MODEL_FILENAMES):
            versions.append(int(child.name))
    return sorted(versions)


def _versions_to_serve(model: model_server_config_pb2.ModelConfig, on_disk: list[int]) -> tuple[int, ...]:
    policy = model.model_version_policy
    which = policy.WhichOneof("policy_choice") or "latest"
    if which == "all":
        return tuple(on_disk)
    if which == "specific":
        wanted = sorted(set(policy.specific.versions))
        if not wanted:
            raise ValueError(f"model {model.name!r}: model_version_policy specific {{}} lists no versions")
        missing = [version for version in wanted if version not in on_disk]
        if missing:
            raise FileNotFoundError(
                f"model {model.name!r}: versions {missing} requested by model_version_policy are not "
                f"under {model.base_path} (found {on_disk})")
        return tuple(wanted)
    num_versions = policy.latest.num_versions or 1
    return tuple(on_disk[-num_versions:])


def resolve_servable_models(config: model_server_config_pb2.ModelServerConfig) -> list[ServableModel]:
    """Checks ``config`` and finds on disk the versions each model serves.

    Raises:
        ValueError: a config TF Serving would refuse (no models, duplicate or empty names, another
            platform, custom configs, labels on versions not served).
        FileNotFoundError: a base_path without any version, or a requested version missing.
    """
    if config.HasField("custom_model_config"):
        raise ValueError("custom_model_config is not supported; use model_config_list")
    models = []
    seen = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ValueError(f"a model config has no name (base_path {model.base_path!r})")
        if model.name in seen:
            raise ValueError(f"model name {model.name!r} is configured twice")
        seen.add(model.name)
        if not model.base_path:
            raise ValueError(f"model {model.name!r} has no base_path")
        if model.model_platform not in ("", TENSORFLOW_PLATFORM):
            raise ValueError(f"model {model.name!r}: model_platform {model.model_platform!r} is not "
                             f"supported, only {TENSORFLOW_PLATFORM!r}")
        on_disk = available_versions(model.base_path)
        if not on_disk:
            raise FileNotFoundError(f"model {model.name!r}: no version found under {model.base_path}; "
                                    f"expected {model.base_path}/<version>/saved_model.pb")
        versions = _versions_to_serve(model, on_disk)
        labels = dict(model.version_labels)
        for label, version in labels.items():
            if version not in versions:
                raise ValueError(f"model {model.name!r}: label {label!r} points at version {version}, "
                                 f"which is not served (served: {list(versions)})")
        models.append(ServableModel(model.name, pathlib.Path(model.base_path), versions, labels))
    if not models:
        raise ValueError("the model config lists no models (model_config_list { config { ... } })")
    return models
