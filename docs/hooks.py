"""mkdocs hooks: the reference pages made from the code when the site is built, so they cannot drift from it.

A page holds a marker comment where its generated part goes:
- `<!-- generated: configuration -->`: every setting, section by section (state/settings_reference.py);
- `<!-- generated: http-api -->`: the service's own OpenAPI description, rendered as Markdown (essentials-openapi),
  with no script or CDN.
"""

from __future__ import annotations

from typing import Any

MARKERS = {
    "<!-- generated: configuration -->": "configuration",
    "<!-- generated: http-api -->": "http-api",
}


def generated(kind: str) -> str:
    if kind == "configuration":
        from xling.state.settings_reference import reference_markdown

        return reference_markdown()
    from openapidocs.mk.v3 import OpenAPIV3DocumentationHandler

    from xling.app.main import create_app
    from xling.state.settings import Settings

    # The description of a service with default settings (no keys set): the limits shown are the defaults.
    spec = create_app(Settings(_env_file=None)).openapi()  # type: ignore[call-arg]
    markdown = OpenAPIV3DocumentationHandler(spec, style="MKDOCS").write()
    # Its own title line would be a second H1 on the page: keep everything after it.
    return markdown.split("\n# ", 1)[1].split("\n", 1)[1]


def on_page_markdown(markdown: str, **_: Any) -> str:
    for marker, kind in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generated(kind))
    return markdown
