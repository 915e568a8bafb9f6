"""The Hugging Face hub, through ``huggingface_hub``'s ``HfApi`` and nothing else.

Four calls are used: ``create_repo`` (private by default, as ``transformers``' ``push_to_hub``
offers), ``upload_folder``, ``list_repo_files`` and ``hf_hub_download``. Keeping to these makes
the one surface tests replace with a local folder (``tests/test_hub.py``), while the real code
path stays the library's own (docs/design.md §14). Importable from anywhere: it imports no
other massedit module.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class HubError(ValueError):
    """A repository id that is malformed, or a hub call that failed (the message says which)."""


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is a valid hub id (``USER/NAME``), else :class:`HubError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"{repo_id!r} is not a hub repository id (write USER/NAME): "
                       f"{err}") from None
    if repo_id.count("/") != 1:
        raise HubError(f"{repo_id!r} is not a hub repository id: write USER/NAME")
    return repo_id


def hub_api(token: str | None = None):
    """The ``HfApi`` client (one place, so that every call goes through the same object)."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def push_folder(folder: str | os.PathLike, repo_id: str, *, repo_type: str = "model",
                private: bool = True, token: str | None = None,
                commit_message: str = "Upload with massedit") -> str:
    """Create ``repo_id`` if needed (private unless ``private=False``) and upload ``folder``'s
    files to its root; returns the repository URL."""
    check_repo_id(repo_id)
    api = hub_api(token)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type,
                          commit_message=commit_message)
    except Exception as err:  # noqa: BLE001 - HTTP, connection and file errors alike
        raise HubError(f"could not upload {folder} to {repo_id}: {err}") from None
    logger.info("uploaded %s to %s (%s)", folder, repo_id, "private" if private else "public")
    return str(url)


def list_files(repo_id: str, *, repo_type: str = "model", token: str | None = None) -> list[str]:
    check_repo_id(repo_id)
    try:
        return list(hub_api(token).list_repo_files(repo_id, repo_type=repo_type))
    except Exception as err:  # noqa: BLE001 - HTTP, connection and file errors alike
        raise HubError(f"could not list {repo_id}: {err}") from None


def download(repo_id: str, filename: str, local_dir: str | os.PathLike, *,
             repo_type: str = "model", token: str | None = None) -> Path:
    """One file of ``repo_id`` into ``local_dir`` (a folder the caller owns and cleans up)."""
    try:
        path = hub_api(token).hf_hub_download(repo_id, filename, repo_type=repo_type,
                                              local_dir=str(local_dir))
    except Exception as err:  # noqa: BLE001 - HTTP, connection and file errors alike
        raise HubError(f"could not download {filename} from {repo_id}: {err}") from None
    return Path(path)
