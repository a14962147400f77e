"""``python -m visio_matrix``: the same as the ``visio-matrix`` console script."""

from visio_matrix.cli import main

raise SystemExit(main())
