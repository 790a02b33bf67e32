"""Build pyzsl._C: C++ sources with OpenMP, and .cu sources with nvcc when a toolkit is found.

Environment:
  PYZSL_CUDA       unset/auto: compile CUDA if nvcc is found; 0: CPU only; 1: CUDA or fail.
  PYZSL_CUDA_ARCH  semicolon list of SM versions (default "80;90").
  CUDA_HOME        toolkit root (else nvcc on PATH, else /usr/local/cuda).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
VERSION = "0.1.0"


def find_cuda() -> Path | None:
    """CUDA_HOME, then the toolkit around nvcc on PATH, then /usr/local/cuda."""
    candidates = []
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:  # given: it must be a toolkit, not silently replaced by another one
        if not (Path(home) / "bin" / "nvcc").exists():
            sys.exit(f"pyzsl: CUDA_HOME/CUDA_PATH={home} has no bin/nvcc")
        candidates.append(Path(home))
    nvcc = shutil.which("nvcc")
    if nvcc:  # may be a wrapper script outside the toolkit: then its root has no headers
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime.h").exists():
            return root
    return None


def cuda_wanted() -> tuple[bool, Path | None]:
    mode = os.environ.get("PYZSL_CUDA", "auto").strip().lower() or "auto"
    if mode not in ("auto", "0", "off", "false", "no", "1", "on", "true", "yes"):
        sys.exit(f"PYZSL_CUDA={mode!r}: expected auto, 0/off/false/no or 1/on/true/yes")
    if mode in ("0", "off", "false", "no"):
        return False, None
    home = find_cuda()
    if home is None:
        if mode in ("1", "on", "true", "yes"):
            sys.exit("PYZSL_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME or put nvcc on PATH")
        print("pyzsl: no CUDA toolkit found (CUDA_HOME, nvcc on PATH, /usr/local/cuda): CPU-only build")
        return False, None
    if not (home / "lib64" / "libcudart_static.a").exists():
        sys.exit(f"pyzsl: CUDA toolkit at {home} has no lib64/libcudart_static.a (needed for a static runtime)")
    return True, home


def archs() -> list[str]:
    raw = os.environ.get("PYZSL_CUDA_ARCH", "80;90")
    out = [a.strip().replace(".", "") for a in raw.replace(",", ";").split(";") if a.strip()]
    for a in out:
        if not a.isdigit():
            sys.exit(f"PYZSL_CUDA_ARCH: {a!r} is not an SM number like 80 or 90")
    return out


WITH_CUDA, CUDA_HOME = cuda_wanted()
CUDA_ARCHS = archs() if WITH_CUDA else []

cpp_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
cu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cu"))

macros = [("PYZSL_VERSION", f'"{VERSION}"'),
          ("PYZSL_CUDA_ARCHS", '"' + ";".join(CUDA_ARCHS) + '"')]
if WITH_CUDA:
    macros.append(("WITH_CUDA", "1"))

ext = Pybind11Extension(
    "pyzsl._C",
    cpp_sources,
    # headers and .cu files: a change to any of them rebuilds (setuptools compares mtimes)
    depends=sorted(str(p.relative_to(ROOT)) for pat in ("*.h", "*.cu") for p in (ROOT / "csrc").rglob(pat)),
    include_dirs=["csrc"] + ([str(CUDA_HOME / "include")] if WITH_CUDA else []),
    define_macros=macros,
    cxx_std=17,
    # -fno-trapping-math: FP exceptions are masked anyway; without it GCC keeps the compares of
    # the branch-free tile scans as branches (no if-conversion), 10x slower on random scores.
    # It changes no result (no reassociation, unlike -ffast-math).
    extra_compile_args=["-O3", "-fno-trapping-math", "-fopenmp", "-Wall", "-Wextra"],
    extra_link_args=["-fopenmp"],
)


OPENMP_PROBE = "#include <omp.h>\nint pyzsl_probe() { return omp_get_max_threads(); }\n"


class BuildExt(build_ext):
    """Compiles each .cu with nvcc and links the objects into the same _C."""

    def run(self):
        # A build of another configuration (CUDA on/off, archs, toolkit) must not be reused:
        # setuptools only compares source mtimes. The stamp lives with the objects.
        stamp = Path(self.build_temp) / "pyzsl-config.txt"
        config = f"cuda={WITH_CUDA} archs={';'.join(CUDA_ARCHS)} home={CUDA_HOME}\n"
        if not stamp.exists() or stamp.read_text() != config:
            self.force = True
        super().run()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(config)

    def build_extensions(self):
        if not self._openmp_works():
            print("pyzsl: WARNING: the C++ compiler has no OpenMP (-fopenmp with omp.h): building "
                  "single-threaded kernels (build_info()['openmp'] is False)", flush=True)
            for e in self.extensions:
                e.extra_compile_args = [a for a in e.extra_compile_args if a != "-fopenmp"]
                e.extra_link_args = [a for a in e.extra_link_args if a != "-fopenmp"]
        super().build_extensions()

    def _openmp_works(self) -> bool:
        import tempfile

        from setuptools.errors import CCompilerError, CompileError, LinkError

        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "probe.cpp"
            src.write_text(OPENMP_PROBE)
            try:
                objs = self.compiler.compile([str(src)], output_dir=d, extra_postargs=["-fopenmp", "-fPIC"])
                self.compiler.link_shared_object(objs, str(Path(d) / "probe.so"), extra_postargs=["-fopenmp"])
            except (CCompilerError, CompileError, LinkError):
                return False
        return True

    def build_extension(self, ext):
        if WITH_CUDA:
            objects = []
            tmp = Path(self.build_temp) / "cuda"
            tmp.mkdir(parents=True, exist_ok=True)
            nvcc = str(CUDA_HOME / "bin" / "nvcc")
            import pybind11
            import sysconfig

            headers = max((ROOT / h).stat().st_mtime for h in ext.depends)
            for src in cu_sources:
                obj = tmp / (Path(src).with_suffix("").as_posix().replace("/", "_") + ".o")
                objects.append(str(obj))
                if not self.force and obj.exists() and obj.stat().st_mtime >= max(headers, (ROOT / src).stat().st_mtime):
                    continue  # up to date (the config stamp forces a rebuild when the config changed)
                cmd = [nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17",
                       "-Xcompiler", "-fPIC", "-Xcompiler", "-Wall",
                       "-Icsrc", "-I" + pybind11.get_include(),
                       "-I" + sysconfig.get_paths()["include"], "-DWITH_CUDA=1",
                       "--expt-relaxed-constexpr"]
                for a in CUDA_ARCHS:
                    cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
                # PTX of the newest arch too, so that newer GPUs can JIT it.
                cmd += ["-gencode", f"arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]
                print("pyzsl: nvcc", " ".join(cmd[1:]), flush=True)
                subprocess.check_call(cmd, cwd=ROOT)
            ext.extra_objects = list(ext.extra_objects or []) + objects
            ext.library_dirs = list(ext.library_dirs or []) + [str(CUDA_HOME / "lib64")]
            ext.libraries = list(ext.libraries or []) + ["cudart_static", "dl", "rt", "pthread"]
        super().build_extension(ext)

    def copy_file(self, infile, outfile, *args, **kwargs):
        """--inplace: replace the .so by rename, never by rewriting it, so that running
        processes that have it mapped keep their copy instead of crashing."""
        if not str(outfile).endswith(".so"):
            return super().copy_file(infile, outfile, *args, **kwargs)
        tmp = f"{outfile}.{os.getpid()}.tmp"
        shutil.copy2(infile, tmp)
        os.replace(tmp, outfile)
        return outfile, 1


class BuildPy(build_py):
    """Ships the embedded default data (the project's data/) inside the package as pyzsl/data,
    so that `pyzsl bli align` with no files runs after a plain `pip install .`."""

    def run(self):
        super().run()
        dst = Path(self.build_lib) / "pyzsl" / "data"
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted((ROOT / "data").glob("*")):
            if f.is_file():
                shutil.copy2(f, dst / f.name)


setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt, "build_py": BuildPy})
