"""A non-editable `pip install .` into a fresh venv works from any directory."""

import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                ".pytest_cache", ".hypothesis", ".ruff_cache", "*.so")


def test_fresh_venv_install_compiles_and_runs_the_sample(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", str(source)], check=True,
                   capture_output=True, cwd=tmp_path)
    shutil.rmtree(source)  # the installed package must not need the source tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ROOT / "samples" / "mlp_sparse.onnx", elsewhere)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    np.save(elsewhere / "x.npy", x)
    sparsec = env_dir / "bin" / "sparsec"
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    subprocess.run([sparsec, "compile", "mlp_sparse.onnx", "--target", "generic",
                    "-o", "build/mlp.so"], check=True, cwd=elsewhere, env=env,
                   capture_output=True)
    subprocess.run([sparsec, "run", "build/mlp.so", "--input", "x=x.npy", "--out", "y.npz"],
                   check=True, cwd=elsewhere, env=env, capture_output=True)
    # the analysis page's template and matplotlib come with the package
    subprocess.run([sparsec, "analyze", "mlp_sparse.onnx", "--target", "generic",
                    "-o", "report.html"], check=True, cwd=elsewhere, env=env,
                   capture_output=True)
    assert (elsewhere / "report.html").read_text().count("<img") >= 4
    check = ("import sparsec, numpy as np, sys; "
             "assert 'site-packages' in sparsec.__file__, sparsec.__file__; "
             "from pathlib import Path; "
             "assert (Path(sparsec.__file__).parent / 'py.typed').is_file(), 'no py.typed'; "
             "import sparsec.compiler, sparsec.codegen; "
             "m = sparsec.load('build/mlp.so'); "
             "y = m.run({'x': np.load('x.npy')})['y']; "
             "np.testing.assert_array_equal(y, np.load('y.npz')['y']); print('ok')")
    out = subprocess.run([python, "-c", check], check=True, cwd=elsewhere, env=env,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "ok"
    listing = subprocess.run([python, "-c", "import compiler"], cwd=elsewhere, env=env,
                             capture_output=True)
    assert listing.returncode != 0, "no top-level `compiler` package may be installed"
