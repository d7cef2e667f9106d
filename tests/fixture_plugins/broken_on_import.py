"""A plugin whose module raises on import: cnnbench must list it as broken and keep working."""

raise RuntimeError("this plugin is broken on purpose")
