"""The book style: one set of matplotlib rcParams (font sizes, figure width, dpi) that every plot function uses.

A figure in the book is shown at most at the page's width, scaled down when it is wider. A font of ``s`` points in a
figure drawn at ``dpi`` shows at ``s / 72 * dpi * shown_width / drawn_width`` CSS pixels; the style keeps every text
at least :data:`MIN_FONT_PT` points and every figure at most :data:`PAGE_WIDTH_IN` inches at :data:`BOOK_DPI`, so no
text falls below :data:`MIN_TEXT_CSS_PX` at the page width. ``book/tools/check_site.py`` checks that in Chromium.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar, cast

import matplotlib as mpl
from matplotlib.figure import Figure

#: the width of the book's text column, in inches at :data:`BOOK_DPI` (sphinx-book-theme: about 750 CSS px)
PAGE_WIDTH_IN = 7.5
#: the dpi figures are drawn at (the inline backend's PNGs use the figure's dpi)
BOOK_DPI = 100
#: the smallest font a figure may use, in points (tick labels, legends, annotations)
MIN_FONT_PT = 8.5
#: the smallest text size, in CSS pixels, the browser check accepts at the page width
MIN_TEXT_CSS_PX = 9.0

#: the rcParams of the book style
BOOK_STYLE: dict[str, Any] = {
    "figure.dpi": BOOK_DPI,
    "savefig.dpi": BOOK_DPI,
    "font.size": 10.5,  # "small" is then 8.75 pt and "x-small" is raised to MIN_FONT_PT by book_figure
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "figure.labelsize": 10,
}

F = TypeVar("F", bound=Callable[..., Any])


def _rc_params() -> MutableMapping[str, Any]:
    """``mpl.rcParams`` with plain string keys (its stubs only accept the literal names of known keys)."""
    return cast("MutableMapping[str, Any]", mpl.rcParams)


def use_book_style() -> None:
    """Apply the book style for the rest of the session (a chapter's first hidden cell calls it).

    Also lets pandas show whole cell texts: tables wrap in the book instead of cutting a claim off with "...".
    """
    import pandas as pd

    _rc_params().update(BOOK_STYLE)
    pd.set_option("display.max_colwidth", None)


def fit_to_page(figure: Figure) -> Figure:
    """Draw ``figure`` at :data:`BOOK_DPI`, no wider than the page, and every text at least :data:`MIN_FONT_PT`."""
    figure.set_dpi(BOOK_DPI)
    width, height = figure.get_size_inches()
    if width > PAGE_WIDTH_IN:
        figure.set_size_inches(PAGE_WIDTH_IN, height * max(PAGE_WIDTH_IN / width, 0.75), forward=True)
    text: Any  # a Text-like artist: findobj's filter keeps those with get_fontsize/set_fontsize
    for text in figure.findobj(lambda artist: hasattr(artist, "get_fontsize") and hasattr(artist, "set_fontsize")):
        if text.get_fontsize() < MIN_FONT_PT:
            text.set_fontsize(MIN_FONT_PT)
    # the inline backend saves with bbox_inches="tight": a legend or label outside the axes widens the image beyond the
    # figure, and the browser then scales all of it down; shrink the figure by that overhang (artists outside the axes
    # keep their size in inches, so the tight box shrinks by the same amount)
    width, height = figure.get_size_inches()
    tight = figure.get_tightbbox().width
    if tight > PAGE_WIDTH_IN and width - (tight - PAGE_WIDTH_IN) > PAGE_WIDTH_IN / 2:
        figure.set_size_inches(width - (tight - PAGE_WIDTH_IN), height, forward=True)
    return figure


def book_figure(function: F) -> F:
    """Decorate a plot function: it draws in the book style and its figure fits the page (see :func:`fit_to_page`)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # only the style's own keys are set and restored: rc_context would also restore "interactive", which
        # IPython switches on when a kernel's first figure sets up the inline backend, and no later figure would show
        saved = {key: _rc_params()[key] for key in BOOK_STYLE}
        _rc_params().update(BOOK_STYLE)
        try:
            result = function(*args, **kwargs)
        finally:
            _rc_params().update(saved)
        figure = result if isinstance(result, Figure) else getattr(result, "figure", None)
        if isinstance(figure, Figure):
            fit_to_page(figure)
        return result

    return wrapper  # type: ignore[return-value]


def smallest_text_css_px(font_pt: float, dpi: float, drawn_px: float, shown_px: float) -> float:
    """The CSS size of a ``font_pt`` text in a PNG drawn ``drawn_px`` wide at ``dpi`` and shown ``shown_px`` wide."""
    return font_pt / 72.0 * dpi * min(1.0, shown_px / drawn_px) if drawn_px else 0.0


__all__ = [
    "BOOK_DPI",
    "BOOK_STYLE",
    "MIN_FONT_PT",
    "MIN_TEXT_CSS_PX",
    "PAGE_WIDTH_IN",
    "book_figure",
    "fit_to_page",
    "smallest_text_css_px",
    "use_book_style",
]
