"""Folder of an `evaluate` module script; a package only so that wheels ship it."""
