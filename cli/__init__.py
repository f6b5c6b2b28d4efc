"""Floor 4 of retr: the Typer CLI (``retr``). Commands only wire options into library calls."""
