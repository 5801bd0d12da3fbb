"""keyherald: the command line, the demo, and helpers shared by the services."""

__all__: list[str] = []
