"""The papers' study protocols, one JSON file each in ``protocols/``, resolved to an :class:`ExperimentConfig`.

A protocol file may extend another (``"extends"``: the name of the protocol it varies). Resolution order: the
protocol's paper setting (``"config"``), then its dataset's changes (``"datasets"``, chosen by
the data folder's name or dataset.json's ``name``: BrainTumour, Spleen, Heart, ...; ``demo`` for the demo cohort),
then the scale (``"scales"``), then the user's ``--config`` file. Scales shrink rounds, epochs, image size, model
width and cohort; they never change what a run does.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..registry import Registry
from ..typed import ConfigError, build
from .config import SCALES, ExperimentConfig, deep_merge, expand_grid, read_mapping


@dataclass(frozen=True)
class Protocol:
    """A protocol file's header and content."""

    name: str
    title: str
    paper: str
    content: dict[str, Any]


PROTOCOLS: Registry[str] = Registry("protocol")
PROTOCOLS.register("star", "STAR: spatial aggregation pseudo-labels and similarity queries (Ma et al., MICCAI 2025)")(
    "star.json"
)
PROTOCOLS.register(
    "less_is_more", "Less Is More: uncertainty, representativeness and strided blocks (Burmeister et al., 2022)"
)("less_is_more.json")
PROTOCOLS.register(
    "slice_config", "Slice configuration: density x volumes, selection, mask interpolation (Zhang et al., MIDL 2025)"
)("slice_config.json")
PROTOCOLS.register(
    "slice_config_3d", "The same study's 3D half: 3D U-Net, SegResNet, UNETR on sparse slices (Zhang et al., MIDL 2025)"
)("slice_config_3d.json")
PROTOCOLS.register(
    "nath", "Nath et al.: proxy-ranked cold start, volume queries, semi-supervised fine-tuning, 3D (MICCAI 2022)"
)("nath.json")
PROTOCOLS.register("sbc_al", "SBC-AL: structure and boundary consistency queries with SFP and ASR (MICCAI 2024)")(
    "sbc_al.json"
)


def load_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name fails with the closest one. A protocol that ``"extends"``
    another is that one's content with its own merged over it (:func:`deep_merge`: sections key by key, lists and
    values replaced), so a variant of a study states only what differs."""
    file_name = PROTOCOLS.get(name)
    content = json.loads((resources.files(__package__) / "protocols" / file_name).read_text())
    parent = content.pop("extends", None)
    if parent is not None:
        content = deep_merge(load_protocol(parent).content, content)
    return Protocol(name, content["title"], content["paper"], content)


def dataset_key(protocol: Protocol, data: str | Path) -> str | None:
    """The protocol's dataset entry for ``data``: "demo" for the offline cohorts, or the entry whose name appears in
    the folder's name, its dataset.json ``name`` or the name of its layout (ACDC, KiTS19) (case-insensitive); None
    when the protocol has none for it."""
    from .cohort import DEMO_SOURCES

    if str(data) in DEMO_SOURCES:
        return "demo" if "demo" in protocol.content.get("datasets", {}) else None
    from ..io import CASE_LAYOUTS

    names = [Path(data).name.lower()]
    names += [layout.name.lower() for layout in CASE_LAYOUTS if Path(data).is_dir() and layout.recognizes(Path(data))]
    description = Path(data) / "dataset.json"
    if description.is_file():
        with contextlib.suppress(json.JSONDecodeError):  # the MSD reader reports a malformed file with its message
            names.append(str(json.loads(description.read_text()).get("name", "")).lower())
    for key in protocol.content.get("datasets", {}):
        if key != "demo" and any(key.lower() in name for name in names):
            return key
    return None


def resolve_config(
    name: str,
    data: str | Path = "demo",
    scale: str = "cpu",
    config_file: str | Path | None = None,
    changes: dict[str, Any] | None = None,
) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The protocol ``name`` at ``scale`` for ``data``, with a user's overrides; and how it was resolved.

    Raises:
        ConfigError: unknown scale, or an override key or value that does not fit (named, with the fix).
        UnknownNameError: unknown protocol (with the closest name).
    """
    protocol = load_protocol(name)
    if scale not in SCALES:
        raise ConfigError(f"Unknown scale {scale!r}; use one of {', '.join(SCALES)}.")
    key = dataset_key(protocol, data)
    values = dict(protocol.content["config"])
    if key is not None:
        values = deep_merge(values, protocol.content["datasets"][key])
    values = deep_merge(values, protocol.content.get("scales", {}).get(scale, {}))
    if config_file is not None:
        values = deep_merge(values, read_mapping(config_file))
    if changes:
        values = deep_merge(values, changes)
    config = build(ExperimentConfig, {**expand_grid(values), "protocol": name})
    config.training_config(0)  # training keys are checked now, before any work
    provenance = {
        "protocol": name,
        "title": protocol.title,
        "paper": protocol.paper,
        "scale": scale,
        "dataset_entry": key,
        "config_file": str(config_file) if config_file else None,
    }
    return config, provenance
