"""Identity's use cases with a module each: one command, one handler."""
