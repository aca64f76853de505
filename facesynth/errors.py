"""Errors that the CLI turns into one line and an exit code."""

from __future__ import annotations


class FacesynthError(Exception):
    """A failure at run time (exit code 1): a model that failed, a full disk, a worker that died."""

    exit_code = 1


class UserInputError(FacesynthError):
    """Bad input from the user (exit code 2): a wrong recipe key, a missing file, a corrupt dataset."""

    exit_code = 2


class RecipeError(UserInputError):
    """A recipe that does not validate; the message names the key path and, when known, the line."""


class ModelNotFoundError(UserInputError):
    """Model weights that are neither in a local folder nor in the Hugging Face cache."""
