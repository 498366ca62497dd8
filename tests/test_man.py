"""The man pages in man/ must match the real argument parsers both ways, lint clean and render.

How options are written in the roff, so that they can be read back here (each page says so in its
header comment):

- A command-line option is the tag of a ``.TP`` paragraph: the line after ``.TP`` is ``.B``,
  ``.BR`` or ``.BI``; its bold arguments are option names (``\\-f``, ``\\-\\-foreground``), every
  name of one option in the same tag; its italic argument, if any, is the option's value
  (``.BI \\-\\-cache " DIR"``). Nothing else in such a tag may be bold.
- Where: ``.SH OPTIONS`` holds the options of the program itself; in s3xfs(8), ``.SH COMMANDS``
  holds one ``.SS "s3xfs COMMAND [SUBCOMMAND]"`` per command, with that command's options.
  ``-h``/``--help`` is documented once, in OPTIONS, for every command.
- The ``-o`` vocabulary is in ``.SH "MOUNT OPTIONS"``: every bold argument of a ``.TP`` tag there is
  one item: ``key`` a flag, ``key=`` a key that takes a value, ``prefix*`` every item beginning so.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from s3xfs import mount_options
from s3xfs.cli import build_parser as s3xfs_parser
from s3xfs.localzone.cli import build_parser as localzone_parser
from s3xfs.mount_helper import build_parser as helper_parser

MAN = Path(__file__).resolve().parent.parent / "man"
PARSERS = {"s3xfs.8": s3xfs_parser, "mount.s3xfs.8": helper_parser, "s3xfs-localzone.1": localzone_parser}
PAGES = sorted(PARSERS)
HELP = frozenset({"-h", "--help"})

# --- the parsers -------------------------------------------------------------------------------------


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of ``parser`` and of every subcommand under it, recursively."""
    yield path, parser
    for action in parser._actions:  # argparse has no public accessor for its actions
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases map several names to one parser
                    seen.add(id(sub))
                    yield from commands(sub, path + (name,))


def has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(action, argparse._SubParsersAction) for action in parser._actions)


@dataclass(frozen=True)
class Option:
    names: frozenset[str]  # every spelling of one option: {"-j", "--jobs"}
    takes_value: bool
    metavar: str | None  # as the parser names its value, when it sets one


def options(parser: argparse.ArgumentParser) -> dict[str, Option]:
    """Every option string of ``parser`` (not of its subcommands) -> its option."""
    found = {}
    for action in parser._actions:
        if action.option_strings:
            metavar = action.metavar if isinstance(action.metavar, str) else None
            option = Option(frozenset(action.option_strings), action.nargs != 0, metavar)
            found.update(dict.fromkeys(action.option_strings, option))
    return found


# --- the roff ----------------------------------------------------------------------------------------

# The tag macros, and the fonts their arguments alternate between.
FONTS = {"B": "BB", "BI": "BI", "BR": "BR"}
SEPARATOR = re.compile(r"[\s,|]*")
OPTION_NAME = re.compile(r"-[A-Za-z0-9]|--[A-Za-z0-9][A-Za-z0-9-]*")


def unescape(text: str) -> str:
    """roff text as it reads: ``\\-`` is ``-``, font changes and non-printing escapes dropped."""
    text = re.sub(r"\\f(\[[^]]*\]|\(..|.)", "", text)
    text = text.replace("\\-", "-").replace("\\&", "").replace("\\%", "").replace("\\c", "")
    return text.replace("\\e", "\\")


def arguments(line: str) -> list[str]:
    """The arguments of a macro line, split as roff does: blanks separate, double quotes group,
    and ``""`` inside quotes is a quote."""
    args, i = [], 0
    while i < len(line):
        if line[i] in " \t":
            i += 1
        elif line[i] == '"':
            i, text = i + 1, ""
            while i < len(line):
                if line.startswith('""', i):
                    text, i = text + '"', i + 2
                elif line[i] == '"':
                    i += 1
                    break
                else:
                    text, i = text + line[i], i + 1
            args.append(text)
        else:
            end = i
            while end < len(line) and line[end] not in " \t":
                end += 1
            args.append(line[i:end])
            i = end
    return args


@dataclass
class Tag:
    line: int  # 1-based, in the page
    bold: list[str]
    italic: str  # the value shown after the names, "" if none

    def where(self, page: str) -> str:
        return f"{page}:{self.line}"


def tags(lines: list[tuple[int, str]], page: str) -> list[Tag]:
    """The tags of the ``.TP`` paragraphs among ``lines`` ((number, text) pairs)."""
    found = []
    for index, (_, text) in enumerate(lines):
        if not re.fullmatch(r"\.TP(\s.*)?", text):
            continue
        number, tag = lines[index + 1] if index + 1 < len(lines) else (0, "")
        macro, _, rest = tag.partition(" ")
        assert macro in (".B", ".BR", ".BI"), (
            f"{page}:{number}: the tag of a .TP here must be a .B, .BR or .BI line, not {tag!r}")
        fonts = FONTS[macro[1:]]
        bold, italic = [], []
        for position, argument in enumerate(arguments(rest)):
            text = unescape(argument).strip()
            if fonts[position % 2] == "B":
                bold.append(text)
            elif fonts[position % 2] == "I" and not SEPARATOR.fullmatch(text):
                italic.append(text)
        found.append(Tag(number, bold, " ".join(italic)))
    return found


def read(page: str) -> list[tuple[int, str]]:
    return list(enumerate((MAN / page).read_text().splitlines(), start=1))


def split(lines: list[tuple[int, str]], macro: str) -> list[tuple[str | None, list[tuple[int, str]]]]:
    """``lines`` cut at every ``.SH`` (or ``.SS``): (title, its lines); the lines before the first
    have the title None."""
    parts: list[tuple[str | None, list[tuple[int, str]]]] = [(None, [])]
    for number, text in lines:
        if text.startswith(macro + " "):
            parts.append((" ".join(unescape(arg) for arg in arguments(text[len(macro) + 1:])), []))
        else:
            parts[-1][1].append((number, text))
    return parts


def section(page: str, title: str) -> list[tuple[int, str]]:
    found = [body for name, body in split(read(page), ".SH") if name == title]
    assert len(found) == 1, f"{page} must have exactly one .SH {title}"
    return found[0]


def documented_options(page: str, lines: list[tuple[int, str]]) -> dict[str, Tag]:
    """Option name -> the tag that documents it; every bold argument of a tag must be an option."""
    found: dict[str, Tag] = {}
    for tag in tags(lines, page):
        assert tag.bold, f"{tag.where(page)}: a .TP tag without an option"
        for name in tag.bold:
            assert OPTION_NAME.fullmatch(name), (
                f"{tag.where(page)}: {name!r} is bold in an option tag but is not an option name "
                "(write the value in italics: .BI \\-\\-name \" VALUE\")")
            assert name not in found, f"{tag.where(page)}: {name} is documented twice"
            found[name] = tag
    return found


def compare(page: str, what: str, documented: dict[str, Tag], real: dict[str, Option]) -> None:
    """The options documented for one command are exactly the parser's, each shown as it takes
    its value, all names of one option in one tag."""
    missing, extra = sorted(set(real) - set(documented)), sorted(set(documented) - set(real))
    assert not missing and not extra, (
        f"{page}, {what}: not documented: {missing or 'none'}; documented but not in the parser: "
        f"{extra or 'none'}")
    for name, option in real.items():
        tag = documented[name]
        together = set(tag.bold) & set(real)
        assert together == option.names, (
            f"{tag.where(page)}: {sorted(option.names)} are one option of {what}: document them in one "
            f"tag (this one has {sorted(together)})")
        if not option.takes_value:
            assert not tag.italic, f"{tag.where(page)}: {name} of {what} takes no value, the page shows {tag.italic!r}"
        elif option.metavar is not None:
            assert tag.italic == option.metavar, (
                f"{tag.where(page)}: {name} of {what}: the parser calls its value {option.metavar!r}, "
                f"the page {tag.italic!r}")
        else:
            assert tag.italic, f"{tag.where(page)}: {name} of {what} takes a value; show it: .BI {name} \" VALUE\""


# --- options: both ways ------------------------------------------------------------------------------


def s3xfs_sections() -> dict[tuple[str, ...], list[tuple[int, str]]]:
    """The .SS "s3xfs COMMAND ..." subsections of COMMANDS in s3xfs.8, by command path."""
    found = {}
    parts = split(section("s3xfs.8", "COMMANDS"), ".SS")
    assert not tags(parts[0][1], "s3xfs.8"), "s3xfs.8: options in COMMANDS before the first .SS"
    for title, body in parts[1:]:
        words = title.split()
        assert words[:1] == ["s3xfs"] and len(words) > 1, f"s3xfs.8: .SS {title!r} in COMMANDS must be \"s3xfs COMMAND\""
        assert tuple(words[1:]) not in found, f"s3xfs.8: two sections for {title!r}"
        found[tuple(words[1:])] = body
    return found


def test_s3xfs_own_options():
    documented = documented_options("s3xfs.8", section("s3xfs.8", "OPTIONS"))
    compare("s3xfs.8", "s3xfs (OPTIONS)", documented, options(s3xfs_parser()))


def test_s3xfs_has_a_section_for_every_command():
    every = dict(commands(s3xfs_parser()))
    leaves = {path for path, parser in every.items() if path and not has_subcommands(parser)}
    pages = set(s3xfs_sections())
    missing, extra = sorted(leaves - pages), sorted(pages - leaves)
    assert not missing and not extra, (
        f"s3xfs.8: commands without a .SS in COMMANDS: {[' '.join(p) for p in missing] or 'none'}; "
        f".SS for commands the parser does not have: {[' '.join(p) for p in extra] or 'none'}")
    for path, parser in every.items():
        if path and has_subcommands(parser):  # `s3xfs cache`: its options would need a section of their own
            assert set(options(parser)) == HELP, f"s3xfs {' '.join(path)} has options: give it a .SS in s3xfs.8"


@pytest.mark.parametrize("path", [path for path, parser in commands(s3xfs_parser())
                                  if path and not has_subcommands(parser)], ids=" ".join)
def test_s3xfs_command_options(path):
    parser = dict(commands(s3xfs_parser()))[path]
    real = options(parser)
    assert HELP <= set(real), f"s3xfs {' '.join(path)} has no -h/--help, but OPTIONS in s3xfs.8 says every command has"
    body = s3xfs_sections().get(path)
    assert body is not None, f"s3xfs.8: no .SS \"s3xfs {' '.join(path)}\" in COMMANDS"
    real = {name: option for name, option in real.items() if name not in HELP}
    compare("s3xfs.8", f"s3xfs {' '.join(path)}", documented_options("s3xfs.8", body), real)


@pytest.mark.parametrize("page", ["mount.s3xfs.8", "s3xfs-localzone.1"])
def test_single_command_page_options(page):
    parser = PARSERS[page]()
    assert not has_subcommands(parser)
    compare(page, parser.prog, documented_options(page, section(page, "OPTIONS")), options(parser))


# --- the -o vocabulary -------------------------------------------------------------------------------


def expected_mount_items() -> set[str]:
    """Every -o item as the pages write it: ``key``, ``key=`` (takes a value), ``prefix*``."""
    flags = set(mount_options.FLAG_OPTIONS) | set(mount_options.KERNEL_FLAGS) | set(mount_options.MOUNT_TOOL_OPTIONS)
    values = set(mount_options.VALUE_OPTIONS)
    assert flags | values == mount_options.documented_keys(), (
        "mount_options.documented_keys() has keys this test does not know the form of: "
        f"{sorted(mount_options.documented_keys() - flags - values)}")
    assert not flags & values
    return flags | {key + "=" for key in values} | {prefix + "*" for prefix in mount_options.MOUNT_TOOL_PREFIXES}


@pytest.mark.parametrize("page", ["s3xfs.8", "mount.s3xfs.8"])
def test_mount_options_match_the_o_vocabulary(page):
    documented: dict[str, Tag] = {}
    for tag in tags(section(page, "MOUNT OPTIONS"), page):
        for item in tag.bold:
            assert item not in documented, f"{tag.where(page)}: -o {item} is documented twice"
            documented[item] = tag
    real = expected_mount_items()
    missing, extra = sorted(real - set(documented)), sorted(set(documented) - real)
    assert not missing and not extra, (
        f"{page}, MOUNT OPTIONS: not documented: {missing or 'none'}; documented but not accepted by "
        f"mount_options: {extra or 'none'} (write a key that takes a value as key=, a prefix as prefix*)")


def test_the_comparison_sees_the_options():
    """Guard against both sides being empty: a change of the roff convention or of the parsers
    must not make the tests above pass vacuously."""
    mount = s3xfs_sections()[("mount",)]
    assert len(documented_options("s3xfs.8", mount)) >= 20
    assert len(options(dict(commands(s3xfs_parser()))[("mount",)])) >= 20
    assert len(s3xfs_sections()) >= 7
    assert len(documented_options("mount.s3xfs.8", section("mount.s3xfs.8", "OPTIONS"))) >= 8
    assert len(documented_options("s3xfs-localzone.1", section("s3xfs-localzone.1", "OPTIONS"))) >= 18
    assert len(expected_mount_items()) >= 50
    for page in ("s3xfs.8", "mount.s3xfs.8"):
        assert len([item for tag in tags(section(page, "MOUNT OPTIONS"), page) for item in tag.bold]) >= 50


def test_the_extraction_reads_the_convention():
    """The reader itself, on the forms the pages use."""
    lines = list(enumerate([".TP", r'.BR \-f ", " \-\-foreground', "text", ".TP",
                            r'.BI \-j ", " \-\-jobs " N"', ".TP", r'.BI \-\-debug " MODULE[:MODULE...]"',
                            ".TP", r'.BR region= ", " x\-*', ".TP", r'.BR "GET /a" ", " "say ""hi"""'], start=1))
    found = tags(lines, "test")
    assert [(tag.bold, tag.italic) for tag in found] == [
        (["-f", "--foreground"], ""), (["-j", "--jobs"], "N"), (["--debug"], "MODULE[:MODULE...]"),
        (["region=", "x-*"], ""), (["GET /a", 'say "hi"'], "")]
    with pytest.raises(AssertionError, match="not an option name"):
        documented_options("test", list(enumerate([".TP", r".B \-\-cache DIR"], start=1)))
    with pytest.raises(AssertionError, match="must be a .B, .BR or .BI line"):
        tags(list(enumerate([".TP", r"\fB\-\-cache\fR"], start=1)), "test")


# --- lint and rendering ------------------------------------------------------------------------------


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return path


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ, **env})


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint_is_clean(page):
    result = run([tool("mandoc", "mandoc"), "-Tlint", "-W", "warning", str(MAN / page)])
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result.stdout + result.stderr


@pytest.mark.parametrize("page", PAGES)
def test_groff_warns_about_nothing(page):
    # groff exits 0 even when it warns: its output is what counts.
    result = run([tool("groff", "groff-base"), "-man", "-ww", "-z", str(MAN / page)])
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result.stdout + result.stderr


def test_the_linters_would_complain(tmp_path):
    """Both checks above are meaningful here: each reports a broken page."""
    if not (shutil.which("mandoc") or shutil.which("groff")):
        pytest.skip("neither mandoc (Debian package mandoc) nor groff (groff-base) is installed")
    source = tmp_path / "broken.8"
    source.write_text("\n".join([".TH BROKEN 8 2026-01-01", ".SH NAME", r"broken \- page", ".UNKNOWN",
                                 ".TP", r".B \fBunclosed", ".SH SYNOPSIS", ""]))
    if shutil.which("mandoc"):
        result = run(["mandoc", "-Tlint", "-W", "warning", str(source)])
        assert result.returncode != 0 and "UNKNOWN" in result.stdout + result.stderr
    if shutil.which("groff"):
        assert "UNKNOWN" in run(["groff", "-man", "-ww", "-z", str(source)]).stderr


def rendered(page: str, renderer: str) -> str:
    if renderer == "mandoc":
        result = run([tool("mandoc", "mandoc"), "-Tutf8", str(MAN / page)])
    else:
        tool("man", "man-db")
        tool("groff", "groff-base")
        env = {name: value for name, value in os.environ.items() if name != "MAN_KEEP_FORMATTING"}
        result = subprocess.run(["man", "-l", str(MAN / page)], capture_output=True, text=True, timeout=60,
                                env={**env, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"})
    complaints = [line for line in result.stderr.splitlines() if "set the locale" not in line]  # the host's, not ours
    assert result.returncode == 0 and not complaints, result.stderr
    text = re.sub(".\b", "", result.stdout)  # overstrike bold and underline
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # or SGR escapes


def synopsis(text: str) -> str:
    """The SYNOPSIS of a rendered page, as one line."""
    match = re.search(r"^SYNOPSIS\n(.*?)\n(?=\S)", text, re.MULTILINE | re.DOTALL)
    assert match, "no SYNOPSIS in the rendered page"
    return " ".join(match.group(1).split())


@pytest.mark.parametrize("renderer", ["mandoc", "man"])
@pytest.mark.parametrize("page", PAGES)
def test_page_renders_and_its_synopsis_names_every_command(page, renderer):
    text = rendered(page, renderer)
    assert "SEE ALSO" in text and len(text.splitlines()) > 40
    parser = PARSERS[page]()
    found = synopsis(text)
    for path, sub in commands(parser):
        if not has_subcommands(sub):
            usage = " ".join((parser.prog,) + path)
            assert usage in found, f"{page} ({renderer}): the SYNOPSIS does not show {usage!r}: {found}"
