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
