"""Packaging glue: ships the top-level ``conf/`` folder inside the wheel as ``medeff/_conf``.

Everything else (metadata, dependencies, entry points) lives in ``pyproject.toml``.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["medeff", "medeff.*"]) + ["medeff._conf"],
    package_dir={"medeff._conf": "conf"},
    package_data={"medeff._conf": ["*.yaml", "*/*.yaml", "*/*/*.yaml"]},
)
