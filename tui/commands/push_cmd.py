"""`tunebench push RUN --repo ID [--private] [--checkpoint STEP]`: a result, with its model card, to the Hub.

A training run's final result (or a checkpoint) is exported first (weights and tokenizer, no
trainer state, a fresh model card: jobs.checkpoints.export_weights); a merge run's merged model
goes as it is. Offline (HF_HUB_OFFLINE=1), without a token, or with the Hub out of reach it fails
at once with the reason, before anything is uploaded. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from tui.commands.common import CliError, console, workspace

# The exit status of a push that could not reach the Hub or was refused by it (README: exit codes).
EXIT_HUB = 4


def register(subparsers) -> None:
    push = subparsers.add_parser("push", help="upload a run's result (adapter or model, with its model card) to the Hugging Face Hub")
    push.add_argument("run", help="run id, unique id prefix, or name (a training run, or a merge run for its merged model)")
    push.add_argument("--repo", required=True, metavar="ID", help="the Hub repository, e.g. me/my-model (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--checkpoint", type=int, metavar="STEP", help="push this checkpoint (default: the final result)")
    push.set_defaults(handler=_push)


def _hub_error(exc: Exception, endpoint: str) -> CliError | None:
    """A clear CliError for the ways an upload fails on the network or at the Hub; None for anything else."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return _offline_error()
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        advice = {401: "your token is missing or invalid: `hf auth login`, or set HF_TOKEN",
                  403: "your token may not write there: use a write token, or a repository of your own or your organisation's"}
        return CliError(f"the Hub refused the upload (HTTP {status}): {str(exc).splitlines()[0]}",
                        advice.get(status, "check --repo and your token"), exit_code=EXIT_HUB)
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, (ConnectionError, TimeoutError)) or names & {"TransportError", "NetworkError", "TimeoutException"}:
        return CliError(f"cannot reach the Hub at {endpoint}: {exc}",
                        "check the network (or HF_ENDPOINT), then push again; the result stays in the run folder",
                        exit_code=EXIT_HUB)
    return None


def _offline_error() -> CliError:
    return CliError("cannot push: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)",
                    "unset it on a machine with a network, then push again", exit_code=EXIT_HUB)


def _source(args, ws, store):
    """(folder to upload, what it is, whether it is a temporary export to fill first)."""
    run = store.resolve_run(args.run)
    if run.kind == "merge":
        if args.checkpoint is not None:
            raise CliError("--checkpoint applies to training runs; a merge run has one merged model")
        out_dir = run.info.get("out_dir")
        if run.state != "completed" or not out_dir or not Path(out_dir).is_dir():
            raise CliError(f"merge run {run.id} has no merged model ({run.state})", "push a completed merge run")
        return run, Path(out_dir), None
    from jobs import targets

    target = targets.run_target(store, ws, run.id, args.checkpoint)
    return run, target.weights_dir, target


def _push(args: argparse.Namespace) -> int:
    from jobs.store import open_store

    ws = workspace(args)
    store = open_store(ws)
    run, folder, target = _source(args, ws, store)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
            os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise _offline_error()
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise CliError("cannot push: no Hugging Face token here", "`hf auth login`, or set HF_TOKEN to a write token",
                       exit_code=EXIT_HUB)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    api = HfApi(endpoint=endpoint)
    out = console(stderr=True)  # progress on stderr: stdout holds only the repository's address
    with tempfile.TemporaryDirectory(prefix="tunebench-push-") as tmp:
        if target is not None:
            from jobs.checkpoints import export_weights

            folder = Path(tmp) / "result"
            export_weights(target.weights_dir, folder, base_model=target.base_model.path)
        elif not (folder / "README.md").is_file():
            from engine.card import write_model_card

            write_model_card(folder, merge=run.info.get("result") or {})
        what = f"checkpoint {args.checkpoint}" if args.checkpoint is not None else ("merged model" if target is None else "final result")
        out.print(f"uploading the {what} of {run.id} ({run.name}) to {args.repo} …")
        try:
            url = api.create_repo(args.repo, private=args.private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=str(folder), repo_id=args.repo, repo_type="model",
                              commit_message=f"tunebench: {run.name} ({run.id}, {what})",
                              ignore_patterns=[".*"])  # staging and temporary files
        except Exception as exc:
            error = _hub_error(exc, endpoint)
            if error is None:
                raise
            raise error from None
    print(str(url))
    return 0
