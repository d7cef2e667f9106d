"""A plugin interrupted while importing (Ctrl-C): the one exception plugin loading must let through."""

raise KeyboardInterrupt
