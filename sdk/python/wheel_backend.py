"""A PEP 517 build backend for the flow SDK, on the standard library only.

The SDK is one pure-Python package (`flow_sdk/`), so a wheel is that
directory, its metadata and a RECORD of hashes (the wheel format, PEP 427);
building it needs no setuptools and no download. `pip wheel sdk/python`
(or `pip install sdk/python`) calls `build_wheel`.
"""

import base64
import hashlib
import io
import re
import tarfile
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the [project] strings are read by hand
    tomllib = None

HERE = Path(__file__).resolve().parent
PACKAGE = "flow_sdk"


def _project():
    text = (HERE / "pyproject.toml").read_text()
    if tomllib is not None:
        return tomllib.loads(text)["project"]
    section = text.split("[project]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]*)"', section, re.M))


def _dist(project):
    return project["name"].replace("-", "_"), project["version"]


def _metadata(project):
    lines = [
        "Metadata-Version: 2.4",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project['description']}",
        f"License-Expression: {project['license']}",
        f"Requires-Python: {project['requires-python']}",
    ]
    return "\n".join(lines) + "\n"


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = _project()
    name, version = _dist(project)
    info = f"{name}-{version}.dist-info"
    files = []
    for path in sorted((HERE / PACKAGE).rglob("*.py")):
        files.append((path.relative_to(HERE).as_posix(), path.read_bytes()))
    files.append((f"{info}/METADATA", _metadata(project).encode()))
    files.append(
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: flowd wheel_backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    )
    record = [_record_line(n, d) for n, d in files] + [f"{info}/RECORD,,"]
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    wheel = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in files:
            # Fixed time, system and mode: the same sources make the same wheel.
            info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, d, zipfile.ZIP_DEFLATED)
    return wheel


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_sdist(sdist_directory, config_settings=None):
    """The sources as `<name>-<version>.tar.gz`: pyproject.toml, this
    backend and the package, with PKG-INFO."""
    project = _project()
    name, version = _dist(project)
    root = f"{name}-{version}"
    files = [("pyproject.toml", (HERE / "pyproject.toml").read_bytes()),
             ("wheel_backend.py", (HERE / "wheel_backend.py").read_bytes()),
             ("PKG-INFO", _metadata(project).encode())]
    for path in sorted((HERE / PACKAGE).rglob("*.py")):
        files.append((path.relative_to(HERE).as_posix(), path.read_bytes()))
    sdist = f"{root}.tar.gz"
    with tarfile.open(Path(sdist_directory) / sdist, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for n, d in files:
            info = tarfile.TarInfo(f"{root}/{n}")
            info.size, info.mtime, info.mode = len(d), 1577836800, 0o644
            tf.addfile(info, io.BytesIO(d))
    return sdist
