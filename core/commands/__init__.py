"""Subcommands of the ``hyperforge`` CLI that belong to core."""
