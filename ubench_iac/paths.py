"""Locations of the data files ubench ships: templates, schemas, recipes."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """Return the directory of ``kind`` ('templates', 'schemas', 'recipes' or
    'profiles').

    A wheel carries them under ``ubench_iac/_data``; a source checkout or an
    editable install has them at the top of the repository.
    """
    packaged = _PACKAGE / "_data" / kind
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / kind
