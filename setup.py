"""Build the Cython kernels in csrc/ as private extension modules of pedq_deploy."""
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "pedq_deploy.preprocess._quality_unwrap",
        ["csrc/_quality_unwrap.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
]

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True}))
