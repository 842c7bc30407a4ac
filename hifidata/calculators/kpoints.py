"""K-point sampling shared by the periodic engines, so CP2K and pw.x sample the same points.

A method's ``kpoints`` is one of:

- ``null`` / ``"gamma"`` / ``[1, 1, 1]``: Γ only (one method, however it is written);
- ``[n1, n2, n3]``: a Monkhorst–Pack grid as Monkhorst and Pack defined it (Phys. Rev. B 13,
  5188 (1976)): Γ-centred along odd n, shifted half a step off Γ along even n;
- ``{"spacing": s}``: per structure, the Monkhorst–Pack grid with n_i = ⌈|b_i| / s⌉ points
  along reciprocal vector b_i (2π included, s in Å⁻¹): the same sampling density for an 8-atom
  cell and a 64-atom supercell in one rung, as VASP's KSPACING does. The spacing, not the grid,
  is the method's identity.
"""

from __future__ import annotations

import math
from typing import Any

from ase import Atoms

Kpoints = list[int] | dict[str, float] | None


def resolve_kpoints(value: Any) -> Kpoints:
    """The canonical form: ``None`` (Γ only), ``[n1, n2, n3]`` or ``{"spacing": s}``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "gamma"):
        return None
    if isinstance(value, dict):
        spacing = value.get("spacing")
        if set(value) != {"spacing"} or isinstance(spacing, bool) or not isinstance(
            spacing, int | float
        ) or not (math.isfinite(spacing) and spacing > 0):
            raise ValueError(
                f"'kpoints' as a mapping is {{spacing: <Å⁻¹, positive>}}, not {value!r}"
            )
        return {"spacing": float(spacing)}
    if (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)
    ):
        return None if list(value) == [1, 1, 1] else [int(n) for n in value]
    raise ValueError(
        "'kpoints' must be null, 'gamma', three positive integers or {spacing: <Å⁻¹>}, "
        f"not {value!r}"
    )


def mesh(atoms: Atoms, kpoints: Kpoints) -> list[int] | None:
    """The grid for this structure: ``None`` for Γ only, else ``[n1, n2, n3]``."""
    if isinstance(kpoints, dict):
        lengths = atoms.cell.reciprocal().lengths() * 2 * math.pi
        grid = [max(1, math.ceil(length / kpoints["spacing"] - 1e-9)) for length in lengths]
        return None if grid == [1, 1, 1] else grid
    return kpoints
