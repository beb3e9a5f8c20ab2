"""A PEP 517 build backend for the flow SDK, on the standard library only.

The SDK is one pure-Python package (`flow_sdk/`), so a wheel is that
directory, its metadata and a RECORD of hashes (the wheel format, PEP 427);
building it needs no setuptools and no download. `pip wheel sdk/python`
(or `pip install sdk/python`) calls `build_wheel`.
"""

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "flow_sdk"


def _project():
    return tomllib.loads((HERE / "pyproject.toml").read_text())["project"]


def _dist(project):
    return project["name"].replace("-", "_"), project["version"]


def _metadata(project):
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project['description']}",
        f"License: {project['license']}",
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
            # A fixed time: the same sources make the same wheel.
            zf.writestr(zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0)), d, zipfile.ZIP_DEFLATED)
    return wheel
