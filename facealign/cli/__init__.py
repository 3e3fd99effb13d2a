"""The command-line mains: one thin module per console script. Nothing in facealign imports this."""
