"""Build the Cython kernels in csrc/ as private extension modules of pedq_deploy."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

extensions = [
    Extension(
        "pedq_deploy.preprocess._quality_unwrap",
        ["csrc/_quality_unwrap.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
]

# export/ holds the shipped models (ONNX + manifests); it installs as pedq_deploy._models so that
# `pip install .` (not only editable installs) finds them.
setup(
    packages=find_packages(include=["pedq_deploy", "pedq_deploy.*"]) + ["pedq_deploy._models"],
    package_dir={"pedq_deploy._models": "export"},
    package_data={"pedq_deploy._models": ["*.onnx", "*.json", "*.md", "nnunet_tv/*.onnx", "nnunet_tv/*.json"]},
    ext_modules=cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True}),
)
