"""Benchmark command: `.venv/bin/python tests/benchmarks [--quick] [--out bench-results/report.md]`.

`python -m tests.benchmarks` works only where `tests` is not shadowed: medspacy's QuickUMLS installs a top-level
`tests` package into site-packages, so running the directory is the command that always works.
"""
import importlib.util
import pathlib
import sys

if __package__:                                   # python -m tests.benchmarks
    from .run import main
else:                                             # python tests/benchmarks
    HERE = pathlib.Path(__file__).resolve().parent
    ROOT = HERE.parents[1]
    # Sibling module names (report, profiling...) must not shadow anything: load this folder as one package.
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(
        "msk_cds_bench", HERE / "__init__.py", submodule_search_locations=[str(HERE)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["msk_cds_bench"] = package
    spec.loader.exec_module(package)
    from msk_cds_bench.run import main

sys.exit(main())
