#!/usr/bin/env python3
"""ferry side by side with its peers, in one run, against one moto_server.

    /opt/ferry-venv/bin/python bench/run.py [--size-mb N] [--quick] [--only ferry,s3fs,rclone,s3backer,null]
                                            [--workloads randwrite,smallfiles,...]

Runs as root (FUSE, loop mounts, drop_caches). Starts a moto_server on a free
loopback port, measures the ceilings (a raw boto3 probe of the endpoint and
the local disk), then runs the same fio / small-file workloads on ferry,
s3fs-fuse, rclone mount (--vfs-cache-mode full) and s3backer+ext4 -- and on
bench/nullfs.py, an in-memory pyfuse3 filesystem with ferry's FUSE options (the
ceiling of the binding, not a peer) -- prints one table and writes it to
bench/RESULTS.md. Every mount and process it starts is
removed when it ends, also on failure or Ctrl-C. See bench/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
MiB = 1 << 20
SYSTEMS = ("ferry", "ferry-enc", "ferry-block", "s3fs", "rclone", "s3backer", "null")
PEERS = ("s3fs", "rclone", "s3backer")
# "null" is bench/nullfs.py: an in-memory pyfuse3 filesystem with ferry's mount options, the ceiling of
# the Python FUSE binding itself. It is not a peer: it never counts as "best peer".
LABELS = {"null": "pyfuse3 null", "ferry-block": "ferry block (ext4)", "ferry-enc": "ferry encrypted (AES-GCM)"}
ACCESS_KEY = "bench"
SECRET_KEY = "bench-secret"
REGION = "us-east-1"
RAND_FILE_MB = 64


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- results
@dataclass
class Fail:
    kind: str      # fail | timeout | n/a | skipped
    reason: str

    def __str__(self) -> str:
        return self.kind


class BenchError(Exception):
    kind = "fail"


class BenchTimeout(BenchError):
    kind = "timeout"


class NotApplicable(BenchError):
    kind = "n/a"


def num(v) -> float | None:
    return v if isinstance(v, (int, float)) else None


# ----------------------------------------------------------------------------- process & mount bookkeeping
class Tracker:
    """Everything the harness started, so that it can always be torn down."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.root: Path | None = None
        self.mounted_fusectl = False
        self.cleaning = False

    def track(self, p: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(p)
        return p

    def untrack(self, p: subprocess.Popen) -> None:
        if p in self.procs and p.poll() is not None:
            self.procs.remove(p)


T = Tracker()
ENV: dict[str, str] = {}


def clean_env() -> dict[str, str]:
    """The environment for every child: loopback only, our credentials, nothing from the user's AWS setup.

    AWS_CA_BUNDLE in particular makes rclone refuse to start ("LoadCustomCABundleError")."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("AWS_", "RCLONE_")) and k.lower() not in
           ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy")}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION,
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost")
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    if "/sbin" not in env["PATH"]:
        env["PATH"] += ":/usr/sbin:/sbin"
    return env


def killpg(p: subprocess.Popen, sig=signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def run_cmd(argv: list[str], timeout: float, env: dict | None = None, check: bool = True,
            what: str | None = None) -> subprocess.CompletedProcess:
    """Run a command in its own session with a hard timeout (the whole process group is killed)."""
    p = T.track(subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=env or ENV, text=True, errors="replace",
                                 start_new_session=True))
    what = what or Path(str(argv[0])).name
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        killpg(p)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.communicate(timeout=5)
        raise BenchTimeout(f"{what} did not finish within {timeout:.0f}s") from None
    except BaseException:
        killpg(p)
        raise
    finally:
        T.untrack(p)
    if check and p.returncode != 0:
        tail = (err.strip() or out.strip()).splitlines()[-6:]
        raise BenchError(f"{what} exited with {p.returncode}: {' | '.join(tail) or '(no output)'}")
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def start_daemon(argv: list[str], logfile: Path, env: dict | None = None) -> subprocess.Popen:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as lf:
        p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                             env=env or ENV, start_new_session=True)
    return T.track(p)


def stop_proc(p: subprocess.Popen | None, grace: float = 10.0) -> None:
    if p is None:
        return
    if p.poll() is None:
        killpg(p, signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            killpg(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
    T.untrack(p)


def log_tail(path: Path, n: int = 6) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(line.strip()[:200] for line in lines[-n:])


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mount_table() -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, major:minor) from /proc/self/mountinfo; never stats a (possibly hung) mount."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            try:
                sep = parts.index("-")
            except ValueError:
                continue
            out.append((_unescape(parts[4]), parts[sep + 1], parts[2]))
    return out


def is_mounted(path: Path) -> bool:
    target = os.path.abspath(path)
    return any(mp == target for mp, _, _ in mount_table())


def fuse_abort(path: Path) -> None:
    """Abort a FUSE connection: every pending and future request fails, so nothing can hang on it."""
    target = os.path.abspath(path)
    for mp, fstype, devno in mount_table():
        if mp != target or not fstype.startswith("fuse"):
            continue
        conn = Path("/sys/fs/fuse/connections")
        if not any(m == str(conn) for m, _, _ in mount_table()):
            r = subprocess.run(["mount", "-t", "fusectl", "fusectl", str(conn)], capture_output=True, timeout=10)
            if r.returncode == 0:
                T.mounted_fusectl = True
        try:
            (conn / devno.split(":")[1] / "abort").write_text("1")
            log(f"aborted FUSE connection of {target}")
        except OSError as e:
            log(f"could not abort FUSE connection of {target}: {e}")


def force_unmount(path: Path) -> None:
    """Unmount whatever it takes: normal unmount, then abort FUSE + lazy unmount."""
    if not is_mounted(path):
        return
    for argv in (["umount", path], ["fusermount3", "-u", path]):
        try:
            if subprocess.run([str(a) for a in argv], capture_output=True, timeout=10, env=ENV).returncode == 0:
                return
        except subprocess.TimeoutExpired:
            break
    fuse_abort(path)
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10, env=ENV)
    if is_mounted(path):
        log(f"WARNING: {path} is still mounted")


def wait_mounted(path: Path, timeout: float, proc: subprocess.Popen | None = None, logfile: Path | None = None,
                 what: str = "mount") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(path):
            return
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before mounting"
                             + (f": {log_tail(logfile)}" if logfile else ""))
        time.sleep(0.05)
    raise BenchTimeout(f"{what}: {path} not mounted after {timeout:.0f}s"
                       + (f": {log_tail(logfile)}" if logfile else ""))


def pids_with_arg(fragment: str) -> list[int]:
    """Processes whose command line mentions `fragment` (a path inside our own temp dir: only ours)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        f = fragment.encode()
        if any(a == f or f + b"/" in a for a in args):
            found.append(int(d.name))
    return found


def kill_pids(pids: list[int], grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in alive):
            time.sleep(0.1)
        pids = [p for p in alive if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def drop_caches() -> None:
    run_cmd(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], timeout=60, what="drop_caches")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- fio
def fio(name: str, filename: Path, rw: str, bs: str, size_mb: int, timeout: float, *, runtime: float | None = None,
        end_fsync: bool = False, fdatasync: bool = False, invalidate: bool = True) -> dict:
    argv = ["fio", f"--name={name}", f"--filename={filename}", f"--rw={rw}", f"--bs={bs}", f"--size={size_mb}M",
            "--ioengine=psync", "--direct=0", "--numjobs=1", "--fallocate=none", f"--invalidate={int(invalidate)}",
            "--output-format=json"]
    if end_fsync:
        argv.append("--end_fsync=1")
    if fdatasync:
        argv.append("--fdatasync=1")
    if runtime:
        argv += ["--time_based", f"--runtime={int(runtime)}"]
    r = run_cmd(argv, timeout=timeout, check=False, what=f"fio {name}")
    out = r.stdout
    try:
        data = json.loads(out[out.index("{"):])
        job = data["jobs"][0]
    except (ValueError, KeyError, IndexError):
        raise BenchError(f"fio {name} exited with {r.returncode}: "
                         f"{' | '.join((r.stderr.strip() or out.strip()).splitlines()[-4:])}") from None
    if job.get("error") or r.returncode != 0:
        raise BenchError(f"fio {name}: error {job.get('error')} (rc {r.returncode}): "
                         f"{' | '.join(r.stderr.strip().splitlines()[-3:])}")
    d = job["write" if "write" in rw else "read"]
    if d.get("io_bytes", 0) == 0:
        raise BenchError(f"fio {name}: no I/O done")
    return {"mibps": d["bw_bytes"] / MiB, "iops": d["iops"], "runtime_ms": d["runtime"], "io_bytes": d["io_bytes"]}


# ----------------------------------------------------------------------------- small files worker
def smallfiles_worker(directory: str, n: int, cap: float, stats_pid: int = 0, stats_file: str = "") -> None:
    """Runs in a child process (so a hung mount can be killed): create/stat/read/delete n 4 KiB files.

    With stats_pid/stats_file (bench/nullfs.py), the daemon's request counters are read after each
    phase (outside the timed part): res["requests"][phase] = counts at the end of that phase."""
    d = Path(directory)
    d.mkdir()
    payload = os.urandom(4096)
    names = [str(d / f"f{i:05d}") for i in range(n)]
    res = {}

    def counters(tag):
        if not stats_pid:
            return
        sf = Path(stats_file)
        sf.unlink(missing_ok=True)
        os.kill(stats_pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                res.setdefault("requests", {})[tag] = json.loads(sf.read_text())
                return
            except (OSError, ValueError):
                time.sleep(0.01)

    def phase(key, fn, items):
        t0 = time.perf_counter()
        done = 0
        for nm in items:
            fn(nm)
            done += 1
            if done % 50 == 0 and time.perf_counter() - t0 > cap:
                break
        res[key] = [done, time.perf_counter() - t0, len(items)]
        counters(key)
        return items[:done]

    def create(nm):
        with open(nm, "wb") as f:
            f.write(payload)

    def read(nm):
        with open(nm, "rb") as f:
            if len(f.read()) != 4096:
                raise OSError(f"{nm}: short read")

    counters("start")
    made = phase("create", create, names)
    phase("stat", os.stat, made)
    phase("read", read, made)
    phase("delete", os.unlink, made)
    try:
        for left in os.listdir(d):
            os.unlink(d / left)
        d.rmdir()
    except OSError:
        pass
    print(json.dumps(res))


# ----------------------------------------------------------------------------- systems
class System:
    name = "?"
    fuse = True
    workloads: set[str] | None = None    # the workload keys that make sense for it (None: all)

    def __init__(self, h: Harness):
        self.h = h
        self.dir = h.root / self.name
        self.mnt = self.dir / "mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.ncache = 0
        self.notes: list[str] = []
        self.bucket = f"bench-{self.name}"

    def new_cache_dir(self) -> Path:
        self.ncache += 1
        d = self.dir / f"cache{self.ncache}"
        d.mkdir(parents=True)
        return d

    # to override
    def setup(self) -> None: ...
    def mount(self, **kw) -> None: ...
    def unmount(self) -> None: ...
    def teardown(self) -> None: ...          # forced, never raises

    def after_write(self) -> float | None:
        """Wait until written data is in the store (systems that upload later); return seconds waited."""
        return None

    def remount_cold(self) -> None:
        t0 = time.monotonic()
        self.unmount()
        self.notes.append(f"unmount after the sequential write took {time.monotonic() - t0:.1f} s")
        self.mount()

    def alive(self) -> bool:
        return is_mounted(self.mnt)

    def recover(self) -> None:
        self.teardown()
        self.mount(recover=True)


class LocalDisk(System):
    name = "local"
    fuse = False

    def mount(self, **kw):
        pass

    def unmount(self):
        pass

    def teardown(self):
        pass

    def remount_cold(self):
        pass

    def alive(self):
        return True


class Ferry(System):
    name = "ferry"

    def __init__(self, h):
        super().__init__(h)
        self.ferry = shutil.which("ferry", path=ENV["PATH"]) or "ferry"
        self.url = f"s3://{self.bucket}?endpoint={h.endpoint}&region={REGION}"
        self.env = dict(ENV, FERRY_RUN_DIR=str(self.dir / "run"))
        self.cache: Path | None = None
        self.daemon: int | None = None
        self.options: list[str] = []

    def setup(self):
        run_cmd([self.ferry, "fs", "mkfs", "--store", self.url, "vol"], timeout=120, env=self.env, what="ferry fs mkfs")

    def mount(self, options: list[str] | None = None, recover: bool = False, **kw):
        if options is not None:
            self.options = options
        self.cache = self.new_cache_dir()
        argv = [self.ferry, "fs", "mount", "--store", self.url, "--cache-dir", self.cache, "vol", self.mnt]
        for o in self.options:
            argv += ["-o", o]
        if recover:
            argv.append("--takeover")
        try:
            r = run_cmd(argv, timeout=120, env=self.env, what="ferry fs mount")
        except BenchError as e:
            self._kill_daemons()
            force_unmount(self.mnt)
            tail = log_tail(self.cache / "fsd.log", 3)
            raise type(e)(f"{e}" + (f" [fsd.log: {tail}]" if tail and tail not in str(e) else "")) from None
        m = re.search(r"daemon pid (\d+)", r.stdout)
        self.daemon = int(m.group(1)) if m else None

    def _kill_daemons(self):
        if self.cache is not None:
            kill_pids(pids_with_arg(str(self.cache)))

    def unmount(self):
        try:
            run_cmd([self.ferry, "fs", "umount", self.mnt], timeout=120 + self.h.size_mb, env=self.env,
                    what="ferry fs umount")
        except BenchError:
            self.teardown()
            raise
        if self.daemon and _alive(self.daemon):
            kill_pids([self.daemon])

    def teardown(self):
        force_unmount(self.mnt)
        self._kill_daemons()

    def alive(self):
        return is_mounted(self.mnt) and (self.daemon is None or _alive(self.daemon))


class FerryEncrypted(Ferry):
    """ferry with -o encryption=aes-256-gcm (docs/encryption.md): what sealing every object costs."""
    name = "ferry-enc"

    def setup(self):
        key = self.dir / "volume.key"
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        self.env["FERRY_KEY_FILE"] = str(key)
        run_cmd([self.ferry, "fs", "mkfs", "--store", self.url, "-o", "encryption=aes-256-gcm", "vol"],
                timeout=120, env=self.env, what="ferry fs mkfs")


class FerryBlock(Ferry):
    """ferry's layout=block: ext4 on a loop device over the ferry image (docs/block.md)."""
    name = "ferry-block"
    fuse = False

    def setup(self):
        run_cmd([self.ferry, "fs", "mkfs", "--store", self.url, "-o", "layout=block", "-o", "size=16G", "vol"],
                timeout=120, env=self.env, what="ferry fs mkfs")

    def teardown(self):
        from fsd.block.stack import cleanup_dead, fuse_mountpoint
        if self.cache is not None:
            cleanup_dead(self.mnt, fuse_mountpoint(self.cache))
        force_unmount(self.mnt)
        self._kill_daemons()


class S3fs(System):
    name = "s3fs"

    def __init__(self, h):
        super().__init__(h)
        self.passwd = self.dir / "passwd"
        self.passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        self.passwd.chmod(0o600)
        self.proc: subprocess.Popen | None = None
        self.cache: Path | None = None

    def mount(self, **kw):
        self.cache = self.new_cache_dir()
        logf = self.dir / "s3fs.log"
        self.proc = start_daemon(["s3fs", self.bucket, self.mnt, "-f",
                                  "-o", f"url={self.h.endpoint}", "-o", "use_path_request_style",
                                  "-o", f"passwd_file={self.passwd}", "-o", f"use_cache={self.cache}",
                                  "-o", "enable_noobj_cache", "-o", "dbglevel=warn"], logf)
        try:
            wait_mounted(self.mnt, 60, self.proc, logf, "s3fs")
        except BenchError:
            self.teardown()
            raise

    def unmount(self):
        _fuse_unmount(self.mnt)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.teardown()
            raise BenchTimeout("s3fs did not exit within 120 s of unmount") from None
        T.untrack(self.proc)
        if self.cache:
            shutil.rmtree(self.cache, ignore_errors=True)   # its local cache: gone before the cold read

    def teardown(self):
        force_unmount(self.mnt)
        stop_proc(self.proc)

    def alive(self):
        return is_mounted(self.mnt) and self.proc is not None and self.proc.poll() is None


class Rclone(System):
    name = "rclone"

    def __init__(self, h):
        super().__init__(h)
        self.conf = self.dir / "rclone.conf"
        self.conf.write_text("")
        self.env = dict(ENV, RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                        RCLONE_CONFIG_BENCH_ENDPOINT=h.endpoint, RCLONE_CONFIG_BENCH_REGION=REGION,
                        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=ACCESS_KEY,
                        RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=SECRET_KEY,
                        # after a multipart upload rclone HEADs "?versionId=null", which moto rejects (400)
                        RCLONE_CONFIG_BENCH_NO_HEAD="true")
        self.upload_stuck = False
        self.proc: subprocess.Popen | None = None
        self.rc_port = 0

    def mount(self, **kw):
        cache = self.new_cache_dir()
        self.upload_stuck = False
        logf = self.dir / "rclone.log"
        self.rc_port = free_port()
        self.proc = start_daemon(["rclone", "mount", f"bench:{self.bucket}", self.mnt, "--config", self.conf,
                                  "--vfs-cache-mode", "full", "--cache-dir", cache,
                                  "--rc", "--rc-addr", f"127.0.0.1:{self.rc_port}", "--rc-no-auth",
                                  "--log-level", "INFO", "--log-file", logf], logf, env=self.env)
        try:
            wait_mounted(self.mnt, 60, self.proc, logf, "rclone mount")
        except BenchError:
            self.teardown()
            raise

    def _stats(self) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.rc_port}/vfs/stats", data=b"{}",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)["diskCache"]

    def after_write(self, timeout: float | None = None) -> float:
        """rclone uploads a file --vfs-write-back (5 s) after its last close: wait for the queue to drain."""
        timeout = timeout or (90 + self.h.size_mb * 0.5) * self.h.args.timeout_scale
        t0 = time.monotonic()
        while True:
            try:
                st = self._stats()
                if st["uploadsInProgress"] + st["uploadsQueued"] == 0:
                    return time.monotonic() - t0
            except (OSError, ValueError, KeyError):
                if self.proc.poll() is not None:
                    raise BenchError(f"rclone exited: {log_tail(self.dir / 'rclone.log')}") from None
            if time.monotonic() - t0 > timeout:
                self.upload_stuck = True
                err = [line for line in log_tail(self.dir / "rclone.log", 40).split(" | ") if "ERROR" in line][-1:]
                raise BenchTimeout(f"rclone's upload queue not empty after {timeout:.0f}s"
                                   + (f" ({err[0][:200]})" if err else ""))
            time.sleep(0.1)

    def unmount(self):
        if self.proc is not None and self.proc.poll() is None and is_mounted(self.mnt) and not self.upload_stuck:
            self.after_write()
        _fuse_unmount(self.mnt)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.teardown()
            raise BenchTimeout("rclone did not exit within 60 s of unmount") from None
        T.untrack(self.proc)

    def teardown(self):
        force_unmount(self.mnt)
        stop_proc(self.proc)

    def alive(self):
        return is_mounted(self.mnt) and self.proc is not None and self.proc.poll() is None


class S3backer(System):
    name = "s3backer"

    def __init__(self, h):
        super().__init__(h)
        self.sbdir = self.dir / "blockdev"
        self.sbdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        # room for the sequential file, the random file, small files, ext4's journal and metadata
        need = h.size_mb + RAND_FILE_MB + 256
        self.size_mb = max(1024, -(-int(need * 1.15) // 1024) * 1024)

    def _argv(self, *extra):
        return ["s3backer", f"--baseURL={self.h.endpoint}/", f"--accessId={ACCESS_KEY}",
                f"--accessKey={SECRET_KEY}", f"--size={self.size_mb}M", "--blockSize=1M", "--timeout=30",
                *extra]

    def _start(self):
        logf = self.dir / "s3backer.log"
        self.proc = start_daemon(self._argv("-f", self.bucket, self.sbdir), logf)
        try:
            wait_mounted(self.sbdir, 60, self.proc, logf, "s3backer")
        except BenchError as e:
            force_unmount(self.sbdir)
            stop_proc(self.proc)
            if "mounted" in str(e).lower():   # a previous unclean exit left its 'mounted' flag
                run_cmd(self._argv("--reset-mounted-flag", self.bucket), timeout=60, what="s3backer reset")
                self.proc = start_daemon(self._argv("-f", self.bucket, self.sbdir), logf)
                wait_mounted(self.sbdir, 60, self.proc, logf, "s3backer")
            else:
                raise

    def setup(self):
        self._start()
        try:
            run_cmd(["mkfs.ext4", "-F", "-q", "-m", "0", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                     self.sbdir / "file"], timeout=300, what="mkfs.ext4")
        finally:
            self._stop_s3backer()

    def mount(self, **kw):
        self._start()
        try:
            run_cmd(["mount", "-o", "loop", self.sbdir / "file", self.mnt], timeout=60, what="mount -o loop")
        except BenchError:
            self.teardown()
            raise

    def _stop_s3backer(self):
        _fuse_unmount(self.sbdir)
        try:
            self.proc.wait(300)      # s3backer writes its dirty blocks back before it exits
        except subprocess.TimeoutExpired:
            self.teardown()
            raise BenchTimeout("s3backer did not exit within 300 s of unmount") from None
        T.untrack(self.proc)

    def unmount(self):
        run_cmd(["umount", self.mnt], timeout=300, what="umount ext4")
        self._detach_loops()
        self._stop_s3backer()

    def _detach_loops(self):
        backing = str(self.sbdir / "file")
        for bf in Path("/sys/block").glob("loop*/loop/backing_file"):
            try:
                if bf.read_text().strip().removesuffix(" (deleted)") == backing:
                    subprocess.run(["losetup", "-d", f"/dev/{bf.parent.parent.name}"], capture_output=True,
                                   timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def teardown(self):
        if is_mounted(self.mnt):
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(["umount", str(self.mnt)], capture_output=True, timeout=30)
        if is_mounted(self.mnt):
            fuse_abort(self.sbdir)   # makes the loop device's pending I/O fail instead of hang
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, timeout=10)
        self._detach_loops()
        force_unmount(self.sbdir)
        stop_proc(self.proc)

    def alive(self):
        return is_mounted(self.mnt) and self.proc is not None and self.proc.poll() is None


class NullFS(System):
    """bench/nullfs.py: ferry's FUSE options on an in-memory pyfuse3 filesystem (the binding's ceiling).

    Nothing is stored, so the workloads that need a store or survive a remount are not run."""
    name = "null"

    def __init__(self, h):
        super().__init__(h)
        self.workloads = {"warmread", "randwrite", "randread", *SF_KEYS}
        self.proc: subprocess.Popen | None = None
        self.stats = self.dir / "requests.json"

    def mount(self, **kw):
        logf = self.dir / "nullfs.log"
        self.proc = start_daemon([sys.executable, BENCH_DIR / "nullfs.py", self.mnt, "--stats", self.stats], logf)
        try:
            wait_mounted(self.mnt, 30, self.proc, logf, "nullfs")
        except BenchError:
            self.teardown()
            raise

    def unmount(self):
        _fuse_unmount(self.mnt)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.teardown()
            raise BenchTimeout("nullfs did not exit within 30 s of unmount") from None
        T.untrack(self.proc)

    def teardown(self):
        force_unmount(self.mnt)
        stop_proc(self.proc)

    def alive(self):
        return is_mounted(self.mnt) and self.proc is not None and self.proc.poll() is None


def _fuse_unmount(path: Path, tries: int = 20) -> None:
    """Clean FUSE unmount; retries while the mount is briefly busy."""
    err = ""
    for _ in range(tries):
        if not is_mounted(path):
            return
        try:
            r = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True, timeout=30, env=ENV)
        except subprocess.TimeoutExpired:
            raise BenchTimeout(f"fusermount3 -u {path} hung") from None
        if r.returncode == 0:
            return
        err = r.stderr.strip()
        time.sleep(0.5)
    raise BenchError(f"cannot unmount {path}: {err}")


# ----------------------------------------------------------------------------- workloads
WORKLOADS = [
    # key, label, unit
    ("seqwrite", "seq write 1 MiB + final fsync", "MiB/s"),
    ("coldread", "seq read 1 MiB, cold", "MiB/s"),
    ("warmread", "seq read 1 MiB, warm", "MiB/s"),
    ("randwrite", "4 KiB random write", "IOPS"),
    ("randwrite_sync", "4 KiB random write + fdatasync", "IOPS"),
    ("randwrite_sync_local", "4 KiB rand write + fdatasync, ferry durability=local", "IOPS"),
    ("randread", "4 KiB random read, warm", "IOPS"),
    ("sf_create", "small files: create 4 KiB", "ops/s"),
    ("sf_stat", "small files: stat", "ops/s"),
    ("sf_read", "small files: read", "ops/s"),
    ("sf_delete", "small files: delete", "ops/s"),
]
SF_KEYS = ("sf_create", "sf_stat", "sf_read", "sf_delete")
# --workloads names -> workload keys
WORKLOAD_GROUPS = {"seqwrite": ("seqwrite",), "coldread": ("coldread",), "warmread": ("warmread",),
                   "randwrite": ("randwrite",), "randwrite_sync": ("randwrite_sync", "randwrite_sync_local"),
                   "randread": ("randread",), "smallfiles": SF_KEYS}


class Harness:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.size_mb = args.size_mb or (64 if args.quick else 256)
        self.runtime = args.runtime or (5 if args.quick else 15)
        self.nfiles = args.files or (500 if args.quick else 10000)
        self.sf_cap = 10 if args.quick else 30
        # per-system budget: a system that keeps hitting timeouts cannot hold the run for hours
        self.budget = args.system_budget or (300 if args.quick else 600) * args.timeout_scale
        self.only = [s.strip() for s in args.only.split(",")] if args.only else list(SYSTEMS)
        bad = [s for s in self.only if s not in SYSTEMS]
        if bad:
            raise SystemExit(f"--only: unknown system(s) {', '.join(bad)}; known: {', '.join(SYSTEMS)}")
        groups = [w.strip() for w in args.workloads.split(",")] if args.workloads else list(WORKLOAD_GROUPS)
        bad = [w for w in groups if w not in WORKLOAD_GROUPS]
        if bad:
            raise SystemExit(f"--workloads: unknown workload(s) {', '.join(bad)}; known: {', '.join(WORKLOAD_GROUPS)}")
        self.workloads = {k for w in groups for k in WORKLOAD_GROUPS[w]}
        self.requests: dict[str, dict] = {}   # nullfs request counts per small-file phase
        self.root = Path(tempfile.mkdtemp(prefix="ferry-bench-", dir=args.workdir))
        T.root = self.root
        self.port = 0
        self.endpoint = ""
        self.moto: subprocess.Popen | None = None
        self.s3 = None
        self.probe: dict[str, float | Fail] = {}
        self.probe_rounds: dict[str, list[float]] = {}
        self.results: dict[str, dict[str, float | Fail]] = {}
        self.extra: dict[str, dict[str, str]] = {}
        self.notes: list[str] = []
        self.durations: dict[str, float] = {}
        self.started = datetime.datetime.now(datetime.UTC)

    # --------------------------------------------------------------- moto + probe
    def start_moto(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        moto = shutil.which("moto_server", path=ENV["PATH"])
        if not moto:
            raise SystemExit("moto_server not found (install moto[server] in the venv running this script)")
        self.moto = start_daemon([moto, "-H", "127.0.0.1", "-p", str(self.port)], self.root / "moto.log")
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                    break
            except OSError:
                if self.moto.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"moto_server did not start: {log_tail(self.root / 'moto.log')}") from None
                time.sleep(0.2)
        import boto3
        from botocore.config import Config
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                               aws_secret_access_key=SECRET_KEY, region_name=REGION,
                               config=Config(max_pool_connections=32, retries={"max_attempts": 2}))
        for name in ("probe",) + tuple(s for s in self.only if s != "null"):
            self.s3.create_bucket(Bucket=f"bench-{name}")
        log(f"moto_server on {self.endpoint} (pid {self.moto.pid})")

    def run_probe(self):
        s3, b = self.s3, "bench-probe"
        data = os.urandom(MiB)
        small = os.urandom(4096)
        n1 = 32 if self.quick else 64
        n8 = 2 * n1
        try:
            for i in range(4):   # warm-up: connections, moto's first-request costs
                s3.put_object(Bucket=b, Key=f"warm{i}", Body=data)
                s3.get_object(Bucket=b, Key=f"warm{i}")["Body"].read()
        except Exception as e:  # noqa: BLE001
            for k in ("put1", "get1", "put8", "get8", "smallput", "put8_ferry", "get8_ferry"):
                self.probe[k] = Fail("fail", f"{type(e).__name__}: {e}")
            log(f"probe failed: {e}")
            return

        def timed(fn, n, threads=1):
            t0 = time.perf_counter()
            if threads == 1:
                for i in range(n):
                    fn(i)
            else:
                with ThreadPoolExecutor(threads) as ex:
                    list(ex.map(fn, range(n)))
            return n / (time.perf_counter() - t0)

        def get(key):
            body = s3.get_object(Bucket=b, Key=key)["Body"].read()
            assert len(body) == MiB

        # ferry's own request path for data objects (fsd/store/s3data.py), the same 8 streams: shown
        # beside the boto3 ceiling, since ferry's data path costs the client less CPU than boto3 does.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        from fsd.store.s3store import S3Store
        from fsd.store.url import parse_store_url
        fs = S3Store(parse_store_url(f"s3://{b}?endpoint={self.endpoint}&region={REGION}"))
        tests = {
            "put1": lambda: timed(lambda i: s3.put_object(Bucket=b, Key=f"s{i}", Body=data), n1),
            "get1": lambda: timed(lambda i: get(f"s{i}"), n1),
            "put8": lambda: timed(lambda i: s3.put_object(Bucket=b, Key=f"p{i}", Body=data), n8, 8),
            "get8": lambda: timed(lambda i: get(f"p{i}"), n8, 8),
            "smallput": lambda: timed(lambda i: s3.put_object(Bucket=b, Key=f"k{i}", Body=small),
                                      200 if self.quick else 500),
            "put8_ferry": lambda: timed(lambda i: fs.put(f"f{i}", data), n8, 8),
            "get8_ferry": lambda: timed(lambda i: fs.get(f"f{i}"), n8, 8),
        }
        for _round in range(2):   # best of two rounds: a ceiling should not be lowered by noise
            for k, fn in tests.items():
                try:
                    v = fn()   # 1 MiB objects: objects/s == MiB/s
                    self.probe_rounds.setdefault(k, []).append(v)
                    self.probe[k] = max(v, num(self.probe.get(k)) or 0.0)
                except Exception as e:  # noqa: BLE001 - report, never abort the run
                    if num(self.probe.get(k)) is None:
                        self.probe[k] = Fail("fail", f"{type(e).__name__}: {e}")
        fs.close()
        try:   # free moto's memory
            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b)
                    for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
        except Exception:  # noqa: BLE001
            pass
        log("probe: " + ", ".join(f"{k}={fmt(v)}" for k, v in self.probe.items()))

    # --------------------------------------------------------------- one system
    def run_system(self, sysobj: System, ferry_local: bool = False):
        name = sysobj.name
        res: dict[str, float | Fail] = {}
        self.results[name] = res
        t_start = time.monotonic()
        mnt = sysobj.mnt
        S = self.size_mb
        tscale = self.args.timeout_scale
        t_big = (60 + S * 1.0) * tscale
        t_timed = self.runtime + (60 + RAND_FILE_MB * 1.0) * tscale
        state = {"broken": None}

        def fail_rest(reason: str, kind: str = "fail"):
            for key, _, _ in WORKLOADS:
                if key not in self.workloads or (sysobj.workloads is not None and key not in sysobj.workloads):
                    continue
                if key not in res and (key != "randwrite_sync_local" or ferry_local):
                    res[key] = Fail(kind, reason)

        def cell(keys, fn):
            keys = (keys,) if isinstance(keys, str) else keys
            if not any(k in self.workloads and (sysobj.workloads is None or k in sysobj.workloads) for k in keys):
                return None    # not selected (--workloads) or meaningless for this system: the cell stays "—"
            if not state["broken"] and time.monotonic() - t_start > self.budget:
                state["broken"] = f"not run: {name} used up its time budget ({self.budget:.0f} s)"
            if state["broken"]:
                for k in keys:
                    res[k] = Fail("skipped", state["broken"])
                return None
            t0 = time.monotonic()
            try:
                out = fn()
                if not isinstance(out, dict):
                    out = {keys[0]: out}
                res.update(out)
                log(f"{name}: " + ", ".join(f"{k}={fmt(v)}" for k, v in out.items()) +
                    f"  ({time.monotonic() - t0:.0f} s)")
                ok = True
            except BenchError as e:
                for k in keys:
                    res[k] = Fail(e.kind, str(e))
                log(f"{name}: {'/'.join(keys)}: {e.kind}: {e}")
                ok = False
            except Exception as e:  # noqa: BLE001 - a harness bug in one cell must not end the run
                for k in keys:
                    res[k] = Fail("fail", f"{type(e).__name__}: {e}")
                log(f"{name}: {'/'.join(keys)}: harness error: {traceback.format_exc()}")
                ok = False
            if (not ok and not sysobj.alive()) or any(isinstance(res[k], Fail) and res[k].kind == "timeout"
                                                    for k in keys):
                log(f"{name}: mount not healthy after {'/'.join(keys)}; remounting")
                try:
                    sysobj.recover()
                except Exception as e:  # noqa: BLE001
                    state["broken"] = f"not run: {name} could not be remounted after an earlier failure ({e})"
                    sysobj.teardown()
            return ok

        log(f"=== {name} ===")
        try:
            sysobj.setup()
            sysobj.mount()
        except BenchError as e:
            fail_rest(f"{name} did not set up / mount: {e}", e.kind)
            sysobj.teardown()
            log(f"{name}: {e.kind}: {e}")
            return
        except Exception as e:  # noqa: BLE001
            fail_rest(f"{name} did not set up / mount: {type(e).__name__}: {e}")
            sysobj.teardown()
            return

        seq, rand = mnt / "seq.dat", mnt / "rand.dat"

        def w_seqwrite():
            r = fio("seqwrite", seq, "write", "1M", S, t_big, end_fsync=True)
            try:
                waited = sysobj.after_write()
            except BenchError as e:
                self.extra.setdefault(name, {})["seqwrite"] = f"not in store: {e.kind}"
                sysobj.notes.append(f"the sequential write never reached the store: {e}")
                return r["mibps"]
            if waited is not None and waited > 0.05:
                eff = S / (r["runtime_ms"] / 1000 + waited)
                sysobj.notes.append(f"fsync does not upload: the data reached the store {waited:.1f} s after fio "
                                    f"ended, i.e. {fmt(eff)} MiB/s write-to-store")
                self.extra.setdefault(name, {})["seqwrite"] = f"{fmt(eff)} to store"
            return r["mibps"]

        def check_size(path, size):
            r = run_cmd(["stat", "-c", "%s", path], timeout=60, check=False, what="stat")
            if r.returncode != 0 or int(r.stdout.strip() or -1) != size:
                raise BenchError(f"{path.name} is missing or has the wrong size "
                                 f"({r.stdout.strip() or r.stderr.strip()})")

        def ensure_seq():
            """The sequential file: written by the seqwrite row, or laid out here (untimed) if that row is not run."""
            if isinstance(res.get("seqwrite"), Fail):
                raise BenchError("no file: the sequential write failed")
            if "seqwrite" not in res:
                fio("layout-seq", seq, "write", "1M", S, t_big, end_fsync=True)

        def ensure_rand():
            if "randwrite" not in res:    # not run; if it failed, check_size() says why
                fio("layout", rand, "write", "1M", RAND_FILE_MB, t_big, end_fsync=True)

        def w_coldread():
            ensure_seq()
            sysobj.remount_cold()
            drop_caches()
            check_size(seq, S * MiB)
            return fio("coldread", seq, "read", "1M", S, t_big)["mibps"]

        def w_warmread():
            if isinstance(res.get("coldread"), Fail):
                raise BenchError("the cold read failed")
            if "coldread" not in res:    # not run (nullfs, --workloads): one untimed full read instead
                ensure_seq()
                fio("preread-seq", seq, "read", "1M", S, t_big, invalidate=False)
            return fio("warmread", seq, "read", "1M", S, t_big, invalidate=False)["mibps"]

        def w_randwrite():
            # lay the file out first (untimed), in 1 MiB writes, so fio does not do it 4 KiB at a time
            fio("layout", rand, "write", "1M", RAND_FILE_MB, t_big, end_fsync=True)
            return fio("randwrite", rand, "randwrite", "4k", RAND_FILE_MB, t_timed, runtime=self.runtime)["iops"]

        def w_randwrite_sync():
            ensure_rand()
            check_size(rand, RAND_FILE_MB * MiB)
            return fio("randwrite_sync", rand, "randwrite", "4k", RAND_FILE_MB, t_timed, runtime=self.runtime,
                       fdatasync=True)["iops"]

        def w_randread():
            ensure_rand()
            check_size(rand, RAND_FILE_MB * MiB)
            fio("preread", rand, "read", "1M", RAND_FILE_MB, t_big, invalidate=False)
            return fio("randread", rand, "randread", "4k", RAND_FILE_MB, t_timed, runtime=self.runtime,
                       invalidate=False)["iops"]

        def w_smallfiles():
            cap = self.sf_cap
            counting = [sysobj.proc.pid, sysobj.stats] if isinstance(sysobj, NullFS) else []
            r = run_cmd([sys.executable, str(Path(__file__).resolve()), "--_smallfiles",
                         mnt / f"small-{time.strftime('%H%M%S')}",
                         self.nfiles, cap, *counting], timeout=4 * cap + 120 * self.args.timeout_scale,
                         what="small-files loop")
            try:
                data = json.loads(r.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise BenchError(f"small-files loop printed no result: {r.stderr.strip()[-300:]}") from None
            out = {}
            if data.get("requests"):
                self.requests[name] = data["requests"]
                sysobj.notes.append(requests_note(data))
            for phase in ("create", "stat", "read", "delete"):
                n, secs, todo = data[phase]
                out[f"sf_{phase}"] = n / secs if secs > 0 else Fail("fail", "no time measured")
                if n < todo:
                    sysobj.notes.append(f"small files, {phase}: stopped after {cap:.0f} s ({n}/{todo} files done; "
                                        f"the rate is over those)")
            return out

        try:
            cell("seqwrite", w_seqwrite)
            cell("coldread", w_coldread)
            cell("warmread", w_warmread)
            cell("randwrite", w_randwrite)
            cell("randwrite_sync", w_randwrite_sync)
            cell("randread", w_randread)
            cell(SF_KEYS, w_smallfiles)
            if ferry_local:
                if state["broken"]:
                    res["randwrite_sync_local"] = Fail("skipped", state["broken"])
                else:
                    self._ferry_local(sysobj, res, t_big, t_timed)
        finally:
            try:
                if sys.exc_info()[0] is not None:
                    sysobj.teardown()     # interrupted: no slow clean unmount
                elif sysobj.alive():
                    sysobj.unmount()
            except Exception as e:  # noqa: BLE001
                sysobj.notes.append(f"final unmount failed: {e}")
            sysobj.teardown()
            self.durations[name] = time.monotonic() - t_start
            log(f"{name}: done in {self.durations[name]:.0f} s")

    def _ferry_local(self, sysobj: Ferry, res, t_big, t_timed):
        rand = sysobj.mnt / "rand.dat"
        try:
            sysobj.unmount()
        except BenchError as e:
            res["randwrite_sync_local"] = Fail(e.kind, f"unmount before the durability=local mount: {e}")
            return
        try:
            sysobj.mount(options=["durability=local"])
        except BenchError as e:
            msg = str(e)
            kind = "n/a" if re.search(r"durability|unknown|option", msg, re.I) else e.kind
            res["randwrite_sync_local"] = Fail(kind, f"-o durability=local refused: {msg}")
            sysobj.options = []
            return
        try:
            if isinstance(res.get("randwrite"), Fail):
                fio("layout", rand, "write", "1M", RAND_FILE_MB, t_big, end_fsync=True)
            fio("preread", rand, "read", "1M", RAND_FILE_MB, t_big)   # same warm state as the remote run
            v = fio("randwrite_sync_local", rand, "randwrite", "4k", RAND_FILE_MB, t_timed, runtime=self.runtime,
                    fdatasync=True)["iops"]
            res["randwrite_sync_local"] = v
            log(f"{sysobj.name}: randwrite_sync_local={fmt(v)}")
        except BenchError as e:
            res["randwrite_sync_local"] = Fail(e.kind, str(e))
            log(f"{sysobj.name}: randwrite_sync_local: {e.kind}: {e}")
        finally:
            sysobj.options = []

    # --------------------------------------------------------------- main flow
    def run(self):
        self.start_moto()
        log(f"work dir {self.root}; size {self.size_mb} MiB, runtime {self.runtime} s, {self.nfiles} small files")
        if self.workloads & {"seqwrite", "coldread", "randwrite_sync"}:   # the rows whose ceiling is the store
            self.run_probe()
        self.run_system(LocalDisk(self))
        for name in SYSTEMS:
            if name not in self.only:
                continue
            cls = {"ferry": Ferry, "ferry-enc": FerryEncrypted, "ferry-block": FerryBlock, "s3fs": S3fs,
                   "rclone": Rclone, "s3backer": S3backer, "null": NullFS}[name]
            try:
                sysobj = cls(self)
            except Exception as e:  # noqa: BLE001
                self.results[name] = {k: Fail("fail", f"{type(e).__name__}: {e}") for k, _, _ in WORKLOADS}
                continue
            self.run_system(sysobj, ferry_local=(name in ("ferry", "ferry-enc", "ferry-block")
                                                 and "randwrite_sync_local" in self.workloads))
            self.notes += [f"{name}: {n}" for n in sysobj.notes]
        self.notes += self.data_path_notes()

    def data_path_notes(self) -> list[str]:
        """ferry's rows against the probe of ferry's own data path (not the boto3 ceiling of the table)."""
        out = []
        for key, probe, what in (("seqwrite", "put8_ferry", "PUT"), ("coldread", "get8_ferry", "GET")):
            ce, boto = num(self.probe.get(probe)), num(self.probe.get(probe.replace("_ferry", "")))
            if not ce or boto is None:
                continue
            row = [f"{name} {num(self.results[name].get(key)) / ce:.0%}" for name in ("ferry", "ferry-block")
                   if num(self.results.get(name, {}).get(key)) is not None]
            out.append(f"{what} x8 through ferry's data path (fsd/store/s3data.py): {fmt(ce)} MiB/s, "
                       f"{ce / boto:.2f}x the boto3 ceiling" + (f"; {key} as a share of it: {', '.join(row)}"
                                                                 if row else ""))
        return out

    def cleanup(self):
        """Unmount everything under our temp dir, stop every process we started, remove the temp dir."""
        T.cleaning = True
        root = str(self.root)
        # newest first (mountinfo is in mount order): ext4 on the loop device before s3backer's FUSE mount
        mine = [mp for mp, _, _ in reversed(mount_table()) if mp == root or mp.startswith(root + "/")]
        for mp in mine:
            log(f"cleanup: unmounting {mp}")
            force_unmount(Path(mp))
        for bf in Path("/sys/block").glob("loop*/loop/backing_file"):
            try:
                if bf.read_text().strip().startswith(root + "/"):
                    subprocess.run(["losetup", "-d", f"/dev/{bf.parent.parent.name}"], capture_output=True,
                                   timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for p in reversed(list(T.procs)):
            if p is not self.moto:
                stop_proc(p, grace=5)
        leftovers = pids_with_arg(root)   # e.g. ferry daemons (they start in their own session)
        if leftovers:
            log(f"cleanup: stopping leftover processes {leftovers}")
            kill_pids(leftovers)
        stop_proc(self.moto, grace=5)
        if T.mounted_fusectl:
            subprocess.run(["umount", "/sys/fs/fuse/connections"], capture_output=True, timeout=10)
        still = [mp for mp, _, _ in mount_table() if mp.startswith(root + "/")]
        if still:
            log(f"cleanup: NOT removing {root}: still mounted: {still}")
        elif not self.args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")


# ----------------------------------------------------------------------------- table
def requests_note(data: dict) -> str:
    """FUSE requests per file in each small-file phase, from nullfs's counters before/after each phase."""
    reqs = data["requests"]
    parts = []
    prev = reqs.get("start", {})
    for phase in ("create", "stat", "read", "delete"):
        cur = reqs.get(phase)
        n = data[phase][0]
        if cur is None or not n:
            break
        delta = {op: cur.get(op, 0) - prev.get(op, 0) for op in cur}
        delta = {op: c for op, c in sorted(delta.items(), key=lambda kv: -kv[1]) if c / n >= 0.005}
        per = sum(delta.values()) / n
        parts.append(f"{phase} {per:.2f}/file (" + ", ".join(f"{op} {c / n:.2f}" for op, c in delta.items()) + ")")
        prev = cur
    return "FUSE requests per small file: " + "; ".join(parts)


def fmt(v) -> str:
    if isinstance(v, Fail):
        return str(v)
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}" if r >= 0.095 else f"{r:.2g}"


def ratio(a, b) -> float | None:
    a, b = num(a), num(b)
    if a is None or b is None or b == 0:
        return None
    return a / b


def build_rows(h: Harness) -> tuple[list[str], list[list[str]]]:
    R = h.results
    P = h.probe
    local = R.get("local", {})
    def get(sysname: str, key: str) -> Any:
        if key not in h.workloads:
            return None
        return R.get(sysname, {}).get(key, Fail("skipped", "not run") if sysname in R else None)

    def best_peer(key):
        vals = [(num(get(p, key)), p) for p in PEERS if num(get(p, key)) is not None]
        return max(vals) if vals else (None, None)

    ceilings = {
        "seqwrite": (P.get("put8"), "S3 PUT ×8"),
        "coldread": (P.get("get8"), "S3 GET ×8"),
        "warmread": (local.get("warmread"), "local disk"),
        "randwrite": (local.get("randwrite"), "local disk"),
        "randwrite_sync": (P.get("smallput"), "S3 4K PUT ×1"),
        "randwrite_sync_local": (local.get("randwrite_sync"), "local disk"),
        "randread": (local.get("randread"), "local disk"),
    }
    for k in SF_KEYS:
        ceilings[k] = (local.get(k), "local disk")

    def target(key, fv) -> str:
        s3b = num(get("s3backer", "seqwrite"))
        bp, bpn = best_peer("randwrite_sync" if key == "randwrite_sync_local" else key)
        ce = num(ceilings[key][0])
        checks = []
        if key == "seqwrite":
            checks = [("≥80% ceiling", ce and fv is not None and fv >= 0.8 * ce),
                      ("≥4× s3backer", s3b and fv is not None and fv >= 4 * s3b)]
            known = [ce is not None, s3b is not None]
        elif key == "coldread":
            checks, known = [("≥70% ceiling", ce and fv is not None and fv >= 0.7 * ce)], [ce is not None]
        elif key == "warmread":
            checks, known = [("≥50% local disk", ce and fv is not None and fv >= 0.5 * ce)], [ce is not None]
        elif key == "randwrite":
            checks, known = [("≥2× best peer", bp and fv is not None and fv >= 2 * bp)], [bp is not None]
        elif key == "randwrite_sync":
            checks, known = [("≥70% of 4K PUT rate", ce and fv is not None and fv >= 0.7 * ce)], [ce is not None]
        elif key == "randwrite_sync_local":
            rc = num(get("rclone", "randwrite_sync"))
            checks, known = [("≥ rclone", rc is not None and fv is not None and fv >= rc)], [rc is not None]
        elif key == "randread":
            checks, known = [("≥ best peer", bp and fv is not None and fv >= bp)], [bp is not None]
        elif key == "sf_create":
            checks, known = [("≥5,000/s", fv is not None and fv >= 5000)], [True]
        elif key == "sf_stat":
            checks, known = [("≥10,000/s", fv is not None and fv >= 10000)], [True]
        else:
            return "—"
        out = []
        for (text, ok), kn in zip(checks, known, strict=False):
            mark = "?" if (fv is None or not kn) else ("✓" if ok else "✗")
            out.append(f"{mark} {text}")
        return ", ".join(out)

    header = ["workload", "unit", "ceiling", "ferry", LABELS["ferry-enc"], LABELS["ferry-block"], "s3fs", "rclone",
              "s3backer", LABELS["null"], "ferry/ceiling", "ferry/best peer", f"ferry/{LABELS['null']}", "target",
              "encrypted/ferry", "block/ceiling", "block/best peer", "block/ferry files"]
    rows = []
    for key, label, unit in WORKLOADS:
        if key not in h.workloads:     # --workloads
            continue
        fk = key
        ferry_v = get("ferry", fk)
        peer_key = "randwrite_sync" if key == "randwrite_sync_local" else key
        ce, ce_name = ceilings[key]
        ce_txt = "—" if ce is None else f"{fmt(ce)} ({ce_name})"
        block_v = get("ferry-block", fk)
        enc_v = get("ferry-enc", fk)
        cells = [label, unit, ce_txt, "—" if ferry_v is None else fmt(ferry_v),
                 "—" if enc_v is None else fmt(enc_v), "—" if block_v is None else fmt(block_v)]
        for p in PEERS:
            v = get(p, peer_key)
            txt = "—" if v is None else fmt(v)
            if h.extra.get(p, {}).get(peer_key) and num(v) is not None:
                txt += f" ({h.extra[p][peer_key]})"
            cells.append(txt)
        null_v = R.get("null", {}).get(key)      # only the rows nullfs runs (no "skipped" for the others)
        cells.append("—" if null_v is None else fmt(null_v))
        rc = ratio(ferry_v, ce)
        bp, bpn = best_peer(peer_key)
        rb = ratio(ferry_v, bp)
        rn = ratio(ferry_v, null_v)
        cells.append("—" if rc is None else (f"{rc:.0%}" if rc >= 0.095 else f"{rc * 100:.2g}%"))
        cells.append("—" if rb is None else f"{fmt_ratio(rb)}× ({bpn})")
        cells.append("—" if rn is None else f"{fmt_ratio(rn)}×")
        cells.append(target(key, num(ferry_v)))
        for r in (ratio(enc_v, ferry_v), ratio(block_v, ce), ratio(block_v, bp), ratio(block_v, ferry_v)):
            cells.append("—" if r is None else f"{fmt_ratio(r)}×")
        if ratio(block_v, bp) is not None:
            cells[-2] += f" ({bpn})"
        rows.append(cells)
    return header, rows


def print_table(h: Harness, header, rows):
    title = (f"ferry vs peers — {h.size_mb} MiB sequential file, {RAND_FILE_MB} MiB random file, "
             f"{h.runtime} s timed runs, {h.nfiles} small files")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        print(title)
        print("  ".join(c.ljust(w) for c, w in zip(header, widths, strict=False)))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)))
        return
    t = Table(title=title, show_lines=False)
    for i, c in enumerate(header):
        t.add_column(c, justify="left" if i in (0, 1, len(header) - 1) else "right", overflow="fold")
    for r in rows:
        t.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 220).print(t)


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=ENV)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    line = ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]
    m = re.search(r"\bv?(\d+\.\d+(?:\.\d+)?(?:-[\w.]+)?)", line, re.I)
    return m.group(1) if m else line


def pkg_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001
        return "?"


def machine_info() -> dict[str, str]:
    mem = "?"
    cpu = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "memory": mem, "kernel": platform.release(), "cpu": cpu}


def write_results(h: Harness, header, rows, argv: list[str]):
    mi = machine_info()
    versions = {
        "fio": tool_version(["fio", "--version"]),
        "s3fs": tool_version(["s3fs", "--version"]),
        "rclone": tool_version(["rclone", "version"]),
        "s3backer": tool_version(["s3backer", "--version"]),
        "moto": pkg_version("moto"),
        "boto3": pkg_version("boto3"),
        "ferry": pkg_version("ferry"),
        "python": platform.python_version(),
    }
    def esc(s: str) -> str:
        return s.replace("|", "\\|")
    L = [
        "# ferry benchmark results",
        "",
        "Written by `bench/run.py` — see `bench/README.md` for what each column means and the caveats.",
        "",
        f"- date: {h.started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{' '.join(['/opt/ferry-venv/bin/python', 'bench/run.py'] + argv)}`",
        f"- machine: {mi['nproc']} CPUs ({mi['cpu']}), {mi['memory']} memory, kernel {mi['kernel']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- parameters: sequential file {h.size_mb} MiB, random file {RAND_FILE_MB} MiB, timed runs {h.runtime} s, "
        f"{h.nfiles} small files (each phase capped at {h.sf_cap} s), one moto_server on loopback",
        "- run time: " + ", ".join(f"{k} {v:.0f} s" for k, v in h.durations.items()),
        "",
        "Higher is better everywhere. fsync means different things on each system (rclone and s3backer "
        "acknowledge it before the data is in the store): read the caveats in the README before comparing.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i in (0, 1, len(header) - 1) else "---:" for i in range(len(header))) + "|",
    ]
    for r in rows:
        L.append("| " + " | ".join(esc(c) for c in r) + " |")
    L += ["", "## Ceilings", "",
          "| probe | value | rounds |", "|---|---:|---:|"]
    names = {"put1": "boto3 PUT 1 MiB objects, 1 stream (MiB/s)", "put8": "boto3 PUT 1 MiB objects, 8 threads (MiB/s)",
             "get1": "boto3 GET 1 MiB objects, 1 stream (MiB/s)", "get8": "boto3 GET 1 MiB objects, 8 threads (MiB/s)",
             "smallput": "boto3 PUT 4 KiB objects, 1 stream (ops/s)"}
    for k, label in names.items():
        rounds = ", ".join(fmt(v) for v in h.probe_rounds.get(k, []))
        L.append(f"| {label} | {esc(fmt(h.probe.get(k)))} | {rounds} |")
    for key, label, unit in WORKLOADS:
        if key == "randwrite_sync_local":
            continue
        L.append(f"| local disk: {label} ({unit}) | {esc(fmt(h.results.get('local', {}).get(key)))} | |")
    fails = failure_lines(h, md=True)
    if fails:
        L += ["", "## Failures", ""] + [esc(f) for f in fails]
    if h.notes:
        L += ["", "## Notes from this run", ""] + [f"- {n}" for n in h.notes]
    RESULTS_MD.write_text("\n".join(L) + "\n")
    log(f"wrote {RESULTS_MD}")


def failure_lines(h: Harness, md: bool = False) -> list[str]:
    """One line per system and distinct reason (a failed mount fails every cell for the same reason)."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for sysname, res in list(h.results.items()) + [("probe", h.probe)]:
        for key, v in res.items():
            if isinstance(v, Fail):
                groups.setdefault((sysname, v.kind, v.reason), []).append(key)
    out = []
    for (sysname, kind, reason), keys in groups.items():
        what = "all workloads" if len(keys) >= len(SF_KEYS) + 5 else ", ".join(keys)
        out.append(f"- {sysname} / {what}: **{kind}** — {reason}" if md else f"  {sysname} / {what}: {kind} — {reason}")
    return out


# ----------------------------------------------------------------------------- main
def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--_smallfiles":
        smallfiles_worker(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]),
                          *((int(sys.argv[5]), sys.argv[6]) if len(sys.argv) > 6 else ()))
        return 0
    ap = argparse.ArgumentParser(description="Benchmark ferry side by side with s3fs, rclone mount and "
                                             "s3backer+ext4 against one moto_server (see bench/README.md).")
    ap.add_argument("--size-mb", type=int, help="sequential file size in MiB (default 256; --quick 64)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes and shorter timed runs")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(SYSTEMS)} (ceilings always run; "
                                   f"null = the pyfuse3 null filesystem, bench/nullfs.py)")
    ap.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOAD_GROUPS)} (default all; "
                                        f"also limits the local-disk runs, and the S3 probe runs only for "
                                        f"seqwrite/coldread/randwrite_sync)")
    ap.add_argument("--runtime", type=int, help="seconds per timed random-I/O run (default 15; --quick 5)")
    ap.add_argument("--files", type=int, help="number of small files (default 10000: a kernel filesystem "
                                              "creates 2000 in ~30 ms, too short to measure; --quick 500)")
    ap.add_argument("--timeout-scale", type=float, default=1.0,
                    help="multiply the per-workload timeouts (default 1.0; raise on slow machines)")
    ap.add_argument("--system-budget", type=float,
                    help="seconds after which a system's remaining workloads are skipped (default 600; --quick 300)")
    ap.add_argument("--workdir", help="parent of the temporary directory (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py must run as root (FUSE and loop mounts, drop_caches)", file=sys.stderr)
        return 2
    missing = [t for t in ("fio", "fusermount3", "mkfs.ext4") if not shutil.which(t)]
    if missing:
        print(f"missing tools: {', '.join(missing)} — run bench/install-peers.sh", file=sys.stderr)
        return 2
    global ENV
    ENV = clean_env()
    os.environ.clear()
    os.environ.update(ENV)   # our own boto3 too

    def on_signal(signum, frame):
        if T.cleaning:
            log("cleaning up, please wait (every step has a timeout)")
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    h = Harness(args)
    rc = 0
    interrupted = False
    try:
        h.run()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
        rc = 130
    except SystemExit as e:
        log(f"error: {e}")
        rc = 1
    except Exception:  # noqa: BLE001
        log("harness error:\n" + traceback.format_exc())
        rc = 1
    finally:
        try:
            h.cleanup()
        except Exception:  # noqa: BLE001
            log("cleanup error:\n" + traceback.format_exc())
    if h.results or h.probe:
        header, rows = build_rows(h)
        print_table(h, header, rows)
        fails = failure_lines(h)
        if fails:
            print("failures:\n" + "\n".join(fails))
        if h.notes:
            print("notes:\n" + "\n".join(f"  {n}" for n in h.notes))
        if not interrupted and not args.no_results and rc == 0:
            if args.workloads:
                log(f"--workloads: partial run, {RESULTS_MD.name} not rewritten")
            else:
                write_results(h, header, rows, sys.argv[1:])
    return rc


if __name__ == "__main__":
    sys.exit(main())
