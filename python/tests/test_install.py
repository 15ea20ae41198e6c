"""Installing the package: `pip install ./python` (no compiler; Debian's
setuptools, no download) into a venv that sees Debian's python3-libvirt,
and `make install-python` (as run by `make install`), whose _paths.py
makes the installed library found without any environment variable."""

import os
import shutil
import subprocess
import sys

from conftest import PKG_ROOT, REPO

USE = ("import libvirt, libvirt_backup as lb; c = libvirt.open('test:///default'); "
       "print(lb.__file__); print(lb._capi.lib._name); print(lb.listBackups(c.lookupByName('test')))")


def run_python(python, **env):
    e = dict(os.environ, **env)
    for k in ("LIBVIRT_BACKUP_LIB", "PYTHONPATH"):
        if k not in env:
            e.pop(k, None)
    r = subprocess.run([python, "-c", USE], env=e, capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_pip_install(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # pip builds in the source folder (build/, *.egg-info): give it a copy.
    src = tmp_path / "src"
    shutil.copytree(PKG_ROOT, src, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-build-isolation",
                        "--no-index", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lib = os.environ["LIBVIRT_BACKUP_LIB"]
    out = run_python(str(venv / "bin" / "python"), LIBVIRT_BACKUP_LIB=lib)
    assert out[0].startswith(str(venv)) and out[1:] == [lib, "[]"]
    site = out[0].rsplit("/", 1)[0]
    assert os.path.exists(os.path.join(site, "py.typed"))


def test_make_install_python(tmp_path):
    lib = os.environ["LIBVIRT_BACKUP_LIB"]
    prefix = tmp_path / "prefix"
    subprocess.run(["make", "-s", "-C", REPO, "install-python", f"PREFIX={prefix}",
                    f"LIBDIR={os.path.dirname(lib)}"], check=True, capture_output=True)
    pkg = prefix / "lib" / "python3" / "dist-packages"
    with open(pkg / "libvirt_backup" / "_paths.py") as f:
        assert f"LIBRARY = \"{os.path.dirname(lib)}/libvirt-backup.so.0\"" in f.read()
    out = run_python(sys.executable, PYTHONPATH=str(pkg), LD_LIBRARY_PATH="")
    assert out == [str(pkg / "libvirt_backup" / "__init__.py"),
                   f"{os.path.dirname(lib)}/libvirt-backup.so.0", "[]"]
    # A system prefix goes to Debian's site-packages (under DESTDIR here).
    dest = tmp_path / "dest"
    subprocess.run(["make", "-s", "-C", REPO, "install-python", f"DESTDIR={dest}", "PREFIX=/usr"],
                   check=True, capture_output=True)
    with open(dest / "usr/lib/python3/dist-packages/libvirt_backup/_paths.py") as f:
        assert 'LIBRARY = "/usr/lib/libvirt-backup.so.0"' in f.read()
