#!/usr/bin/env python3
"""Run tools/issue13-scenarios.txt (or another scenario file) through
dcmigrate-bench; see nova_dcmigrate/bench/matrix.py.

    .tox/functional/bin/python tools/bench_matrix.py \
        tools/issue13-scenarios.txt --out bench-matrix [--only NAME]
"""

import sys

from nova_dcmigrate.bench import matrix

if __name__ == "__main__":
    sys.exit(matrix.main())
