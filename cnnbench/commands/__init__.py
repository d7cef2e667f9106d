"""CLI commands beyond run and list, one module each; registered in cnnbench/cli.py."""
