"""Output of :func:`~.summary.summary` and :func:`~.summary.compare`: rich tables, JSON, CSV and a plot.

JSON carries the dataclasses' fields as they are (shapes as lists, None as null); the tables round for
reading. ``rich`` and ``matplotlib`` are imported only by the functions that need them.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys

from .summary import LayerRow, ModelComparison, ModelSummary


def count(n: int) -> str:
    """138357544 -> '138,357,544'."""
    return f"{n:,}"


def si(n: float) -> str:
    """15476385792 -> '15.48 G' (powers of 1000, as MAC counts are quoted)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def size(nbytes: int) -> str:
    """Bytes in binary units: 60448672 -> '57.6 MiB'."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def ratio(params: int, reference: int) -> str:
    """How ``params`` compares with ``reference``: '1.00x', '8.71x fewer', '2.27x more'."""
    if params == reference:
        return "1.00x"
    if not params or not reference:
        return "-"
    return f"{reference / params:.2f}x fewer" if params < reference else f"{params / reference:.2f}x more"


def shape(dims) -> str:
    return "x".join(str(d) for d in dims)


def _maybe(value) -> str:
    """A field or jump: '-' for None, an int as it is, a fractional one (after an upsampling) to 4 digits."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _console(table=None):
    """The console to print ``table`` on: rich squeezes a table into the console's width, cutting names and
    numbers to "…", so a pipe or file gets a fixed, wide layout (no colours), and a terminal narrower than the
    table gets the table's own width (the terminal wraps its lines; nothing is cut)."""
    from rich.console import Console
    if not sys.stdout.isatty():
        return Console(width=160, no_color=True)
    console = Console()
    if table is not None:
        from rich.measure import Measurement
        width = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
        if width > console.width:
            return Console(width=width)
    return console


def print_summary_table(result: ModelSummary, title: str) -> None:
    from rich.table import Table
    table = Table(title=f"{title}: input {shape(result.input_size)} (N x C x H x W)", title_justify="left")
    for name, justify in (("Layer", "left"), ("Type", "left"), ("Output", "right"), ("Params", "right"),
                          ("% params", "right"), ("MACs", "right"), ("Activations", "right"),
                          ("Receptive field", "right"), ("Jump", "right")):
        table.add_column(name, justify=justify)
    total = result.total_params or 1
    for r in result.layers:
        table.add_row(r.name, r.type, shape(r.output_shape[1:]), count(r.params) if r.params else "",
                      f"{100 * r.params / total:.1f}%" if r.params else "", si(r.macs) if r.macs else "",
                      size(r.activation_bytes) if r.activation_bytes else "",
                      _maybe(r.receptive_field), _maybe(r.jump))
    console = _console(table)
    console.print(table)
    console.print(f"Total params: {count(result.total_params)} (trainable {count(result.trainable_params)}), "
                  f"{size(result.param_bytes)}\n"
                  f"Total MACs: {si(result.total_macs)} ({count(result.total_macs)}) at batch {result.input_size[0]}\n"
                  f"Activations: {size(result.activation_bytes)} (outputs written by the layers)\n"
                  f"Depth: {result.depth} (conv + FC layers on the longest path)", highlight=False)


def print_compare_table(rows: list[ModelComparison]) -> None:
    from rich.table import Table
    table = Table(title="batch 1, each model at its natural input size", title_justify="left")
    for name in ("Model", "Params", f"Params vs {rows[0].name}", "MACs", "Depth", "Activations"):
        table.add_column(name, justify="left" if name == "Model" else "right")
    for r in rows:
        table.add_row(r.name, count(r.params), ratio(r.params, rows[0].params), si(r.macs), str(r.depth),
                      size(r.activation_bytes))
    _console(table).print(table)


def summary_json(result: ModelSummary) -> str:
    return json.dumps(result.to_dict(), indent=2)


def compare_json(rows: list[ModelComparison]) -> str:
    return json.dumps({"models": [dataclasses.asdict(r) for r in rows]}, indent=2)


def summary_csv(result: ModelSummary) -> str:
    """One line per layer, LayerRow's fields as columns (shapes as 1x96x55x55, None as empty)."""
    out = io.StringIO()
    fields = [f.name for f in dataclasses.fields(LayerRow)]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for r in result.layers:
        values = dataclasses.asdict(r)
        values["output_shape"] = shape(values["output_shape"])
        writer.writerow(["" if values[f] is None else values[f] for f in fields])
    return out.getvalue()


def plot(result: ModelSummary, title: str, path: str) -> None:
    """Bar charts of each layer's parameters and MACs (layers with neither are left out)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.layers if r.params or r.macs]
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.28 * len(rows) + 2), 7), sharex=True)
    x = range(len(rows))
    axes[0].bar(x, [r.params / 1e6 for r in rows], color="tab:blue")
    axes[0].set_ylabel("parameters (M)")
    axes[0].set_title(f"{title}: {si(result.total_params)} parameters, {si(result.total_macs)}MACs "
                      f"at {shape(result.input_size)}")
    axes[1].bar(x, [r.macs / 1e6 for r in rows], color="tab:orange")
    axes[1].set_ylabel("MACs (M)")
    axes[1].set_xticks(list(x), [r.name for r in rows], rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
