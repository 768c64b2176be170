"""The settings table of the README, generated from the Settings class (`python -m tools.settings_doc`)."""

from __future__ import annotations

import sys

from gptoss_space.settings import Settings


def env_names(name: str, field) -> list[str]:
    alias = field.validation_alias
    if alias is not None:
        return [a for a in alias.choices if isinstance(a, str) and a.isupper()]
    return ["GPTOSS_" + name.upper()]


def _is_secret(field) -> bool:
    return "SecretStr" in repr(field.annotation)


def settings_table() -> str:
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory is not None else field.default
        if _is_secret(field):  # a secret's default is never shown (GPTOSS_MAX_TOKENS_CAP's 2048 is no secret)
            default = None
        shown = "" if default in ("", None) else str(default).replace(str(Settings().cache_dir.parent.parent), "~")
        if isinstance(default, list) and default:
            shown = ", ".join(default)
        envs = " / ".join(f"`{e}`" for e in env_names(name, field))
        rows.append(f"| {envs} | {('`' + shown + '`') if shown else '(empty)'} | {field.description} |")
    return "\n".join(rows)


def write_readme(path: str = "README.md") -> None:
    """Replace the table between the settings markers of the README."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, rest = text.split("<!-- settings:start -->\n", 1)
    _, tail = rest.split("<!-- settings:end -->", 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}<!-- settings:start -->\n{settings_table()}\n<!-- settings:end -->{tail}")


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write_readme()
    else:
        sys.stdout.write(settings_table() + "\n")
