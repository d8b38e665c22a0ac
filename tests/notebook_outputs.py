"""What an executed chapter glued into its prose (myst-nb ``glue`` records), for the chapter tests."""

from __future__ import annotations


def glued_values(notebook) -> dict[str, str]:
    """Glue name -> the text/plain value recorded in ``notebook`` (an nbformat notebook)."""
    values = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook")
            if record:
                values[record["name"]] = output["data"][f"{record['mime_prefix']}text/plain"]
    return values
