"""The supervision engine: spawn the worker, wait on a selector, run the
ladder, kill the tree, keep the run directory and the ledger, and report.
It takes a run plan from the config layer and knows nothing of the CLI."""
