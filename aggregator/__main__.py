"""`python -m aggregator` is the `aggregator` command."""

from aggregator.entry import main

raise SystemExit(main())
