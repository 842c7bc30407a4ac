"""Coverage maps: where the candidates, the selection and the labels lie; which elements a set has.

- :func:`coverage_map`: the DIRECT embedding (PC1 vs PC2) of a rung's pool, with what was selected
  and what was labeled drawn on top, so a gap in the coverage shows at a glance. Large pools
  (100k candidates and more) are drawn as a hexbin density, which stays fast and readable.
- :func:`periodic_table`: an element-frequency heat map on an 18-column periodic table
  (lanthanides and actinides in two rows below), colour on a log scale; :func:`element_counts`
  gives its input from a list of structures.
- :func:`store_maps`: both, for a campaign store: one coverage map per rung, one periodic table of
  the labeled structures (the dashboard draws the same maps itself, interactively).

Group and period come from pymatgen's Element; the drawing is plain matplotlib: pymatgen's own
``periodic_table_heatmap`` delegates to pymatviz (plotly figures, PNG export through kaleido),
neither of which hifidata depends on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from hifidata.plots import pyplot, save

log = logging.getLogger(__name__)

#: A background group with more points than this is drawn as a hexbin density.
HEXBIN_ABOVE = 5000
#: Elements drawn in the periodic table (H to Og).
MAX_Z = 118
#: Grid rows of the lanthanide and actinide rows (row 8 is left as a gap).
LANTHANIDE_ROW, ACTINIDE_ROW = 9, 10

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_COLOURS = ("tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple", "tab:brown")


# -- coverage map ------------------------------------------------------------------------------
def coverage_map(
    embedding,
    groups: Mapping[str, Sequence[int] | np.ndarray],
    path: str | Path,
    title: str | None = None,
    explained_variance_ratio: Sequence[float] | None = None,
) -> Path:
    """Scatter of PC1 vs PC2 with one layer per group; write a PNG at ``path`` and return it.

    groups : name -> indices (or a boolean mask) into the rows of ``embedding``, ordered from the
        broadest (the candidates, drawn as a light grey background: points, or a hexbin density
        above HEXBIN_ABOVE points) to the narrowest (the labeled, drawn last, on top and
        smaller, so the groups under it stay visible). Each group has its own marker and colour,
        and its count in the legend.
    explained_variance_ratio : fraction of variance of each component, shown on the axis labels.

    With a single component the y axis is the structure's row in ``embedding`` (a strip plot).
    """
    embedding = np.asarray(embedding, dtype=np.float64)
    if embedding.ndim == 1:
        embedding = embedding[:, None]
    if embedding.ndim != 2 or embedding.shape[1] < 1:
        raise ValueError(f"embedding must have shape (N, components), got {embedding.shape}")
    if not groups:
        raise ValueError("coverage_map needs at least one group (the candidates)")
    n = embedding.shape[0]
    x = embedding[:, 0]
    two_d = embedding.shape[1] >= 2
    y = embedding[:, 1] if two_d else np.arange(n, dtype=np.float64)

    plt = pyplot()
    figure, ax = plt.subplots(figsize=(7.0, 5.5))
    handles = []
    for position, (name, members) in enumerate(groups.items()):
        index = _indices(members, n, name)
        label = f"{name} ({len(index)})"
        if position == 0:
            handles.append(_background(ax, x[index], y[index], label))
            continue
        # narrower groups are drawn smaller, so a labeled point still shows its selected ring
        size = (48 if len(index) <= 200 else 18 if len(index) <= 2000 else 5) * 0.5 ** (
            position - 1)
        handles.append(ax.scatter(
            x[index], y[index], s=size, marker=_MARKERS[(position - 1) % len(_MARKERS)],
            color=_COLOURS[(position - 1) % len(_COLOURS)], edgecolors="black",
            linewidths=0.4 if len(index) <= 2000 else 0, alpha=0.9, label=label,
            zorder=2 + position,
        ))
    ax.set_xlabel(_axis_label(0, explained_variance_ratio))
    ax.set_ylabel(_axis_label(1, explained_variance_ratio) if two_d else "structure (row)")
    if title:
        ax.set_title(title)
    ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.85)
    return save(figure, path)


def _indices(members, n: int, name: str) -> np.ndarray:
    members = np.asarray(members)
    if members.dtype == bool:
        if members.shape != (n,):
            raise ValueError(f"group {name!r}: mask has shape {members.shape}, expected ({n},)")
        return np.flatnonzero(members)
    if members.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(members.dtype, np.integer):
        raise ValueError(f"group {name!r}: indices must be integers or a boolean mask")
    members = members.reshape(-1).astype(np.int64)
    if np.any((members < 0) | (members >= n)):
        raise ValueError(f"group {name!r}: indices outside 0..{n - 1}")
    return members


def _background(ax, x: np.ndarray, y: np.ndarray, label: str):
    from matplotlib.patches import Patch

    if len(x) > HEXBIN_ABOVE:
        ax.hexbin(x, y, gridsize=90, bins="log", mincnt=1, cmap="Greys", linewidths=0,
                  alpha=0.6, zorder=1)
        return Patch(facecolor="0.6", label=label)
    return ax.scatter(x, y, s=8, color="0.72", linewidths=0, label=label, zorder=1)


def _axis_label(component: int, ratio: Sequence[float] | None) -> str:
    name = f"PC{component + 1}"
    if ratio is not None and len(ratio) > component and np.isfinite(ratio[component]):
        return f"{name} ({100 * float(ratio[component]):.1f}% of variance)"
    return name


# -- periodic table ----------------------------------------------------------------------------
def element_counts(structures: Iterable[Atoms], per: str = "structure") -> dict[str, int]:
    """How often each element occurs, ordered by atomic number.

    per="structure" (the default): the number of structures that contain the element at least
    once — what a dataset card reports ("O in 812 of 1000 configurations"), and not swamped by
    a few large cells. per="atom": the number of atoms of the element over all structures.
    """
    if per not in ("structure", "atom"):
        raise ValueError(f"per is 'structure' or 'atom', got {per!r}")
    totals = np.zeros(MAX_Z + 1, dtype=np.int64)
    for atoms in structures:
        numbers = np.asarray(atoms.get_atomic_numbers())
        if per == "structure":
            numbers = np.unique(numbers)
        totals += np.bincount(numbers, minlength=MAX_Z + 1)[: MAX_Z + 1]
    return {chemical_symbols[z]: int(totals[z]) for z in np.flatnonzero(totals) if z > 0}


def table_position(element: str | int) -> tuple[int, int]:
    """(grid row, column), both from 1, of an element in the 18-column table.

    Rows 1-7 are the periods, columns 1-18 the groups; the lanthanides La-Lu fill row 9 and the
    actinides Ac-Lr row 10, columns 3-17 (so group 3 of periods 6 and 7 stays empty).
    """
    from pymatgen.core.periodic_table import Element

    z = element if isinstance(element, int | np.integer) else atomic_numbers.get(str(element))
    if z is None or not 1 <= int(z) <= MAX_Z:
        raise ValueError(f"not an element: {element!r}")
    item = Element.from_Z(int(z))
    if item.is_lanthanoid:
        return LANTHANIDE_ROW, 3 + int(z) - 57
    if item.is_actinoid:
        return ACTINIDE_ROW, 3 + int(z) - 89
    return int(item.row), int(item.group)


def periodic_table(
    counts: Mapping[str, int], path: str | Path, title: str | None = None,
    cmap: str = "viridis",
) -> Path:
    """An element-frequency heat map: every element a cell with its symbol and count.

    Colour is on a log scale (counts span orders of magnitude); elements with a zero (or no)
    count are drawn as empty cells. Writes a PNG at ``path`` and returns it.
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    for symbol, count in counts.items():
        table_position(symbol)  # raises on a symbol that is not an element
        if count < 0:
            raise ValueError(f"{symbol}: negative count {count}")
    top = max([int(c) for c in counts.values()] + [1])
    norm = LogNorm(vmin=1, vmax=max(top, 10))
    plt = pyplot()
    colours = matplotlib.colormaps[cmap]
    figure, ax = plt.subplots(figsize=(13.0, 7.6))
    for z in range(1, MAX_Z + 1):
        symbol = chemical_symbols[z]
        row, column = table_position(z)
        count = int(counts.get(symbol, 0))
        face = colours(norm(count)) if count > 0 else (1.0, 1.0, 1.0, 1.0)
        ax.add_patch(Rectangle((column - 0.5, row - 0.5), 0.94, 0.94, facecolor=face,
                               edgecolor="0.35" if count > 0 else "0.8", linewidth=0.6))
        ink = _ink(face) if count > 0 else "0.65"
        ax.text(column - 0.03, row - 0.12, symbol, ha="center", va="center", fontsize=10,
                fontweight="bold" if count > 0 else "normal", color=ink)
        if count > 0:
            ax.text(column - 0.03, row + 0.22, _compact(count), ha="center", va="center",
                    fontsize=7, color=ink)
    ax.text(2.97, 6.2, "La–Lu", ha="center", va="center", fontsize=7, color="0.55")
    ax.text(2.97, 7.2, "Ac–Lr", ha="center", va="center", fontsize=7, color="0.55")
    ax.set_xlim(0.4, 18.6)
    ax.set_ylim(ACTINIDE_ROW + 0.6, 0.4)
    ax.set_aspect("equal")
    ax.axis("off")
    figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax, orientation="horizontal",
                    fraction=0.04, pad=0.02, shrink=0.5, label="count (log scale)")
    if title:
        ax.set_title(title)
    return save(figure, path)


def _ink(rgba) -> str:
    red, green, blue = rgba[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def _compact(count: int) -> str:
    if count < 10_000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.0f}k"
    return f"{count / 1_000_000:.1f}M"


# -- a store's maps ----------------------------------------------------------------------------
def store_maps(store, out_dir: str | Path) -> list[Path]:
    """The coverage map of every rung and the periodic table of the labeled structures.

    For each selection (one per rung, named after it; in the store's order, which is by name)
    ``coverage-<rung>.png``: the rung's pool (all candidates, or the selection of the lower
    rung it picked from), what it selected, and what the rung labeled ok (and failed, if any),
    on the selection's own embedding — which covers its pool only. Then ``elements.png``:
    element frequency (structures containing each element) over the structures with an ok
    label of any rung (:func:`labeled_ok_ids`). Returns the paths written.
    """
    from hifidata.errors import StoreError

    out_dir = Path(out_dir)
    names = store.selection_names()
    selections = {name: store.selection(name) for name in names}
    paths = []
    for name, selection in selections.items():
        embedding = selection.arrays.get("embedding")
        if embedding is None:
            log.warning("selection %s has no embedding: no coverage map", name)
            continue
        where = {sid: i for i, sid in enumerate(selection.pool_ids)}
        try:
            status = store.labeled_ids(store.method_id(name))
        except StoreError:  # selected, not labeled yet: the rung is not registered
            status = {}
        groups = {
            _pool_name(selection, selections): np.arange(len(selection.pool_ids)),
            "selected": [where[sid] for sid in selection.selected_ids if sid in where],
            "labeled ok": [where[s] for s, st in status.items() if st == "ok" and s in where],
        }
        failed = [where[s] for s, st in status.items() if st != "ok" and s in where]
        if failed:
            groups["label failed"] = failed
        paths.append(coverage_map(
            embedding, groups, out_dir / f"coverage-{_file_part(name)}.png",
            title=f"{name}: coverage of its pool",
            explained_variance_ratio=_ratio(selection.arrays.get("explained_variance")),
        ))
    ok = labeled_ok_ids(store)
    paths.append(periodic_table(
        element_counts(store.structures(ok)) if ok else {}, out_dir / "elements.png",
        title=f"{store.path.name}: structures containing each element "
              f"({len(ok)} labeled structures)",
    ))
    return paths


def labeled_ok_ids(store) -> list[str]:
    """Structures with an ok label of any rung, each once, in the order first met."""
    ok: dict[str, None] = {}
    for method in store.methods():
        for sid, status in store.labeled_ids(method["method_id"]).items():
            if status == "ok":
                ok[sid] = None
    return list(ok)


def _pool_name(selection, selections: Mapping) -> str:
    for other, candidate in selections.items():
        if other != selection.name and candidate.selected_ids == selection.pool_ids:
            return f"pool: selected for {other}"
    return "candidates"


def _ratio(explained_variance) -> np.ndarray | None:
    if explained_variance is None:
        return None
    values = np.asarray(explained_variance, dtype=np.float64).reshape(-1)
    total = values.sum()
    return values / total if total > 0 else None


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "rung"
