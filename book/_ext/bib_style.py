"""Author-year labels in the bibliography ("Terzieva et al., 2025"), matching the author-year citations of the text.

sphinxcontrib-bibtex cites author-year in the text (``bibtex_reference_style: author_year``) but labels the
bibliography with its default formatting style (alpha: "[TBB25]"); this registers a pybtex style whose labels are
the same author-year text (``_config.yml`` makes it the default: ``bibtex_default_style: author_year``).
"""

from __future__ import annotations

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


class AuthorYearLabels(BaseLabelStyle):
    """ "Surname, year", "Surname and Other, year" or "Surname et al., year"."""

    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            surnames = [Text(*person.rich_last_names).render_as("text") for person in people]  # LaTeX accents as text
            if len(surnames) > 2:
                who = f"{surnames[0]} et al."
            elif surnames:
                who = " and ".join(surnames)
            else:
                who = entry.fields.get("title", entry.key)
            yield f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entries, sorted by author and year, labelled author-year."""

    default_label_style = AuthorYearLabels
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "author_year_text", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "author_year", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
