"""Thin setuptools front end that builds the compiled modules with CMake.

Honours CMAKE_ARGS and CMAKE_BUILD_PARALLEL_LEVEL, and uses Ninja when it is installed
(the cmake_example pattern).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extensions(self) -> None:
        # One CMake build makes every module: compexp_core._core always, compexp_core._cuda
        # when CMake finds a CUDA compiler. Listing _cuda as an extension lets setuptools copy
        # it (editable installs too); it is dropped from the list when CMake did not build it.
        core = next(e for e in self.extensions if e.name == "compexp_core._core")
        self.build_extension(core)
        if not Path(self.get_ext_fullpath("compexp_core._cuda")).exists():
            self.extensions = [e for e in self.extensions if e.name != "compexp_core._cuda"]

    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        import pybind11

        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            # The build folder may be reused: a test-only option left ON in its cache must not
            # reach a later plain install (CMAKE_ARGS below still override these).
            "-DCOMPEXP_CUDA_EMULATOR=OFF",
            "-DCOMPEXP_CUDA_EMULATOR_SANITIZE=OFF",
        ]
        if shutil.which("ninja") and "CMAKE_GENERATOR" not in os.environ:
            args += ["-G", "Ninja"]
        args += [a for a in os.environ.get("CMAKE_ARGS", "").split() if a]
        build_args = []
        if "CMAKE_BUILD_PARALLEL_LEVEL" not in os.environ:
            build_args += ["--parallel", str(os.cpu_count() or 1)]
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", *build_args], cwd=build_temp, check=True)


setup(ext_modules=[CMakeExtension("compexp_core._core"), CMakeExtension("compexp_core._cuda")],
      cmdclass={"build_ext": CMakeBuild})
