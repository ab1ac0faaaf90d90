#!/usr/bin/env bash
# Creates bench/.venv-recbole: RecBole 1.2.1, the peer of bench/cf_vs_recbole.py (never the project's env).
# RecBole 1.2.1 needs numpy 1.26.x, scipy 1.11.x (newer scipy breaks its LightGCN adjacency), pandas < 3,
# and imports `ray.tune` at module level only for hyper-parameter tuning, which the benchmark never calls:
# a stand-in `ray` package that fails loudly if anything actually uses it is written into the env.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
test -x .venv-recbole/bin/python || $PY -m venv .venv-recbole
V=.venv-recbole/bin
$V/pip install -q torch==2.13.0
$V/pip install -q "numpy==1.26.4" "scipy==1.11.4" "pandas<3"
$V/pip install -q --no-deps recbole==1.2.1
$V/pip install -q colorlog==4.7.2 colorama==0.4.4 "scikit-learn<1.6" pyyaml tensorboard thop tabulate \
    texttable plotly tqdm psutil "numpy==1.26.4" "scipy==1.11.4"
SITE=$($V/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$SITE/ray"
cat > "$SITE/ray/__init__.py" <<'PYEOF'
"""Stand-in for ray (installed by bench/cf_recbole_setup.sh): RecBole imports ray.tune at module level
for hyper-parameter tuning only. Any real use raises."""


class _Unavailable:
    def __getattr__(self, name):
        raise RuntimeError("ray is not installed in the benchmark environment (tuning is not benchmarked)")


tune = _Unavailable()
PYEOF
$V/python -c "import recbole.quick_start; print('recbole', __import__('recbole').__version__, 'ready')"
