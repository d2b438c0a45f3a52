"""CLI subcommands, one module each, each with a register(app) function."""
