"""mkdocs hook: ``docs/cli.md``'s marker becomes the CLI reference made from the ``leukolab`` parser."""

MARKER = "<!-- cli-reference -->"


def on_page_markdown(markdown, page, **kwargs):
    if MARKER not in markdown:
        return markdown
    from leukolab.cli_reference import cli_reference_markdown

    return markdown.replace(MARKER, cli_reference_markdown())
