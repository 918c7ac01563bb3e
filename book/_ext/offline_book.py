"""Sphinx settings that let the built book work from disk, with no network and no console errors.

* MathJax: ``sphinx-mathjax-offline`` copies MathJax 3.2.2 (the last MathJax 3, which Sphinx's
  default ``mathjax@3`` CDN address resolves to) into ``_static/mathjax``. It points
  ``mathjax_path`` at ``tex-chtml.js``; this loads the component Sphinx loads from the CDN,
  ``tex-mml-chtml.js``, so that pages typeset exactly as they do online.
* The colour mode: pydata-sphinx-theme logs a console error on a first visit when the
  ``default_mode`` of ``html_context`` is unset (its default) and then falls back to ``auto``;
  say ``auto`` at once.
* Inline scripts: sphinx-thebe and sphinx-togglebutton add their inline configuration scripts
  after the HTML builder has started, and Sphinx 7.4 then writes them twice into every page;
  the second ``const THEBE_JS_URL`` is a JavaScript syntax error. Each page keeps one copy.
"""

from __future__ import annotations


def _use_cdn_component(app, config) -> None:
    config.mathjax_path = "mathjax/tex-mml-chtml.js"
    config.html_context.setdefault("default_mode", "auto")


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    # the copies differ only in a filename of None against "", so Sphinx keeps both
    scripts, seen = context.get("script_files"), set()
    if not isinstance(scripts, list):
        return
    unique = []
    for script in scripts:
        attributes = tuple(sorted(getattr(script, "attributes", {}).items()))
        key = (getattr(script, "filename", script) or "", attributes)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    app.setup_extension("sphinx-mathjax-offline")
    app.connect("config-inited", _use_cdn_component, priority=900)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
