"""The book: toc, jupytext pairs in sync, parameters cells, citations, site check, training chapter under papermill."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml
from notebook_outputs import glued_values

from attrlab.chapters import chapter_parameters, data_root, run_dir_for, runs_root
from attrlab.train import Run

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


def _toc_files(entries) -> list[str]:
    files = []
    for entry in entries:
        if "file" in entry:
            files.append(entry["file"])
        for key in ("parts", "chapters", "sections"):
            files += _toc_files(entry.get(key, []))
    return files


TOC = yaml.safe_load((BOOK / "_toc.yml").read_text())
PAGES = [TOC["root"], *_toc_files(TOC.get("parts", []))]
# a chapter is a toc page that is a jupytext notebook (it has a kernelspec in its front matter)
CHAPTERS = [
    page
    for page in PAGES
    if (BOOK / f"{page}.md").is_file() and "kernelspec:" in (BOOK / f"{page}.md").read_text().split("\n---", 1)[0]
]


def test_every_toc_page_exists_and_the_book_has_chapters():
    for page in PAGES:
        assert (BOOK / f"{page}.md").is_file(), f"_toc.yml lists {page} but book/{page}.md does not exist"
    assert "training" in CHAPTERS


def test_config_builds_from_the_root_with_a_cache_and_strict_execution():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    assert config["execute"]["allow_errors"] is False
    assert "*.ipynb" in config["exclude_patterns"]  # chapters are built from their .md twins
    assert (BOOK / config["bibtex_bibfiles"][0]).is_file()


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_pairs_are_in_sync_and_committed_without_outputs(chapter):
    markdown = jupytext.read(BOOK / f"{chapter}.md")
    assert markdown.metadata["jupytext"]["formats"] == "ipynb,md:myst", "pair it: jupytext --set-formats ipynb,md:myst"
    paired = BOOK / f"{chapter}.ipynb"
    assert paired.is_file(), f"book/{chapter}.ipynb is missing: run make sync"
    notebook = nbformat.read(paired, as_version=4)
    expected = [(c.cell_type, c.source, dict(c.metadata)) for c in markdown.cells]
    actual = [(c.cell_type, c.source, dict(c.metadata)) for c in notebook.cells]
    assert actual == expected, f"book/{chapter}.md and .ipynb differ: run make sync"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"book/{chapter}.ipynb has outputs"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_starts_with_typed_commented_parameters(chapter):
    notebook = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    first_code = next(c for c in notebook.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []), "the first code cell must be tagged parameters"
    declared = chapter_parameters(BOOK / f"{chapter}.ipynb")
    assert declared
    for parameter in declared.values():
        assert parameter.type_name != "None", f"{chapter}: parameter {parameter.name} needs a type annotation"
        assert parameter.help, f"{chapter}: parameter {parameter.name} needs a comment"


def test_every_citation_is_in_the_bibliography():
    from pybtex.database import parse_file

    keys = set(parse_file(BOOK / "references.bib").entries)
    assert {"terzieva2023trends", "sixt2020explanations", "pahde2023canonization", "boehle2024thesis"} <= keys
    cited = set()
    for page in BOOK.glob("*.md"):
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text()):
            cited.update(key.strip() for key in group.split(","))
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"


def test_run_dirs_are_distinct_per_parameters_and_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTRLAB_RUNS", str(tmp_path))
    assert runs_root() == tmp_path
    one = run_dir_for("training", "digits-shallow", epochs=1, seed=0)
    assert one == run_dir_for("training", "digits-shallow", seed=0, epochs=1)
    assert one != run_dir_for("training", "digits-shallow", epochs=1, seed=1)
    assert one.parent == tmp_path / "training" and one.name.startswith("digits-shallow-")
    monkeypatch.delenv("ATTRLAB_RUNS")
    monkeypatch.delenv("ATTRLAB_DATA", raising=False)
    monkeypatch.chdir(BOOK)  # the book build runs chapters inside book/: runs and data stay at the repository root
    assert runs_root() == ROOT / "runs" and data_root() == ROOT / "data"
    monkeypatch.chdir(tmp_path)  # outside any book: next to the cwd
    assert runs_root() == tmp_path / "runs"


@pytest.mark.slow
def test_training_chapter_runs_under_papermill(tmp_path):
    output, run_dir = tmp_path / "out.ipynb", tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("papermill")),
        str(BOOK / "training.ipynb"),
        str(output),
        "-p",
        "dataset",
        "digits",
        "-p",
        "epochs",
        "1",
        "-p",
        "run_dir",
        str(run_dir),
        "--no-progress-bar",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**os.environ})
    assert completed.returncode == 0, completed.stderr[-3000:]
    executed = nbformat.read(output, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # learning curves and per-class accuracy
    run = Run(run_dir)
    assert run.complete and run.config.epochs == 1
    final = run.metrics.dropna(subset=["test_acc"]).iloc[-1]
    glued = glued_values(executed)
    assert glued["final_test_acc"] == repr(f"{final['test_acc']:.1%}")
    assert glued["steps"] == str(int(run.metrics["step"].max()))
    assert json.loads((run_dir / "config.json").read_text())["dataset"] == "digits"
    # papermill's notebook shows the prose's numbers in an output, and the training cell a progress bar
    texts = [
        str(o.get("data", {}).get("text/plain", ""))
        + str(o.get("data", {}).get("text/html", ""))
        + str(o.get("text", ""))
        for o in outputs
    ]
    assert any("final_test_acc" in text and f"{final['test_acc']:.1%}" in text for text in texts)
    assert any("train shallow" in text for text in texts), f"no progress bar in the outputs {texts}"


def test_site_check_finds_error_outputs_broken_images_and_chapters():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_site", BOOK / "tools" / "check_site.py")
    check_site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_site)
    pages, chapters = check_site.chapters_of(BOOK / "_toc.yml")
    assert pages == PAGES and chapters == CHAPTERS
    scan = check_site.PageScan()
    images = [{"src": "a.png", "loaded": True}, {"src": "b.png", "loaded": False}]
    report = json.dumps({"images": images, "height": 900})
    scan.feed(
        f"<html><body data-site-check='{report}'><div class='cell_output'><div class='output stderr'>x</div>"
        "<div class='output text_plain'>fine</div><pre>Traceback (most recent call last)</pre></div></body></html>"
    )
    assert [image["loaded"] for image in scan.report] == [True, False] and scan.height == 900
    assert scan.errors == ["<div class='output stderr'>"]
    assert "Traceback (most recent call last)" in "".join(scan.text)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_papermill_reads_every_name_of_the_parameters_cell(chapter):
    import ast

    import papermill

    notebook = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    written = [node.target.id for node in ast.parse(cell.source).body if isinstance(node, ast.AnnAssign)]
    inferred = list(papermill.inspect_notebook(str(BOOK / f"{chapter}.ipynb")))
    assert inferred == written, f"papermill cannot parse {sorted(set(written) - set(inferred))} (an '=' in a comment?)"


def test_a_parameter_papermill_cannot_read_is_an_error(tmp_path):
    from attrlab.chapters import ParameterError

    notebook = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    cell = nbformat.v4.new_code_cell("epochs: int = 3  # passes\nkernel: int = 15  # size (sigma = K/4)\n")
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [cell]
    nbformat.write(notebook, tmp_path / "c.ipynb")
    with pytest.raises(ParameterError, match=r"cannot read the parameters \['kernel'\] \(line 2 .*no '=' inside"):
        chapter_parameters(tmp_path / "c.ipynb")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_first_hidden_cell_checks_the_parameters(chapter):
    notebook = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "check_parameters(globals())" in code[1].source, f"{chapter}: call check_parameters in the first hidden cell"


def test_check_parameters_names_unknown_ill_typed_and_invalid_values():
    from attrlab.chapters import ParameterError, check_parameters

    namespace = {
        "__annotations__": {"model": str, "lr": float, "methods": list, "subset": int | None},
        "model": "shallow",
        "lr": 1e-3,
        "methods": ["lrp"],
        "subset": None,
        "_ih": ["", "model: str = ..."],
    }
    check_parameters(namespace)  # the defaults, run by hand: nothing injected
    check_parameters({**namespace, "lr": 1})  # an int is a valid float
    injected = {"_ih": ["", "...", '# Parameters\nmodle = "deep"\n']}
    with pytest.raises(ParameterError, match=r"unknown parameter 'modle'.*Valid parameters: model: str, lr: float"):
        check_parameters({**namespace, **injected, "modle": "deep"})
    with pytest.raises(ParameterError, match=r"parameter 'lr' must be float, got 'abc' \(str\)"):
        check_parameters({**namespace, "lr": "abc"})
    with pytest.raises(ParameterError, match=r"parameter 'model' has invalid value 'resnet'; valid choices: .*shallow"):
        check_parameters({**namespace, "model": "resnet"})
    with pytest.raises(ParameterError, match=r"parameter 'methods' has invalid value \['lpr'\]; valid choices: .*lrp"):
        check_parameters({**namespace, "methods": ["lrp", "lpr"]})
    with pytest.raises(ParameterError, match=r"parameter 'subset' must be int \| None, got 2.5"):
        check_parameters({**namespace, "subset": 2.5})


@pytest.mark.slow
def test_training_chapter_stops_on_bad_parameters_before_training(tmp_path):
    output, run_dir = tmp_path / "out.ipynb", tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("papermill")),
        str(BOOK / "training.ipynb"),
        str(output),
        "-p",
        "run_dir",
        str(run_dir),
        "-p",
        "modle",
        "deep",
        "-p",
        "lr",
        "abc",
        "-p",
        "dataset",
        "mnist",
        "--no-progress-bar",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**os.environ})
    assert completed.returncode != 0
    for message in (
        "ParameterError",
        "unknown parameter 'modle'",
        "parameter 'lr' must be float, got 'abc'",
        "parameter 'dataset' has invalid value 'mnist'; valid choices: digits, canvas, fashionmnist, cifar10",
    ):
        assert message in completed.stderr, completed.stderr[-3000:]
    assert not run_dir.exists()


def test_run_dirs_ignore_settings_that_do_not_change_results(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTRLAB_RUNS", str(tmp_path))
    one = run_dir_for("training", "digits-shallow", epochs=1, data_root="/a", device="cpu")
    assert one == run_dir_for("training", "digits-shallow", epochs=1, data_root="/b", device="cuda")


PAPER_AS_SEED = re.compile(
    r"\bseed (code|papers?|models|setup|00\d|Fig|Tables?|reported|trained)\b|\bthe seed\b|\bseed's\b", re.IGNORECASE
)


@pytest.mark.parametrize("page", PAGES)
def test_papers_are_called_by_author_and_year_never_seed(page):
    text = (BOOK / f"{page}.md").read_text()
    assert not PAPER_AS_SEED.findall(text), f"book/{page}.md calls a paper 'seed': use its authors and year"
    assert "REFERENCE.md" not in text, f"book/{page}.md cites a file that is not in the repository"


def test_bibliography_labels_are_author_year_like_the_citations():
    import importlib.util

    from pybtex.database import parse_file
    from pybtex.plugin import find_plugin

    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert config["config"]["bibtex_reference_style"] == "author_year"
    assert config["config"]["bibtex_default_style"] == "author_year"
    assert "bib_style" in config["local_extensions"]
    spec = importlib.util.spec_from_file_location("bib_style", BOOK / "_ext" / "bib_style.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.setup(None)
    style = find_plugin("pybtex.style.formatting", "author_year")()
    labels = [entry.label for entry in style.format_entries(parse_file(BOOK / "references.bib").entries.values())]
    assert "Terzieva et al., 2025" in labels and "Böhle, 2024" in labels
    surname = r"[^\W\d]+(?:-[^\W\d]+)*"  # hyphenated surnames too (Parchami-Araghi)
    label_pattern = rf"{surname}( et al\.| and {surname})?, \d{{4}}"
    assert all(re.fullmatch(label_pattern, label) for label in labels), labels


def test_prose_says_what_the_reader_sees():
    dynamics = " ".join((BOOK / "training_dynamics.md").read_text().split())
    assert "Grad-CAM's maps pass a ReLU, so their negative part is zero everywhere" in dynamics
    grids = " ".join((BOOK / "grid_evaluation.md").read_text().split())
    assert "LRP and IxG curves coincide" in grids and "LRP is input x gradient" in grids


def _check_site_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_site", BOOK / "tools" / "check_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_plot_function_draws_in_the_book_style():
    import inspect

    import matplotlib.pyplot as plt

    import attrlab.explore
    import attrlab.plots.dynamics
    import attrlab.plots.grids
    import attrlab.plots.training
    from attrlab.plots.style import BOOK_DPI, MIN_FONT_PT, PAGE_WIDTH_IN, book_figure

    for module in (attrlab.plots.dynamics, attrlab.plots.grids, attrlab.plots.training, attrlab.explore):
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("plot_") and function.__module__ == module.__name__:
                assert hasattr(function, "__wrapped__"), f"{module.__name__}.{name} does not use @book_figure"

    @book_figure
    def wide():
        figure, axes = plt.subplots(1, 3, figsize=(12.6, 3.4), layout="constrained")
        axes[0].text(0, 0, "0.42", fontsize="x-small")
        axes[1].legend(["a"], fontsize="xx-small")
        return figure

    figure = wide()
    texts = [t for t in figure.findobj(lambda a: hasattr(a, "get_fontsize")) if t.get_text()]
    assert texts and min(t.get_fontsize() for t in texts) >= MIN_FONT_PT
    assert figure.get_size_inches()[0] <= PAGE_WIDTH_IN and figure.dpi == BOOK_DPI
    plt.close(figure)


def test_site_check_measures_figure_text_and_cut_table_cells():
    check_site = _check_site_module()
    from attrlab.plots.style import BOOK_DPI, PAGE_WIDTH_IN

    fits = {"src": "a.png", "drawn": int(PAGE_WIDTH_IN * BOOK_DPI), "shown": PAGE_WIDTH_IN * BOOK_DPI}
    too_wide = {"src": "b.png", "drawn": 1500, "shown": 750}  # a 15-inch figure halves its 8.5 pt text: 5.9 px
    assert check_site.figure_text_problems([fits]) == []
    (problem,) = check_site.figure_text_problems([fits, too_wide])
    assert "b.png" in problem and "shows at 5.9 CSS px" in problem
    scan = check_site.PageScan()
    report = json.dumps({"images": [], "height": 10, "figures": [too_wide], "cut_cells": ["Grad-CAM scores lo..."]})
    scan.feed(f"<html><body data-site-check='{report}'></body></html>")
    assert scan.figures == [too_wide] and scan.cut_cells == ["Grad-CAM scores lo..."]


@pytest.mark.slow
def test_site_check_in_chromium_flags_small_figure_text_and_cut_cells(tmp_path):
    import base64
    import shutil

    import matplotlib.pyplot as plt

    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium here (make site-check installs it)")
    check_site = _check_site_module()
    from attrlab.plots.training import plot_learning_curves

    pd_frame = __import__("pandas").DataFrame(
        {
            "step": range(1, 11),
            "epoch": [1] * 10,
            **{c: [0.5] * 10 for c in ("train_loss", "train_acc", "test_loss", "test_acc", "attr_loss", "attr_acc")},
        }
    )
    good = plot_learning_curves(pd_frame)
    bad, _ = plt.subplots(figsize=(20, 3), dpi=100)
    pngs = []
    for figure in (good, bad):
        buffer = __import__("io").BytesIO()
        figure.savefig(buffer, format="png", dpi=figure.dpi)
        pngs.append(base64.b64encode(buffer.getvalue()).decode())
        plt.close(figure)
    css = (BOOK / "_static" / "book.css").read_text()
    page = (
        "<html><head><style>{css}</style></head><body><article>"
        "<div class='cell_output'><img src='data:image/png;base64,{png}'></div>"
        "<table><tr><td>{cell}</td></tr></table></article></body></html>"
    )
    (tmp_path / "good.html").write_text(page.format(css=css, png=pngs[0], cell="a long claim " * 20))
    (tmp_path / "bad.html").write_text(page.format(css=css, png=pngs[1], cell="a claim cut o..."))
    (tmp_path / "index.html").write_text("<html><body></body></html>")
    server = check_site.ThreadingHTTPServer(
        ("127.0.0.1", 0), check_site.functools.partial(check_site.ProbingHandler, directory=str(tmp_path))
    )
    check_site.threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base, chromium = f"http://127.0.0.1:{server.server_address[1]}", check_site.find_chromium()
        good_problems, _ = check_site.check_page(chromium, base, tmp_path, "good", False, tmp_path)
        bad_problems, _ = check_site.check_page(chromium, base, tmp_path, "bad", False, tmp_path)
    finally:
        server.shutdown()
    assert good_problems == []
    assert any("smallest text shows at" in p for p in bad_problems), bad_problems
    assert any("table cells are cut off" in p for p in bad_problems), bad_problems


LAB_SETTINGS = ROOT / ".jupyter" / "lab" / "user-settings"


def test_make_lab_opens_chapters_as_jupytext_notebooks():
    settings = LAB_SETTINGS / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings"
    viewers = json.loads(settings.read_text())["defaultViewers"]
    assert viewers["markdown"] == viewers["myst"] == "Jupytext Notebook"  # jupytext's JupyterLab factory
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert 'JUPYTERLAB_SETTINGS_DIR="$(CURDIR)/.jupyter/lab/user-settings"' in recipe and "jupyter lab book/" in recipe
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("jupyterlab") for d in extras["lab"]) and any(
        d.startswith("jupytext") for d in extras["lab"]
    )
    assert '".[book,test,lab,lint]"' in makefile  # installed with the book's environment


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_opening_a_chapter_in_jupyterlab_does_not_modify_it(chapter):
    """Jupytext reads the .md into a notebook and writes it back on save: the text must come back byte for byte."""
    text = (BOOK / f"{chapter}.md").read_text()
    notebook = jupytext.reads(text, fmt="md:myst")
    assert jupytext.writes(notebook, fmt="md:myst") == text
    paired = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    paired.metadata["jupytext"] = notebook.metadata["jupytext"]
    assert jupytext.writes(paired, fmt="md:myst") == text  # saving from the .ipynb side writes the same .md
