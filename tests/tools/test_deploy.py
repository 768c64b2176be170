"""The Space deploy CLI: the dry run lists exactly what would be uploaded, offline; a real run calls the Hub API."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import huggingface_hub
import pytest

from tools import deploy

REPO = Path(__file__).resolve().parents[2]
HUB_METHODS = ["create_repo", "add_space_variable", "request_space_hardware", "upload_folder", "create_commit", "whoami"]


@pytest.fixture
def offline(monkeypatch):
    """No Hub call and no socket: any attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def boom(*args, **kwargs):
        raise AssertionError("network used during a dry run")

    for name in HUB_METHODS:
        monkeypatch.setattr(huggingface_hub.HfApi, name, boom)
    monkeypatch.setattr(socket.socket, "connect", boom)


def _listed(out: str) -> list[str]:
    return [line[2:] for line in out.split("Files (", 1)[1].splitlines()[1:] if line.startswith("  ")]


def _tree(root: Path, *, git: bool) -> Path:
    files = {
        "app.py": "app = None\n",
        "README.md": "---\nsdk: gradio\n---\n",
        "requirements.txt": "gradio\n",
        "gptoss_space/__init__.py": "",
        "gptoss_space/__pycache__/settings.cpython-311.pyc": "x",
        "gptoss_space/odd [name].py": "",
        ".venv/lib/site.py": "",
        ".pytest_cache/v/x": "",
        "tests/test_x.py": "",
        "secret.env": "HF_TOKEN=nope\n",
        "build/out.bin": "x",
        ".gitignore": "secret.env\nbuild/\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / ".huggingface").mkdir()
    shutil.copy(REPO / ".huggingface" / "space.yaml", root / ".huggingface" / "space.yaml")
    if git:
        subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def test_dry_run_of_this_project_is_offline_and_lists_the_app(offline, capsys):
    assert deploy.main(["--space", "someone/gpt-oss-demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    files = _listed(out)
    for expected in ["app.py", "requirements.txt", "gptoss_space/__init__.py", "gptoss_space/backends/local/harmony.py", "gptoss_space/settings.py"]:
        assert expected in files
    assert not any(f.startswith((".venv/", ".git/", "tests/", "tools/", "bench/")) or "__pycache__" in f or f.endswith(".pyc") for f in files)
    assert "GPTOSS_MODEL=openai/gpt-oss-20b" in out
    assert "Hardware: zero-a10g" in out
    assert "Dry run: nothing was sent." in out


def test_dry_run_respects_ignore_patterns_and_gitignore(offline, capsys, tmp_path):
    root = _tree(tmp_path, git=True)
    assert deploy.main(["--space", "someone/demo", "--dry-run", "--root", str(root), "--hardware", "cpu-basic"]) == 0
    out = capsys.readouterr().out
    assert _listed(out) == [".gitignore", "README.md", "app.py", "gptoss_space/__init__.py", "gptoss_space/odd [name].py", "requirements.txt"]
    assert "Hardware: cpu-basic" in out


def test_outside_git_every_file_minus_the_patterns(offline, capsys, tmp_path):
    root = _tree(tmp_path, git=False)
    assert deploy.main(["--space", "someone/demo", "--dry-run", "--root", str(root)]) == 0
    files = _listed(capsys.readouterr().out)
    assert "secret.env" in files and "build/out.bin" in files  # no .gitignore semantics without git
    assert not any(f.startswith((".venv/", "tests/", ".pytest_cache/")) or "__pycache__" in f for f in files)


@pytest.mark.parametrize(
    "argv",
    [["--space", "not-a-space-id"], ["--space", "a/b", "--hardware", "quantum-9000"]],
)
def test_bad_arguments_are_refused_before_any_call(offline, argv, capsys):
    assert deploy.main([*argv, "--dry-run"]) == 2
    assert "error:" in capsys.readouterr().err


class FakeApi:
    def __init__(self, token=None):
        self.token = token
        self.calls = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))

        return record


def test_real_run_creates_sets_and_uploads_exactly_the_plan(monkeypatch, capsys, caplog, tmp_path):
    root = _tree(tmp_path, git=True)
    made = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: made.append(FakeApi(token)) or made[-1])
    assert deploy.main(["--space", "someone/demo", "--root", str(root), "--token", "hf_SECRET123"]) == 0
    out = capsys.readouterr()
    assert "hf_SECRET123" not in out.out + out.err + caplog.text
    api = made[0]
    assert api.token == "hf_SECRET123"
    names = [name for name, _, _ in api.calls]
    assert names == ["create_repo", "add_space_variable", "add_space_variable", "add_space_variable", "request_space_hardware", "upload_folder"]
    _, args, kwargs = api.calls[0]
    assert args == ("someone/demo",) and kwargs["repo_type"] == "space" and kwargs["space_sdk"] == "gradio" and kwargs["exist_ok"]
    assert ("someone/demo", "GPTOSS_MODEL", "openai/gpt-oss-20b") in [a for n, a, _ in api.calls if n == "add_space_variable"]
    upload = api.calls[-1][2]
    assert upload["repo_type"] == "space" and Path(upload["folder_path"]) == root
    assert "gptoss_space/odd [[]name].py" in upload["allow_patterns"] and "app.py" in upload["allow_patterns"]
    assert ".venv/" in upload["ignore_patterns"]


def test_allow_patterns_select_exactly_the_listed_files(tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    root = _tree(tmp_path, git=True)
    plan = deploy.make_plan("someone/demo", root, deploy.load_config(root / ".huggingface" / "space.yaml"))
    everything = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    api = FakeApi()
    deploy.apply(plan, api)
    upload = api.calls[-1][2]
    kept = list(filter_repo_objects(everything, allow_patterns=upload["allow_patterns"], ignore_patterns=upload["ignore_patterns"]))
    assert sorted(kept) == plan.files
