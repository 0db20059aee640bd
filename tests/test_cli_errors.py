"""Every user-facing error of the commands (but segment) is one line with exit 2, and a
bad output path is refused before anything is loaded or created."""

from __future__ import annotations

import errno
import os

import pytest

from wmh import cli


def run(argv, capsys):
    """(exit code, stderr) of `wmh argv`."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# Each command with its output option; OUT stands for the path under test.
COMMANDS = {
    "synth": (["synth", "OUT", "--subjects", "1"], "OUT"),
    "prepare": (["prepare", "DATA", "--out", "OUT"], "--out"),
    "sample": (["sample", "DATA", "--out", "OUT"], "--out"),
    "report": (["report", "--method", "A=DATA", "--truth", "DATA", "--out", "OUT"], "--out"),
    "reproduce": (["reproduce", "--out", "OUT", "--experiments", "rf"], "--out"),
    "demo": (["demo", "--out", "OUT"], "--out"),
    "tune": (["tune", "--set", "data.cache_dir=OUT"], "data.cache_dir"),
    "prior": (["prior", "build", "DATA", "--out", "OUT/prior.nii.gz"], "--out"),
    "calibrate": (["calibrate", "DATA", "--data", "DATA", "--out", "OUT"], "--out"),
}


def _argv(name, out, data):
    argv, _ = COMMANDS[name]
    return [a.replace("OUT", str(out)).replace("DATA", str(data)) for a in argv]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_below_a_file_is_one_line_and_creates_nothing(name, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    before = snapshot(tmp_path)
    code, err = run(_argv(name, blocker / "sub", tmp_path / "data"), capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("wmh: error: ")
    assert f"{blocker} is not a folder" in err
    assert COMMANDS[name][1] in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"prior"}))
def test_output_that_is_a_file_is_one_line(name, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    before = snapshot(tmp_path)
    code, err = run(_argv(name, blocker, tmp_path / "data"), capsys)
    option = COMMANDS[name][1]
    assert (code, err) == (2, f"wmh: error: {option} {blocker}: exists and is not a folder\n")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unwritable_output_is_one_line(name, tmp_path, capsys, monkeypatch):
    (tmp_path / "data").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        False if os.path.abspath(path) == str(locked) else real_access(path, mode, **kw)))
    before = snapshot(tmp_path)
    code, err = run(_argv(name, locked / "new", tmp_path / "data"), capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.endswith(f"{locked} is not writable\n")
    assert snapshot(tmp_path) == before


def test_prior_output_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code, err = run(["prior", "build", tmp_path / "data", "--out", tmp_path], capsys)
    assert (code, err) == (2, f"wmh: error: --out {tmp_path}: is a folder (expected a file "
                              "name)\n")


def test_disk_full_while_writing_is_one_line(tmp_path, capsys, monkeypatch):
    from wmh.evaluation import report

    def full(results, output_dir, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output_dir / "report.md"))

    monkeypatch.setattr(report, "write_report", full)
    monkeypatch.setattr(report, "collect_results", lambda *args, **kwargs: [])
    code, err = run(["report", "--run", "A=abc", "--out", tmp_path / "report",
                     "--data-label", "test"], capsys)
    assert (code, err) == (2, f"wmh: error: {tmp_path / 'report' / 'report.md'}: "
                              f"{os.strerror(errno.ENOSPC)}\n")


def test_other_os_errors_are_not_hidden(monkeypatch):
    from wmh.evaluation import report

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(report, "collect_results", broken)
    with pytest.raises(OSError, match="Input/output error"):
        cli.main(["report", "--run", "A=abc", "--out", "/tmp/wmh-never-made"])
