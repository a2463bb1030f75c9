"""`emocircuits report RUN_DIR [RUN_DIR...] -o report.html`: one self-contained HTML file of every figure.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.cli.options import option


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...",
                                             help="Run directories written by emocircuits commands."),
        out: Path = typer.Option(Path("report.html"), "-o", "--out", help="HTML file to write."),
        title: str | None = typer.Option(None, "--title", help="Page title (default: emocircuits report)."),
        quiet: bool = option("--quiet"),
    ) -> None:
        """Assemble every figure the run directories support into one HTML file that opens offline."""
        from emocircuits.viz.report import write_report

        report = write_report(run_dirs, out, title=title, progress=not quiet)
        skipped = sum(len(r.skipped) for r in report.runs)
        typer.echo(f"wrote {out}: {len(report.runs)} run(s), {report.n_figures} figures, {report.n_token_views} "
                   f"token views" + (f", {skipped} not shown (listed in the report)" if skipped else ""))
