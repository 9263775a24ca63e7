"""``python -m aioredq``: the command line (see ``aioredq._cli``)."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    main()
