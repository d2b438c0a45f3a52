"""``python -m dynroute.layers.benchmark``: the layer speed suite (see :mod:`.run`)."""

from dynroute.layers.benchmark.run import main

if __name__ == "__main__":
    raise SystemExit(main())
