"""A throwaway Debian root for the package test: made with debootstrap, cubed's .deb
installed into it with apt, and the installed service run from it with chroot.

Run as root. What is slow is cached under ``build/package-test/`` (git-ignored): the
debootstrap tree as a tarball (``bookworm-minbase.tar``, made once: about 40 s) and the
Debian packages apt downloaded (``apt-archives/``). Each run extracts the tarball anew into
``build/package-test/root`` (removed first), so every run installs into a clean system.

The root shares the host's network and nothing else is mounted into it, so a crashed run
leaves only files behind (removed with ``rm -rf --one-file-system``).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
STATE = REPO / "build" / "package-test"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: Installed on top of minbase: a Debian server as cubed.service meets it (systemd's units for
#: systemd-analyze --root, /bin/kill of ExecReload).
BASE_PACKAGES = ("systemd", "procps")
BASE_TARBALL = STATE / f"{SUITE}-minbase-{'-'.join(BASE_PACKAGES)}.tar"
#: The environment of commands run in the root (as dpkg and apt run them non-interactively).
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}


class CommandFailed(AssertionError):
    """A command exited non-zero; the message holds its command line and output."""


def run(argv: list[str], timeout: float = 600, env: dict[str, str] | None = None,
        check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; return the finished process (stdout and stderr as text). With ``check``,
    a non-zero exit raises CommandFailed showing the tail of both streams."""
    process = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
                             stdin=subprocess.DEVNULL)
    if check and process.returncode != 0:
        raise CommandFailed(f"{shlex.join(argv)} exited with {process.returncode}\n"
                            f"--- stdout ---\n{process.stdout[-4000:]}\n--- stderr ---\n{process.stderr[-4000:]}")
    return process


def build_deb() -> Path:
    """Return the path of cubed's .deb for the checkout's current sources (built by
    tests/package/build-deb, or taken from its cache)."""
    process = run([str(REPO / "tests" / "package" / "build-deb")], timeout=1800)
    return Path(process.stdout.strip().splitlines()[-1])


def remove_tree(path: Path) -> None:
    """Remove a root tree without ever leaving its file system."""
    if path.exists():
        run(["rm", "-rf", "--one-file-system", str(path)], timeout=300)


def base_tarball() -> tuple[Path, float]:
    """Return the cached debootstrap tarball, made now if absent, and the seconds making it
    took (0 when it was cached)."""
    if BASE_TARBALL.exists():
        return BASE_TARBALL, 0.0
    if shutil.which("debootstrap") is None:
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    STATE.mkdir(parents=True, exist_ok=True)
    tree = STATE / "debootstrap"
    remove_tree(tree)
    started = time.monotonic()
    run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(tree), MIRROR],
        timeout=1200)
    partial = BASE_TARBALL.with_suffix(".partial")
    run(["tar", "-C", str(tree), "--numeric-owner", "-cf", str(partial), "."], timeout=600)
    partial.rename(BASE_TARBALL)
    remove_tree(tree)
    return BASE_TARBALL, time.monotonic() - started


@dataclass
class DebianRoot:
    """A Debian root directory on the host, and commands run inside it with chroot."""

    path: Path
    #: Whether apt's package lists were fetched in this root by this object.
    updated: bool = False

    @classmethod
    def fresh(cls, name: str = "root") -> "DebianRoot":
        """Return a new root extracted from the debootstrap tarball (made first if absent)."""
        tarball, _ = base_tarball()
        path = STATE / name
        remove_tree(path)
        path.mkdir(parents=True)
        run(["tar", "-C", str(path), "--numeric-owner", "-xf", str(tarball)], timeout=600)
        root = cls(path)
        # apt inside the root resolves the mirror with the host's resolver.
        shutil.copyfile("/etc/resolv.conf", root.host("/etc/resolv.conf"))
        # No daemon may start from a maintainer script in a chroot.
        policy = root.host("/usr/sbin/policy-rc.d")
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        return root

    def copy(self, name: str) -> "DebianRoot":
        """Return a copy of this root under another name (for tests that change the system)."""
        path = STATE / name
        remove_tree(path)
        run(["cp", "-a", "--one-file-system", str(self.path), str(path)], timeout=600)
        return DebianRoot(path)

    def remove(self) -> None:
        """Delete the root."""
        remove_tree(self.path)

    def host(self, path: str) -> Path:
        """Return the host path of ``path`` inside the root."""
        return self.path / path.lstrip("/")

    def chroot(self, *argv: str, user: str | None = None, env: dict[str, str] | None = None,
               check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the root (as ``user``, default root) with CHROOT_ENV + ``env``."""
        return run(self.chroot_argv(list(argv), user), timeout=timeout, env={**CHROOT_ENV, **(env or {})},
                   check=check)

    def chroot_argv(self, argv: list[str], user: str | None = None, cwd: str | None = None) -> list[str]:
        """Return the host command line running ``argv`` in the root, as ``user`` (numeric ids
        from the root's own passwd and group files), in ``cwd`` (else /)."""
        prefix = ["chroot"]
        if user is not None:
            uid, gid = self.ids(user)
            prefix += [f"--userspec={uid}:{gid}", f"--groups={gid}"]
        prefix.append(str(self.path))
        if cwd is not None:
            # sh execs the command: it keeps the process id (signals reach it directly).
            return [*prefix, "/bin/sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]
        return [*prefix, *argv]

    def ids(self, user: str) -> tuple[int, int]:
        """Return (uid, gid) of ``user`` in the root's /etc/passwd."""
        for line in self.host("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise KeyError(f"no user {user} in {self.path}/etc/passwd")

    def install(self, deb: Path, *dpkg_options: str) -> subprocess.CompletedProcess[str]:
        """Install ``deb`` with apt (dependencies from the mirror), reusing and refilling the
        host-side cache of downloaded packages. Extra options go to dpkg (``--force-confold``)."""
        archives = STATE / "apt-archives"
        archives.mkdir(parents=True, exist_ok=True)
        inside = self.host("/var/cache/apt/archives")
        for cached in archives.glob("*.deb"):
            if not (inside / cached.name).exists():
                shutil.copy2(cached, inside / cached.name)
        shutil.copyfile(deb, self.host(f"/tmp/{deb.name}"))
        if not self.updated:
            self.chroot("apt-get", "update", "-q")
            self.updated = True
        options = [f"-o=Dpkg::Options::={option}" for option in dpkg_options]
        process = self.chroot("apt-get", "install", "-y", "-q", "--no-install-recommends", *options,
                              f"/tmp/{deb.name}", timeout=900)
        for downloaded in inside.glob("*.deb"):
            if not (archives / downloaded.name).exists():
                shutil.copy2(downloaded, archives / downloaded.name)
        return process


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Return a unit file as {section: {key: [values in order]}} (comments dropped,
    continuation lines joined)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_environment_file(path: Path) -> dict[str, str]:
    """Return the variables of a systemd EnvironmentFile (KEY=VALUE lines; ``#`` and ``;``
    comment lines; a value may be in single or double quotes)."""
    result: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        result[key.strip()] = value
    return result
