"""Helpers that turn library results into Dagster metadata: counts, tables and inline images."""


import base64
import hashlib
import io

import matplotlib
import pandas as pd
from dagster import DataVersion, MetadataValue

from peerlens.markdown import markdown_frame

matplotlib.use("Agg")  # no display on a Dagster worker: render to PNG only
import matplotlib.pyplot as plt  # noqa: E402


def rule_metadata(counts: dict[str, int]) -> dict[str, int]:
    """Each cleaning/joining rule's row count as its own metadata entry, prefixed `rule/`."""
    return {f"rule/{name}": int(value) for name, value in counts.items()}


def table_preview(frame: pd.DataFrame, rows: int = 10) -> MetadataValue:
    """The first `rows` rows as a markdown table, text cells inert (`peerlens.markdown`)."""
    return MetadataValue.md(markdown_frame(frame.head(rows)).to_markdown(index=False))


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f", empty: str | None = None) -> MetadataValue:
    """`frame` as a markdown table, text cells inert (`peerlens.markdown`: a description or a name from a
    source is shown as text, never as markup); `empty`, if given, stands for a frame without rows."""
    if empty is not None and frame.empty:
        return MetadataValue.md(empty)
    return MetadataValue.md(markdown_frame(frame).to_markdown(index=False, floatfmt=floatfmt))


def figure_markdown(figure) -> MetadataValue:
    """A matplotlib figure as an inline PNG the Dagster UI renders in the asset's metadata."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return MetadataValue.md(f"![plot](data:image/png;base64,{encoded})")


def frame_version(frame: pd.DataFrame) -> DataVersion:
    """A source table's data version: a hash of its content, so rereading unchanged data marks nothing stale."""
    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return DataVersion(hashlib.sha256(rows.tobytes() + ",".join(map(str, frame.columns)).encode()).hexdigest()[:16])
