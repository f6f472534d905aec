"""Off a terminal (a log file, a pipe), long commands still say how far they are: a first
line at once, then a line at least every interval (done/total, img/s, ETA) on stderr."""

import re
import time

from click.testing import CliRunner

from pixarc import archive
from pixarc.cli import main
from pixarc.progress import LineReporter


def test_line_reporter_writes_at_start_every_interval_and_at_the_end():
    lines = []
    with LineReporter("archive", lines.append, interval=0.05) as rep:
        rep.on_event("total", 4)
        assert lines == ["archive: started"]  # before any work is done
        for _ in range(4):
            time.sleep(0.12)
            rep.on_event("advance", 1)
    periodic = [ln for ln in lines[1:-1] if re.fullmatch(r"archive: \d/4 done, .* img/s, \d+ s elapsed, ETA .*", ln)]
    assert len(periodic) >= 3  # ~9 intervals passed; a busy machine still leaves several
    assert lines[-1].startswith("archive: 4/4 done") and lines[-1].endswith("(finished)")


def test_archive_off_a_terminal_logs_progress_lines(small_collection, tmp_path, monkeypatch):
    real = archive.archive_one

    def slow(*a, **kw):  # a long image: the lines keep coming while it encodes
        time.sleep(0.3)
        return real(*a, **kw)

    monkeypatch.setattr(archive, "archive_one", slow)
    monkeypatch.setenv("PIXARC_PROGRESS_INTERVAL", "0.1")
    res = CliRunner().invoke(main, ["archive", str(small_collection), str(tmp_path / "d"), "--policy", "png",
                                    "--engine", "local"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    assert lines[0] == "archive: started"
    done = [ln for ln in lines if re.match(r"archive: \d/5 done", ln)]
    assert len(done) >= 3 and done[-1].startswith("archive: 5/5 done") and "ETA" in done[-1]


def test_cli_default_size_limit_is_intakes():
    import click

    from pixarc import intake

    options = {p.name: p for p in main.get_command(click.Context(main), "archive").params}
    assert options["max_bytes"].default == intake.DEFAULT_MAX_BYTES
