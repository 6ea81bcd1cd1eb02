"""The training configs and sweep specs that ship inside the package, found by name.

``ols train -c cifar100/paper --model resnet56`` and ``ols sweep table7-noise-digits`` work from any
directory once ols is installed; a path to a file of your own always wins. In a checkout
the same files are ``configs/**/*.yaml`` and ``experiments/*.yaml`` (the wheel maps them to
the packages ``ols.configs`` and ``ols.specs``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List

#: kind -> (package holding the files, the folder name they have in a checkout)
SHIPPED = {"config": ("ols.configs", "configs"), "spec": ("ols.specs", "experiments")}


def shipped_names(kind: str) -> List[str]:
    """The names of the shipped files of ``kind`` (``"config"`` or ``"spec"``), without ``.yaml``."""
    root = _root(kind)
    if root is None:
        return []
    names = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                stack.append((entry, f"{prefix}{entry.name}/"))
            elif entry.name.endswith(".yaml"):
                names.append(prefix + entry.name[: -len(".yaml")])
    return sorted(names)


def resolve(path_or_name: str, kind: str) -> str:
    """``path_or_name`` if it is a file, else the shipped file of that name; one-line error otherwise."""
    if Path(path_or_name).is_file():
        return path_or_name
    package, folder = SHIPPED[kind]
    name = path_or_name[len(folder) + 1:] if path_or_name.startswith(folder + "/") else path_or_name
    name = name if name.endswith(".yaml") else name + ".yaml"
    root = _root(kind)
    if root is not None:
        candidate = root.joinpath(*name.split("/"))
        if candidate.is_file():
            return str(candidate)
    names = shipped_names(kind)
    folder_of = name.rsplit("/", 1)[0] if "/" in name else None
    recipes = [n for n in names if folder_of and n.startswith(folder_of + "/")]
    if kind == "config" and recipes:  # an old per-network, per-loss name (cifar100/resnet56-ols)
        raise ValueError(f"config file not found: {path_or_name}; the shipped configs are one recipe per "
                         f"schedule ({', '.join(recipes)}), with the network and loss as flags, e.g. "
                         f"`ols train -c {recipes[0]} --model resnet56 --loss ols`")
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise ValueError(f"{kind} file not found: {path_or_name} (not a file, nor a shipped {kind} name such as "
                     f"{shown or 'none shipped'}; `ols list-presets` lists them all)")


def _root(kind: str):
    try:
        return resources.files(SHIPPED[kind][0])
    except (ModuleNotFoundError, TypeError):
        return None
