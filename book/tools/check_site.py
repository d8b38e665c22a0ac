"""Browser check of the built book: every page opens in headless Chromium, figures load, no cell shows an error.

Usage (after ``make book``)::

    .venv/bin/python book/tools/check_site.py [--site _build/html] [--screenshots _build/screenshots]

The site is served from 127.0.0.1 on a free port. Each HTML page the server hands out gets a small script appended
that, once the page has loaded, records in ``<body data-site-check>`` which ``<img>`` elements loaded (complete, with
a natural width); Chromium's ``--dump-dom`` then returns that DOM. A page fails when

- an image did not load, or a chapter (a notebook page in ``book/_toc.yml``) shows no image at all,
- a figure's smallest text shows below ``MIN_TEXT_CSS_PX`` CSS pixels at the page width (a 1280 px window), or
  a table cell's text is cut off (clipped, or truncated with "..."),
- a cell output is an error, a traceback or stderr (myst-nb's ``output error`` / ``traceback`` / ``stderr``
  classes, or a "Traceback (most recent call last)" anywhere), or Sphinx left a ``system-message`` in the page.

A full-page screenshot (up to 16000 pixels high) of each page is written to ``--screenshots``. Exit status 0 only
when every page passes.
"""

from __future__ import annotations

import argparse
import functools
import html.parser
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
]
# appended to every served page: report which images loaded, once everything has loaded
PROBE = rb"""<script>
window.addEventListener("load", function () {
  var images = Array.from(document.querySelectorAll("article img, main img"));
  var report = images.map(function (img) {
    return {src: img.getAttribute("src").slice(0, 120), loaded: img.complete && img.naturalWidth > 0};
  });
  var height = document.documentElement.scrollHeight;
  // figures in cell outputs: drawn width (PNG pixels) and shown width (CSS pixels) give the scale of their text
  var figures = Array.from(document.querySelectorAll(".cell_output img, figure img")).map(function (img) {
    return {src: img.getAttribute("src").slice(0, 120), drawn: img.naturalWidth,
            shown: img.getBoundingClientRect().width};
  });
  // table cells whose text is cut off: clipped by CSS, or truncated by pandas with an ellipsis
  var cut = [];
  document.querySelectorAll("article table td, article table th").forEach(function (cell) {
    var text = cell.textContent.trim();
    var ellipsis = text.length > 3 && /(\.\.\.|\u2026)$/.test(text);  // a bare "..." stands for pandas' skipped rows
    if (cell.scrollWidth > cell.clientWidth + 1 || ellipsis) cut.push(text.slice(0, 80));
  });
  document.body.setAttribute("data-site-check",
    JSON.stringify({images: report, height: height, figures: figures, cut_cells: cut}));
});
</script>"""
MAX_SCREENSHOT_HEIGHT = 16000
PAGE_WINDOW = "1280,900"  # a desktop browser: the text column is the page width the figures are checked at
ERROR_CLASSES = ({"output", "error"}, {"output", "traceback"}, {"output", "stderr"}, {"system-message"})


class ProbingHandler(SimpleHTTPRequestHandler):
    """Serves the site and appends :data:`PROBE` to HTML pages."""

    def send_head(self):  # type: ignore[override]
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes().replace(b"</body>", PROBE + b"</body>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, format: str, *args) -> None:  # keep the output to the check's own report
        pass


class PageScan(html.parser.HTMLParser):
    """Collects the probe's report, error outputs and tracebacks from a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.report: list[dict] | None = None  # per <img>: src and whether it loaded
        self.figures: list[dict] = []  # per figure: src, drawn (PNG) and shown (CSS px) width
        self.cut_cells: list[str] = []  # table cells whose text is cut off
        self.height = 0  # of the whole page, in CSS pixels
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body" and attributes.get("data-site-check") is not None:
            probe = json.loads(attributes["data-site-check"] or "{}")
            self.report, self.height = probe.get("images", []), int(probe.get("height", 0))
            self.figures, self.cut_cells = probe.get("figures", []), probe.get("cut_cells", [])
        classes = set((attributes.get("class") or "").split())
        for error_classes in ERROR_CLASSES:
            if error_classes <= classes:
                self.errors.append(f"<{tag} class='{' '.join(sorted(classes))}'>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def figure_text_problems(figures: list[dict], min_css_px: float | None = None) -> list[str]:
    """Figures whose smallest text shows below ``min_css_px`` CSS pixels (default: the book style's minimum).

    The book style (:mod:`attrlab.plots.style`) draws every text at least ``MIN_FONT_PT`` points at ``BOOK_DPI``;
    a figure shown narrower than it was drawn scales its text down by shown / drawn width.
    """
    from attrlab.plots.style import BOOK_DPI, MIN_FONT_PT, MIN_TEXT_CSS_PX, smallest_text_css_px

    limit = MIN_TEXT_CSS_PX if min_css_px is None else min_css_px
    problems = []
    for figure in figures:
        if not figure.get("drawn") or figure["drawn"] < 50:  # icons, not figures
            continue
        size = smallest_text_css_px(MIN_FONT_PT, BOOK_DPI, figure["drawn"], figure["shown"])
        if size < limit:
            problems.append(
                f"figure {figure['src'][:60]} is drawn {figure['drawn']} px wide and shown {figure['shown']:.0f} px: "
                f"its smallest text shows at {size:.1f} CSS px (< {limit})"
            )
    return problems


def chapters_of(toc: Path) -> tuple[list[str], list[str]]:
    """All pages of the toc and the chapters among them (pages that are notebooks)."""

    def walk(entries) -> list[str]:
        found = []
        for entry in entries:
            if "file" in entry:
                found.append(entry["file"])
            for key in ("parts", "chapters", "sections"):
                found += walk(entry.get(key, []))
        return found

    spec = yaml.safe_load(toc.read_text())
    pages = [spec["root"], *walk(spec.get("parts", [])), *walk(spec.get("chapters", []))]
    chapters = []
    for page in pages:
        source = toc.parent / f"{page}.md"
        if source.is_file() and "kernelspec:" in source.read_text().split("\n---", 1)[0]:
            chapters.append(page)
        elif (toc.parent / f"{page}.ipynb").is_file() and not source.is_file():
            chapters.append(page)
    return pages, chapters


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    raise SystemExit("no Chromium found: apt-get install -y chromium (make site-check does this when it can)")


def browse(chromium: str, profile: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def check_page(
    chromium: str, base: str, site: Path, page: str, chapter: bool, screenshots: Path
) -> tuple[list[str], int]:
    """The problems of one page (none when it passes) and its number of images; saves its screenshot."""
    if not (site / f"{page}.html").is_file():
        return [f"{page}.html is missing from the built site {site} (rebuild the book)"], 0
    problems = []
    with tempfile.TemporaryDirectory(prefix="site-check-") as profile:
        dumped = browse(chromium, profile, f"{base}/{page}.html", "--dump-dom", f"--window-size={PAGE_WINDOW}")
        if dumped.returncode != 0 or "<body" not in dumped.stdout:
            return [f"Chromium could not render the page (exit {dumped.returncode}): {dumped.stderr[-500:]}"], 0
        scan = PageScan()
        scan.feed(dumped.stdout)
        if scan.report is None:
            problems.append("the page never finished loading (no load event within the time budget)")
        else:
            broken = [image["src"] for image in scan.report if not image["loaded"]]
            if broken:
                problems.append(f"{len(broken)} of {len(scan.report)} images did not load: {broken[:5]}")
            if chapter and not scan.report:
                problems.append("a chapter without any figure")
        problems += figure_text_problems(scan.figures)
        if scan.cut_cells:
            problems.append(f"{len(scan.cut_cells)} table cells are cut off: {scan.cut_cells[:3]}")
        if scan.errors:
            problems.append(f"error outputs: {scan.errors[:5]}")
        if "Traceback (most recent call last)" in "".join(scan.text):
            problems.append("a traceback is shown")
        shot = screenshots / f"{page.replace('/', '_')}.png"
        height = min(max(scan.height, 800), MAX_SCREENSHOT_HEIGHT)  # the whole page, within reason
        taken = browse(chromium, profile, f"{base}/{page}.html", f"--screenshot={shot}", f"--window-size=1280,{height}")
        if taken.returncode != 0 or not shot.is_file():
            problems.append(f"no screenshot (exit {taken.returncode}): {taken.stderr[-300:]}")
    return problems, len(scan.report or [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default=str(ROOT / "_build" / "html"), help="the built HTML (default _build/html)")
    parser.add_argument("--toc", default=str(ROOT / "book" / "_toc.yml"), help="the book's _toc.yml")
    parser.add_argument("--screenshots", default=str(ROOT / "_build" / "screenshots"), help="where PNGs go")
    args = parser.parse_args(argv)
    site, screenshots = Path(args.site).resolve(), Path(args.screenshots).resolve()
    if not (site / "index.html").is_file():
        raise SystemExit(f"no built site in {site}: run make book first")
    screenshots.mkdir(parents=True, exist_ok=True)
    pages, chapters = chapters_of(Path(args.toc))
    chromium = find_chromium()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(ProbingHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    failed = 0
    try:
        for page in pages:
            started = time.perf_counter()
            problems, images = check_page(chromium, base, site, page, page in chapters, screenshots)
            kind = "chapter" if page in chapters else "page"
            status = "ok  " if not problems else "FAIL"
            print(f"{status} {kind:7} {page:30} {images:3d} images  {time.perf_counter() - started:5.1f} s", flush=True)
            for problem in problems:
                print(f"       {problem}")
            failed += bool(problems)
    finally:
        server.shutdown()
    print(f"{len(pages) - failed} of {len(pages)} pages pass; screenshots in {screenshots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
