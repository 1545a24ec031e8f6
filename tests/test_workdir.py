from pathlib import Path

from rsclip_core.workdir import WORK_DIR_ENV, stage_dir, work_dir


def test_override_beats_env_beats_default(monkeypatch, tmp_path):
    monkeypatch.delenv(WORK_DIR_ENV, raising=False)
    assert work_dir() == Path("~/.cache/rsclip").expanduser()
    monkeypatch.setenv(WORK_DIR_ENV, str(tmp_path / "env"))
    assert work_dir() == tmp_path / "env"
    assert work_dir(tmp_path / "flag") == tmp_path / "flag"
    assert stage_dir("teachers") == tmp_path / "env" / "teachers"


def test_atomic_write_bytes_replaces_the_file_and_leaves_no_temp(tmp_path):
    from rsclip_core.workdir import atomic_write_bytes

    target = tmp_path / "features.npy"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["features.npy"]


def test_atomic_write_text_is_utf8_and_creates_the_folder(tmp_path):
    from rsclip_core.workdir import atomic_write_text

    target = tmp_path / "new" / "results.md"
    atomic_write_text(target, "Überschwemmung 62 %\n")
    assert target.read_bytes() == "Überschwemmung 62 %\n".encode("utf-8")


def test_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    import pytest

    from rsclip_core.workdir import atomic_write_bytes

    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
