"""Deploy targets, one module each (release/target.py: the interface)."""
