"""A wheel built from the checkout initializes a database with no source checkout around.

Proves that schema/ ships inside the wheel as shareddb/schema. To stay fast and
offline, the wheel is built without build isolation (hatchling is in the dev venv)
and the fresh venv reaches the dev venv's dependencies through a .pth file (the dev
venv's own .pth files, including the editable shareddb one, are not processed there).
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

CHECK = """\
import json, sys
import shareddb
from shareddb import DbService

with DbService(sys.argv[1]) as db:
    report = db.initialize()
    status = db.migration_status()
print(json.dumps({
    "file": shareddb.__file__,
    "applied": [m.name for m in report.applied],
    "states": sorted({m.state for m in status}),
    "path": sys.path,
}))
"""


def run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_initializes_a_database(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--quiet", "-w", dist, PROJECT_ROOT,
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = dist.glob("shareddb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for backend in ("sqlite", "postgres"):
        source = sorted(
            p.name for p in (PROJECT_ROOT / "shareddb" / "schema" / backend).glob("*.sql")
        )
        assert source, f"schema/{backend} has migrations"
        shipped = sorted(
            n.rsplit("/", 1)[1]
            for n in names
            if n.startswith(f"shareddb/schema/{backend}/") and n.endswith(".sql")
        )
        assert shipped == source
        for name in source:
            with zipfile.ZipFile(wheel) as zf:
                assert (
                    zf.read(f"shareddb/schema/{backend}/{name}")
                    == (PROJECT_ROOT / "shareddb" / "schema" / backend / name).read_bytes()
                )
    assert "shareddb/py.typed" in names

    venv = tmp_path / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
        "--no-index", "--quiet", wheel,
        cwd=tmp_path,
    )  # fmt: skip
    purelib = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
        ).strip()
    )
    dev_site = Path(sysconfig.get_path("purelib"))
    assert dev_site in [Path(p) for p in site.getsitepackages()]
    (purelib / "zz_dev_dependencies.pth").write_text(f"{dev_site}\n")

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    script = workdir / "check.py"
    script.write_text(CHECK)
    db_file = workdir / "wheel.db"
    out = json.loads(run(python, script, f"sqlite:///{db_file}", cwd=workdir))

    assert Path(out["file"]).is_relative_to(purelib), out["file"]
    assert PROJECT_ROOT not in [Path(p) for p in out["path"]]
    expected = sorted(
        p.name for p in (PROJECT_ROOT / "shareddb" / "schema" / "sqlite").glob("*.sql")
    )
    assert out["applied"] == expected
    assert out["states"] == ["applied"]
    assert db_file.is_file()
