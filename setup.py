"""Package discovery only (metadata lives in pyproject.toml).

`plugins/` and `pipelines/` sit at the top of the repository but install as
`sddr_pipeline.plugins` and `sddr_pipeline.pipelines`, never as bare top-level packages.
Discovery is namespace-aware so that data folders (weights, recipes, configs) are packages
too: setuptools then ships their files without "absent from the packages" warnings.
"""
from setuptools import find_namespace_packages, setup

MAPPED = {"sddr_pipeline.plugins": "plugins", "sddr_pipeline.pipelines": "pipelines"}
SKIP = ["*__pycache__*"]

packages = find_namespace_packages(include=["sddr_pipeline", "sddr_pipeline.*"], exclude=SKIP)
package_dir = {}
for name, folder in MAPPED.items():
    packages.append(name)
    package_dir[name] = folder
    for sub in find_namespace_packages(where=folder, exclude=SKIP):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
