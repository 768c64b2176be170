"""Create or update this app's Hugging Face Space: `python -m tools.deploy --space owner/name [--dry-run]`."""

from __future__ import annotations

import argparse
import fnmatch
import glob
import logging
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_PATH = Path(".huggingface") / "space.yaml"
_SPACE_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class SpaceConfig:
    """The deploy settings of .huggingface/space.yaml."""

    sdk: str = "gradio"
    app_file: str = "app.py"
    private: bool = False
    hardware: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=lambda: [".git/", ".venv/", "*__pycache__/*", "*.pyc"])


@dataclass
class Plan:
    """Everything a deployment will do, computed offline."""

    space: str
    config: SpaceConfig
    root: Path
    files: list[str]


def load_config(path: Path) -> SpaceConfig:
    import yaml  # a dependency of huggingface_hub

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    variables = data.get("variables") or {}
    if not isinstance(variables, dict) or not all(isinstance(k, str) and _VAR_NAME.match(k) for k in variables):
        raise ValueError(f"{path}: variables must map NAME: value")
    ignore = data.get("ignore", SpaceConfig().ignore)
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise ValueError(f"{path}: ignore must be a list of patterns")
    hardware = data.get("hardware")
    if hardware is not None:
        hardware = _check_hardware(str(hardware))
    return SpaceConfig(
        sdk=str(data.get("sdk", "gradio")),
        app_file=str(data.get("app_file", "app.py")),
        private=bool(data.get("private", False)),
        hardware=hardware,
        variables={k: "" if v is None else str(v) for k, v in variables.items()},
        ignore=ignore,
    )


def _check_hardware(name: str) -> str:
    from huggingface_hub import SpaceHardware

    known = {h.value for h in SpaceHardware}
    if name not in known:
        raise ValueError(f"unknown Space hardware {name!r}; one of: {', '.join(sorted(known))}")
    return name


def _ignored(path: str, patterns: list[str]) -> bool:
    # Same rule as huggingface_hub's upload filters: a pattern ending in "/" covers the folder.
    return any(fnmatch.fnmatch(path, p + "*" if p.endswith("/") else p) for p in patterns)


def _git_files(root: Path) -> list[str] | None:
    """Tracked plus untracked-but-not-ignored files under root, or None outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def list_files(root: Path, ignore: list[str]) -> list[str]:
    """Repository-relative POSIX paths to upload: what git keeps (or every file), minus `ignore`."""
    candidates = _git_files(root)
    if candidates is None:
        log.info("%s is not a git work tree: listing every file", root)
        candidates = [p.relative_to(root).as_posix() for p in root.rglob("*")]
    files = {p for p in candidates if not _ignored(p, ignore) and (root / p).is_file() and not (root / p).is_symlink()}
    return sorted(files)


def make_plan(space: str, root: Path, config: SpaceConfig) -> Plan:
    if not _SPACE_ID.match(space):
        raise ValueError(f"--space must look like owner/name, got {space!r}")
    files = list_files(root, config.ignore)
    if config.app_file not in files:
        raise ValueError(f"the app file {config.app_file!r} would not be uploaded from {root}")
    if "README.md" not in files:
        log.warning("no README.md: a Space reads its sdk and app_file from README.md's front matter")
    return Plan(space=space, config=config, root=root, files=files)


def describe(plan: Plan, *, token_source: str) -> str:
    c = plan.config
    lines = [
        f"Space: {plan.space} (sdk {c.sdk}, app {c.app_file}, {'private' if c.private else 'public'})",
        f"Hardware: {c.hardware or 'unchanged'}",
        f"Token: {token_source}",
        f"Variables ({len(c.variables)}):",
        *(f"  {k}={v}" for k, v in c.variables.items()),
        f"Files ({len(plan.files)}) from {plan.root}:",
        *(f"  {p}" for p in plan.files),
    ]
    return "\n".join(lines) + "\n"


def apply(plan: Plan, api: Any) -> None:
    """Creates the Space if needed, sets variables and hardware, uploads exactly plan.files."""
    from huggingface_hub.errors import HfHubHTTPError

    c = plan.config
    api.create_repo(plan.space, repo_type="space", space_sdk=c.sdk, private=c.private, exist_ok=True)
    for key, value in c.variables.items():
        api.add_space_variable(plan.space, key, value)
    if c.hardware:
        try:
            api.request_space_hardware(plan.space, c.hardware)
        except HfHubHTTPError as e:  # billing or quota: the upload is still worth doing
            log.warning("hardware %s not granted (%s); the Space keeps its current hardware", c.hardware, type(e).__name__)
    api.upload_folder(
        repo_id=plan.space,
        repo_type="space",
        folder_path=plan.root,
        allow_patterns=[glob.escape(p) for p in plan.files],
        ignore_patterns=c.ignore,
        commit_message="Deploy gptoss-space",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.deploy", description=__doc__)
    parser.add_argument("--space", required=True, help="owner/name of the Space to create or update")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; no network")
    parser.add_argument("--token", help="Hub token with write access (default: HF_TOKEN, then the saved login)")
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="folder to upload (default: this project)")
    parser.add_argument("--config", type=Path, help="deploy config (default: ROOT/.huggingface/space.yaml)")
    parser.add_argument("--hardware", help="override the config's hardware")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    root = args.root.resolve()
    config_path = args.config or root / CONFIG_PATH
    try:
        config = load_config(config_path) if config_path.is_file() else SpaceConfig()
        if args.hardware:
            config.hardware = _check_hardware(args.hardware)
        plan = make_plan(args.space, root, config)
    except ValueError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2

    token = args.token
    source = "--token"
    if token is None:
        from gptoss_space.settings import Settings

        secret = Settings().hf_token
        token = secret.get_secret_value() if secret else None
        source = "HF_TOKEN" if token else "none given (the hub's saved login, if any)"
    sys.stdout.write(describe(plan, token_source=source))
    if args.dry_run:
        sys.stdout.write("Dry run: nothing was sent.\n")
        return 0

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        apply(plan, HfApi(token=token))
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        sys.stderr.write(f"error: the Hub refused the deployment (HTTP {status})\n")
        return 1
    sys.stdout.write(f"Deployed: https://huggingface.co/spaces/{plan.space}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
