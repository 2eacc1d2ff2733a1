"""Repository basics agree with each other: licence, citation, changelog, and the paths the Dockerfile copies."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml itself")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_is_the_apache_2_text_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert PROJECT["license"] == "Apache-2.0"
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190  # the full text, not a stub


def test_citation_matches_the_package():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == PROJECT["version"] and cff["license"] == PROJECT["license"]
    assert cff["title"] and cff["authors"] and cff["message"]


def test_changelog_follows_keep_a_changelog():
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert versions[0] == "Unreleased" and PROJECT["version"] in versions
    sections = set(re.findall(r"^### (\w+)", text, flags=re.M))
    assert sections <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, sections


def test_dockerfile_copies_paths_that_exist_and_smoke_tests_the_console_script():
    text = (ROOT / "Dockerfile").read_text()
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies, "the Dockerfile copies the package"
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", text, flags=re.M) and "ARG CUDA_IMAGE=nvidia/cuda:" in text
    assert "lungnet-train --help" in text and "pip install ." in text
    assert {"lungnet-train", "lungnet-predict"} <= set(PROJECT["scripts"])


def test_the_wheel_lists_every_package():
    """pyproject's package list holds every folder of lungnet/ with an __init__.py (a missing one is absent from the
    wheel: an installed lungnet would fail to import it)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lungnet").rglob("__init__.py")}
    assert found | {"lungnet.conf"} == listed
