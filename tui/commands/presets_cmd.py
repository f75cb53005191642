"""`tunebench presets …`: list, show, copy, rename, delete, validate and import presets."""

from __future__ import annotations

import argparse

from tui.commands.common import (CliError, add_preset_args, confirm, console, load_preset_from_args, print_table,
                                 workspace)


def register(subparsers) -> None:
    parser = subparsers.add_parser("presets", help="list, show, copy, rename, delete and validate presets")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    actions.add_parser("list", help="built-in and workspace presets").set_defaults(handler=_list)

    show = actions.add_parser("show", help="print a preset with every field filled in")
    add_preset_args(show)
    show.set_defaults(handler=_show)

    validate = actions.add_parser("validate", help="check a preset and list every problem")
    add_preset_args(validate)
    validate.set_defaults(handler=_validate)

    copy = actions.add_parser("copy", help="copy a preset into the workspace under a new name")
    copy.add_argument("source", help="preset to copy (usually a built-in)")
    copy.add_argument("name", help="name of the new workspace preset")
    copy.set_defaults(handler=_copy)

    move = actions.add_parser("mv", help="rename a workspace preset (built-ins cannot be renamed)")
    move.add_argument("old", help="workspace preset to rename")
    move.add_argument("new", help="its new name (no preset may have it already)")
    move.set_defaults(handler=_mv)

    remove = actions.add_parser("rm", help="delete a workspace preset (built-ins cannot be deleted)")
    remove.add_argument("name", help="workspace preset to delete")
    remove.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    remove.set_defaults(handler=_rm)

    imports = actions.add_parser(
        "import", help="make a workspace preset from a LLaMA-Factory, axolotl or mergekit YAML; lists what it could not map",
    )
    imports.add_argument("file", help="the other tool's YAML (LLaMA-Factory reads dataset_info.json beside its dataset_dir)")
    imports.add_argument("--name", help="name of the new preset (default: the file's name)")
    imports.set_defaults(handler=_import)

    reference = actions.add_parser("reference", help="print every preset field (Markdown), or update the README's copy")
    reference.add_argument("--update", metavar="README", help="rewrite the generated block of this README in place")
    reference.set_defaults(handler=_reference)


def _list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from presets import builtin_names, load_preset
    from presets.loader import user_dir

    root = workspace(args).root
    table = Table("name", "kind", "origin", "description")
    rows = [(name, "built-in") for name in builtin_names()]
    rows += [(p.stem, "workspace") for p in sorted(user_dir(root).glob("*.yaml"))]
    for name, origin in rows:
        try:
            preset = load_preset(name if origin == "built-in" else str(user_dir(root) / f"{name}.yaml"), root)
            table.add_row(name, preset.kind, origin, preset.description)
        except Exception as exc:  # a broken user preset is listed, not fatal
            table.add_row(name, "?", origin, f"[red]invalid: {str(exc).splitlines()[0]}[/]")
    print_table(console(), table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from presets import dump_preset

    console().print(dump_preset(load_preset_from_args(args)), markup=False)
    return 0


def _validate(args: argparse.Namespace) -> int:
    preset = load_preset_from_args(args)
    console().print(f"[green]ok[/]: {args.preset} is a valid {preset.kind} preset")
    return 0


def _copy(args: argparse.Namespace) -> int:
    from presets import check_name, find_preset_file, load_preset_text
    from presets.loader import read_text, save_user_preset, user_dir

    check_name(args.name)
    root = workspace(args).root
    target = user_dir(root) / f"{args.name}.yaml"
    if target.exists():
        raise CliError(f"{target} exists already; pick another name")
    source = find_preset_file(args.source, root)
    text = read_text(source)
    load_preset_text(text, str(source))  # so that problems name the file they are in, not the copy
    lines = [f"name: {args.name}" if line.startswith("name:") else line for line in text.splitlines()]
    path = save_user_preset(root, args.name, "\n".join(lines) + "\n")
    console().print(f"wrote {path}")
    return 0


def _mv(args: argparse.Namespace) -> int:
    from presets import rename_user_preset

    path = rename_user_preset(workspace(args).root, args.old, args.new)
    console().print(f"renamed {args.old} to {args.new} ({path})")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from presets import builtin_names, check_name, delete_user_preset
    from presets.loader import user_dir

    check_name(args.name)
    root = workspace(args).root
    # Ask only about a preset that exists: delete_user_preset refuses a built-in or a typo with the reason.
    if any((user_dir(root) / f"{args.name}{suffix}").is_file() for suffix in (".yaml", ".yml")):
        stays = " (the built-in of that name stays)" if args.name in builtin_names() else ""
        if not confirm(f"delete workspace preset {args.name}{stays}?", args.yes):
            console().print("nothing deleted")
            return 1
    path = delete_user_preset(root, args.name)
    console().print(f"deleted {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from presets.importers import import_config
    from presets.loader import save_user_preset, user_dir

    root = workspace(args).root
    imported = import_config(args.file, name=args.name)
    name = imported.preset.name
    if (user_dir(root) / f"{name}.yaml").exists():
        raise CliError(f"{user_dir(root) / f'{name}.yaml'} exists already", "pick another name with --name")
    path = save_user_preset(root, name, imported.text)
    out = console()
    out.print(f"imported {args.file} ({imported.tool}): {len(imported.mapped)} key(s) mapped; wrote {path}")
    if imported.unmapped:
        out.print(f"[yellow]{len(imported.unmapped)} key(s) not mapped:[/]")
        for item in imported.unmapped:
            out.print(f"  {item.key}: {item.reason}", markup=False)
    hint = "tunebench merge" if imported.preset.kind == "merge" else "tunebench data"
    out.print(f"[dim]check it: tunebench presets show {name}   ·   {hint} {name}[/]")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from pathlib import Path

    from presets.reference import schema_markdown, update_readme

    if not args.update:
        print(schema_markdown(), end="")
        return 0
    path = Path(args.update)
    try:
        updated = update_readme(path.read_text(encoding="utf-8"))
    except ValueError:
        raise CliError(f"{path}: the preset-reference markers are missing") from None
    path.write_text(updated, encoding="utf-8")
    console().print(f"updated {path}")
    return 0
