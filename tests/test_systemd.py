"""The systemd units in systemd/: what systemd itself says of them, and their commands run for real.

- ``systemd-analyze verify`` on every unit file (a new one is checked automatically), in a
  temporary root laid out like an installed system: the project's console scripts in
  /usr/local/bin (where ``pip install`` puts them), every other command where this machine has it,
  and the repository's man pages on MANPATH, so that the executable and Documentation= checks
  stay on and mean something.
- Mount and automount unit names match Where=; the fstab lines quoted in the units are what
  systemd-fstab-generator turns into the same units; the helper accepts the units' options.
- s3xfs@.service's own ExecStartPre/ExecStart/ExecStopPost, taken from the unit file (specifiers
  and the example EnvironmentFile substituted as systemd does), run as root under a NOTIFY_SOCKET
  with the unit's NoNewPrivileges=, CapabilityBoundingSet= and UMask= applied (setpriv), against
  a local endpoint.

systemd itself cannot run here (PID 1 is not systemd in CI containers), so the remaining
directives (seccomp, device policy, restart policy) are documented in docs/SYSTEMD.md, not tested.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

from tests.support.localzone import ACCESS_KEY, REGION, SECRET_KEY, LocalZone
from tests.support.mount import Mount, NotifySocket, force_unmount, is_mounted, needs_fuse

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = REPO / "systemd"
MAN_DIR = REPO / "man"
DOCS = REPO / "docs" / "SYSTEMD.md"
UNIT_SUFFIXES = {".service", ".mount", ".automount", ".socket", ".timer", ".path", ".target", ".slice", ".swap"}
UNITS = sorted(path for path in UNIT_DIR.iterdir() if path.suffix in UNIT_SUFFIXES)
MOUNT_UNITS = [path for path in UNITS if path.suffix in (".mount", ".automount")]
TEMPLATE = UNIT_DIR / "s3xfs@.service"
EXAMPLE_CONF = UNIT_DIR / "mnt-dataset.conf.example"
PIP_BIN = Path("/usr/local/bin")  # where the units expect the console scripts
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where this installation has them
PROJECT_SCRIPTS = {"s3xfs", "mount.s3xfs", "s3xfs-localzone"}
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default PATH
EXEC_KEYS = ("ExecCondition", "ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop",
             "ExecStopPost")
FSTAB_MARKER = "/etc/fstab line:"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEMD_ESCAPE = shutil.which("systemd-escape")
FSTAB_GENERATOR = next((p for p in ("/lib/systemd/system-generators/systemd-fstab-generator",
                                    "/usr/lib/systemd/system-generators/systemd-fstab-generator")
                        if os.access(p, os.X_OK)), None)
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is absent (Debian package systemd)")
needs_escape = pytest.mark.skipif(SYSTEMD_ESCAPE is None, reason="systemd-escape is absent (Debian package systemd)")
needs_generator = pytest.mark.skipif(FSTAB_GENERATOR is None,
                                     reason="systemd-fstab-generator is absent (Debian package systemd)")


# --- reading unit files and environment files ----------------------------------------------------

def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in order, as systemd reads them: comments, continuation lines."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"{path.name}: cannot parse {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    """Every value of ``key``, honouring "Key=" (empty) resetting a list as systemd does."""
    found: list[str] = []
    for name, value in unit.get(section, []):
        if name == key:
            found = [] if value == "" else found + [value]
    return found


def value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert found, f"no {key}= in [{section}]"
    return found[-1]


def parse_environment_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile= for the forms the example uses: KEY=VALUE, KEY="VALUE", comment lines."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, raw = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}: bad line {line!r}"
        env[key] = " ".join(shlex.split(raw)) if raw else ""
    return env


def unescape_path(instance: str) -> str:
    """systemd's %f: the unescaped instance with "/" prepended (systemd-escape --unescape --path)."""
    text = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), instance.replace("-", "/"))
    return "/" + text.strip("/")


def escape_path(path: str) -> str:
    """systemd-escape --path (the tests that need the exact tool check it against this)."""
    text = path.strip("/") or "-"
    out = []
    for i, char in enumerate(text):
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in ":_" or (char == "." and i > 0)):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def expand_specifiers(text: str, instance: str, unit_name: str) -> str:
    table = {"i": instance, "I": unescape_path(instance)[1:], "f": unescape_path(instance), "n": unit_name,
             "N": unit_name.rsplit(".", 1)[0], "p": unit_name.split("@", 1)[0], "%": "%"}

    def one(match: re.Match[str]) -> str:
        assert match.group(1) in table, f"specifier %{match.group(1)} is not handled by this test"
        return table[match.group(1)]

    return re.sub(r"%(.)", one, text)


def command_line(line: str, instance: str, unit_name: str, env: dict[str, str]) -> tuple[list[str], bool]:
    """An Exec*= value -> (argv, failure ignored), as systemd builds it: split into words (quotes),
    specifiers within each word (so %f stays one argument), then at exec time ${VAR} (one argument),
    $VAR as a word of its own (split at whitespace, quotes honoured), $$ (a dollar sign)."""
    prefixes = re.match(r"[-@:+!]*", line).group(0)
    assert set(prefixes) <= {"-"}, f"prefix {prefixes!r} is not handled by this test"
    argv: list[str] = []
    for word in (expand_specifiers(w, instance, unit_name) for w in shlex.split(line[len(prefixes):])):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv.extend(shlex.split(env.get(whole.group(1), "")))
            continue
        word = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word)
        argv.append(word.replace("$$", "$"))
    return argv, "-" in prefixes


# --- systemd-analyze verify ----------------------------------------------------------------------

def exec_paths(unit: dict[str, list[tuple[str, str]]]) -> set[str]:
    paths = set()
    for section in unit.values():
        for key, text in section:
            if key in EXEC_KEYS and text:
                paths.add(shlex.split(text.lstrip("-@:+!"))[0])
    return paths


def installed_root(tmp_path: Path) -> Path:
    """A root for ``systemd-analyze verify --root``: the units in /etc/systemd/system, the project's
    scripts in /usr/local/bin, every other command the units run copied from this machine (absent
    if this machine lacks it, so that verify reports it)."""
    root = tmp_path / "root"
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for path in UNITS:
        shutil.copy(path, unit_dir / path.name)
    for path in sorted(set().union(*(exec_paths(parse_unit(p)) for p in UNITS))):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).parent == PIP_BIN and Path(path).name in PROJECT_SCRIPTS:
            shutil.copy(SCRIPTS / Path(path).name, target)
        elif os.path.exists(path):
            shutil.copy(path, target)  # follows symlinks: /bin/sh -> dash
    return root


def man_path(tmp_path: Path) -> Path:
    """The repository's man pages laid out for man(1): man1/, man8/..."""
    top = tmp_path / "man"
    for page in sorted(MAN_DIR.glob("*.[1-9]")):
        section = top / f"man{page.suffix[1:]}"
        section.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, section / page.name)
    top.mkdir(exist_ok=True)
    return top


def instance_of(path: Path) -> str:
    """What to verify a template as: the instance its example EnvironmentFile is named after."""
    return path.name.replace("@.", f"@{EXAMPLE_CONF.name.split('.')[0]}.", 1) if "@." in path.name else path.name


def test_units_are_found():
    assert {p.name for p in UNITS} >= {"s3xfs@.service", "mnt-dataset.mount", "mnt-dataset.automount",
                                       "s3xfs-localzone.service"}


@needs_analyze
@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_systemd_analyze_verify(path: Path, tmp_path: Path):
    unit = parse_unit(path)
    documentation = " ".join(values(unit, "Unit", "Documentation"))
    assert documentation, f"{path.name} has no Documentation="
    if "man:" in documentation and shutil.which("man") is None:
        pytest.skip("man is absent (Debian package man-db): systemd-analyze cannot check Documentation=")
    root = installed_root(tmp_path)
    name = instance_of(path)
    argument = f"etc/systemd/system/{path.name}" + (f":{name}" if name != path.name else "")
    env = dict(os.environ, MANPATH=str(man_path(tmp_path)), SYSTEMD_LOG_COLOR="0", LANG="C.UTF-8")
    env.pop("SYSTEMD_LOG_LEVEL", None)
    # --recursive-errors=no: warnings about this unit (unknown keys, bad values) fail the check too;
    # without it systemd-analyze exits 0 on them. Exit status != 0 also for a missing command or man page.
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", f"--root={root}", "--recursive-errors=no", argument],
                            cwd=root, env=env, capture_output=True, text=True, timeout=120)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, (
        f"systemd-analyze verify {path.name} failed ({result.returncode}):\n{output}\n"
        f"(commands are looked up in a root with the project's scripts in {PIP_BIN} and everything else as "
        f"on this machine; man pages in {MAN_DIR})")


@needs_escape
@pytest.mark.parametrize("path", MOUNT_UNITS, ids=[p.name for p in MOUNT_UNITS])
def test_mount_unit_name_is_the_escaped_where(path: Path):
    where = value(parse_unit(path), path.suffix[1:].capitalize(), "Where")
    escaped = subprocess.run([SYSTEMD_ESCAPE, "--path", f"--suffix={path.suffix[1:]}", where],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert path.name == escaped, f"{path.name} must be named {escaped} (systemd-escape --path of Where={where})"


def test_automounts_have_their_mount_unit():
    for path in UNIT_DIR.glob("*.automount"):
        mount = path.with_suffix(".mount")
        assert mount.exists(), f"{path.name} has no {mount.name}"
        assert value(parse_unit(path), "Automount", "Where") == value(parse_unit(mount), "Mount", "Where")


def test_mount_units_use_the_project_helper():
    for path in UNIT_DIR.glob("*.mount"):
        fstype = value(parse_unit(path), "Mount", "Type")
        assert f"mount.{fstype}" in PROJECT_SCRIPTS, f"mount(8) runs mount.{fstype}, which s3xfs does not install"


def fstab_line(path: Path) -> str:
    """The fstab line a unit's header says it is equivalent to (the comment line after FSTAB_MARKER)."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and line.rstrip().endswith(FSTAB_MARKER):
            return lines[i + 1].lstrip("#").strip()
    raise AssertionError(f"{path.name} quotes no fstab line ('{FSTAB_MARKER}')")


@needs_generator
@pytest.mark.parametrize("path", MOUNT_UNITS, ids=[p.name for p in MOUNT_UNITS])
def test_fstab_line_makes_the_same_units(path: Path, tmp_path: Path):
    """What systemd-fstab-generator makes of the quoted fstab line is this unit (and it is in the docs)."""
    line = fstab_line(path)
    assert line in DOCS.read_text(), f"docs/SYSTEMD.md should show the fstab line of {path.name}:\n{line}"
    (tmp_path / "fstab").write_text(line + "\n")
    out = [tmp_path / name for name in ("normal", "early", "late")]
    for directory in out:
        directory.mkdir()
    env = dict(os.environ, SYSTEMD_FSTAB=str(tmp_path / "fstab"), SYSTEMD_PROC_CMDLINE="", SYSTEMD_LOG_COLOR="0")
    result = subprocess.run([FSTAB_GENERATOR, *map(str, out)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    mount = path.with_suffix(".mount")
    generated, ours = parse_unit(out[0] / mount.name), parse_unit(mount)
    for key in ("What", "Where", "Type"):
        assert value(generated, "Mount", key) == value(ours, "Mount", key), key
    options = [o for o in value(generated, "Mount", "Options").split(",") if o != "x-systemd.automount"]
    assert options == value(ours, "Mount", "Options").split(",")
    if path.suffix == ".automount":
        assert value(parse_unit(out[0] / path.name), "Automount", "Where") == value(ours, "Mount", "Where")
    ours = parse_unit(path)
    # Where the generator hooks the unit in is where [Install] puts it when enabled.
    hooked = {p.parent.name.split(".target.")[0] + ".target" for p in out[0].glob(f"*.target.*/{path.name}")}
    assert hooked == set(values(ours, "Install", "WantedBy")), f"generator: {hooked}"


def test_mount_unit_options_are_accepted_by_the_helper(tmp_path: Path):
    """mount.s3xfs -f (check everything, mount nothing) with each .mount unit's What= and Options=;
    Where= and the cache directory are moved into the test's directory."""
    helper = SCRIPTS / "mount.s3xfs"
    if not helper.exists():
        pytest.skip(f"{helper} is not installed")
    for path in UNIT_DIR.glob("*.mount"):
        unit = parse_unit(path)
        where = tmp_path / "mnt"
        where.mkdir(exist_ok=True)
        options = re.sub(r"(?<=cache=)[^,]+", str(tmp_path / "cache"), value(unit, "Mount", "Options"))
        result = subprocess.run([str(helper), value(unit, "Mount", "What"), str(where), "-f", "-v", "-o", options],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


# --- s3xfs@.service, run for real ----------------------------------------------------------------

class ServiceInstance:
    """s3xfs@INSTANCE.service's commands, from the unit file and the example EnvironmentFile."""

    def __init__(self, mountpoint: Path, server: LocalZone, tmp_path: Path) -> None:
        self.unit = parse_unit(TEMPLATE)
        self.mountpoint = mountpoint
        self.instance = escape_path(str(mountpoint))
        self.name = f"s3xfs@{self.instance}.service"
        conf = parse_environment_file(EXAMPLE_CONF)
        # What an administrator would put in /etc/s3xfs/INSTANCE.conf for this endpoint, with the
        # example's cache directory moved into the test's directory.
        conf["S3XFS_OPTIONS"] = (conf["S3XFS_OPTIONS"].replace("/var/cache/s3xfs", str(tmp_path / "cache"))
                                 + f" --endpoint-url {server.url} --region {REGION} --log-level INFO")
        conf.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        self.conf = conf
        # The environment systemd gives a system service (no HOME for root services without User=),
        # plus the EnvironmentFile, with the developer's own AWS configuration kept out.
        self.env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_CONFIG_FILE": "/nonexistent/s3xfs-tests/config",
                    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/s3xfs-tests/credentials", **conf}
        self.umask = int(value(self.unit, "Service", "UMask"), 8)

    def argv(self, key: str) -> list[tuple[list[str], bool]]:
        commands = []
        for line in values(self.unit, "Service", key):
            argv, ignore = command_line(line, self.instance, self.name, self.env)
            if Path(argv[0]).parent == PIP_BIN and Path(argv[0]).name in PROJECT_SCRIPTS:
                argv[0] = str(SCRIPTS / Path(argv[0]).name)
            commands.append((self.restricted(argv), ignore))
        return commands

    def restricted(self, argv: list[str]) -> list[str]:
        """The unit's NoNewPrivileges= and CapabilityBoundingSet=, applied by setpriv(1)."""
        caps = " ".join(values(self.unit, "Service", "CapabilityBoundingSet")).split()
        assert caps and not any(c.startswith("~") for c in caps), "expected an allow-list CapabilityBoundingSet="
        bounding = "-all," + ",".join("+" + c.lower().removeprefix("cap_") for c in caps)
        prefix = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all"]
        if value(self.unit, "Service", "NoNewPrivileges") == "yes":
            prefix.append("--no-new-privs")
        return [*prefix, *argv]

    def run(self, key: str) -> None:
        """Run ExecStartPre= or ExecStopPost= lines in order; a failure fails unless prefixed "-"."""
        for argv, ignore in self.argv(key):
            result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60,
                                    preexec_fn=lambda: os.umask(self.umask))
            assert ignore or result.returncode == 0, f"{key} {argv} failed: {result.stderr}"

    def start(self, notify: NotifySocket, log: Path) -> subprocess.Popen[bytes]:
        (argv, _), = self.argv("ExecStart")
        return subprocess.Popen(argv, env=dict(self.env, NOTIFY_SOCKET=str(notify.path)), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                preexec_fn=lambda: os.umask(self.umask))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="s3xfs@.service runs the daemon as root")


@pytest.fixture
def dataset(localzone_factory) -> LocalZone:
    """The endpoint, holding an object under the example's source."""
    source = parse_environment_file(EXAMPLE_CONF)["S3XFS_SOURCE"].removeprefix("s3://")
    bucket, _, prefix = source.partition("/")
    server = localzone_factory("--bucket", bucket)
    server.client().put_object(Bucket=bucket, Key=f"{prefix}hello.txt", Body=b"hello\n")
    return server


@pytest.fixture
def mountpoint(tmp_path: Path):
    """Not created: ExecStartPre must create it (and its parents)."""
    path = tmp_path / "srv" / "data set"
    try:
        yield path
    finally:
        force_unmount(path)


def test_instance_names_round_trip():
    assert escape_path("/mnt/dataset") == "mnt-dataset"
    assert unescape_path("mnt-dataset") == "/mnt/dataset"
    if SYSTEMD_ESCAPE:
        for path in ("/mnt/dataset", "/tmp/pytest-of-root/x/srv/data set", "/srv/a.b/-c"):
            tool = subprocess.run([SYSTEMD_ESCAPE, "--path", path], capture_output=True, text=True, check=True)
            assert escape_path(path) == tool.stdout.strip()
            assert unescape_path(escape_path(path)) == path


@pytest.mark.fuse
@needs_fuse
@needs_root
def test_service_ready_only_when_usable_then_stops_cleanly(dataset, mountpoint, tmp_path):
    service = ServiceInstance(mountpoint, dataset, tmp_path)
    log = tmp_path / "service.log"
    proc = None
    with NotifySocket(tmp_path / "notify.sock") as notify:
        try:
            service.run("ExecStartPre")
            assert mountpoint.is_dir() and not is_mounted(mountpoint)
            assert (mountpoint.parent.stat().st_mode & 0o777) == 0o755, "parents must stay traversable"
            proc = service.start(notify, log)
            deadline = time.monotonic() + 30
            while "READY=1" not in notify.messages:
                assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()}"
                assert time.monotonic() < deadline, f"no READY=1 in 30 s: {log.read_text()}"
                notify.receive(0.05)
            # READY=1 means usable: checked before anything else can happen.
            assert is_mounted(mountpoint)
            assert (mountpoint / "hello.txt").read_bytes() == b"hello\n"
            assert f"MAINPID={proc.pid}" in notify.messages
            assert any(m.startswith("STATUS=") for m in notify.messages)
            assert "STOPPING=1" not in notify.messages
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
            notify.receive(1.0)
            assert "STOPPING=1" in notify.messages
            assert not is_mounted(mountpoint)
            service.run("ExecStopPost")
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            force_unmount(mountpoint)


@pytest.mark.fuse
@needs_fuse
@needs_root
def test_dead_mount_is_cleared_and_a_live_one_left_alone(dataset, mountpoint, tmp_path):
    """ExecStartPre/ExecStopPost unmount what a killed daemon left, and nothing that still works."""
    service = ServiceInstance(mountpoint, dataset, tmp_path)
    mount = Mount(dataset, parse_environment_file(EXAMPLE_CONF)["S3XFS_SOURCE"], mountpoint, "--read-only")
    try:
        mount.start()
        service.run("ExecStopPost")
        service.run("ExecStartPre")
        assert (mountpoint / "hello.txt").read_bytes() == b"hello\n", "a live mount was touched"
        assert mount.proc is not None
        mount.proc.kill()  # SIGKILL: the kernel keeps a dead mount
        mount.proc.wait(timeout=10)
        with pytest.raises(OSError) as dead:
            os.statvfs(mountpoint)  # never answered from a cache, unlike stat()
        assert dead.value.errno == errno.ENOTCONN  # what ExecStartPre looks for
        service.run("ExecStopPost")
        assert not is_mounted(mountpoint)
        mount.start()
        mount.proc.kill()
        mount.proc.wait(timeout=10)
        service.run("ExecStartPre")
        assert not is_mounted(mountpoint) and mountpoint.is_dir()
    finally:
        mount.stop()
