"""Sphinx extension of the book: keep autosummary's generated API pages although they are not in ``_toc.yml``.

The book builds only the files listed in ``_toc.yml`` (``only_build_toc_files: true``), so a draft chapter lying in
``book/`` is neither executed nor published. sphinx-external-toc implements that by excluding every other source
file, which would also exclude the API pages autosummary generates into ``book/_autosummary/`` on a rebuild; those
pages are reached through the autosummary toctree of ``api.md`` instead, so they are taken off the exclude list.
"""

from __future__ import annotations

from sphinx.application import Sphinx
from sphinx.config import Config

STUB_FOLDER = "_autosummary/"


def keep_api_stubs(app: Sphinx, config: Config) -> None:
    config["exclude_patterns"] = [p for p in config["exclude_patterns"] if not p.startswith(STUB_FOLDER)]


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", keep_api_stubs, priority=900)  # after sphinx-external-toc (priority 500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
