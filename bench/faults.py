"""Interruption faults (issue 12): `kill -9` of `emoadapt extract`, `pretrain`, `finetune` and `cv` at random points,
then the same command again, compared with an uninterrupted run of the same seed; and a disk that fills up mid-run.

    python bench/faults.py [--kills 20] [--seed 0] [--out docs/bench_faults_interruption.json] [--keep DIR]
                           [--no-disk-full]

Everything runs the real CLI (``python -m emoadapt.cli``) in subprocesses, one thread each, on a tiny IEMOCAP-shaped
corpus (tests/corpus_fixtures.py: 5 sessions x 8 clips of 0.4-0.8 s; extraction in batches of 2, so 20 shard
parts), Whisper tiny.en features (layers 2 and 4) and tiny models (tests/tiny_settings.py TINY, here with 8 stage-1 and
12 stage-2 epochs); pretrain and finetune on fold 1, cv on folds 1 and 2 with recipe full (stage 1 then stage 2 in
each fold). The runs import emoadapt from a copy of src/ taken at the start, so that editing the checkout meanwhile
cannot make the runs differ. First each command runs once uninterrupted: the reference. Then, until --kills SIGKILLs
have been sent, the commands take turns (in a seeded order each round): the command starts in a fresh folder and
is killed (with its process group) a delay after its first write into that folder, drawn uniformly over the
reference's time from its first write to its last (start-up before it varies with the machine's load, and the
second or so a finished process takes to exit holds no work); the same command is re-run, and with probability 1/3
that re-run is killed too (a kill during a resume: a delay over the first half of that time), and so on; the last
re-run goes to the end. A kill that arrives after the run ended is counted as missed, not as a kill.

After every kill: each finished unit must be intact (the store opens and every stored utterance equals the
reference's bit for bit; every checkpoint, model folder and results file loads). After the next run: units lost =
committed shard parts that were rewritten or vanished + training epochs done again although a checkpoint held
them (read from the per-epoch progress lines) + finished cv folds trained again. At the end the final outputs must
equal the reference's, file by file: feature stores (shards byte for byte, index parts value by value), weights and
checkpoints tensor by tensor, results, predictions and scores value by value; and no temp file of an interrupted
write may be left. Left out of the comparison, as they legitimately differ: timings (``seconds``), the commit time
of each store index part (``committed_ns``), the checkout's git state (``git``), the run folder's own path, the
``current_score`` of the best-checkpoint callback inside a training checkpoint (Lightning does not restore it on
resume; nothing reads it), and the training logs under ``logs/`` (compared and counted apart: Lightning's
CSVLogger deletes ``metrics.csv`` when a run restarts, and flushes it only every 100 steps and at the end, so a
resumed run's log holds the epochs trained after the last restart only).

Disk full (as root, where a small tmpfs can be mounted; skipped otherwise): each command runs with its output on
a tmpfs that another file fills up once the run has finished a unit (3 shard parts; a checkpoint; fold 1); what
the user sees is recorded, the finished units are checked intact, the filler is deleted and the command re-run
to the end, then compared with the reference like after a kill.

Prints, per command, kills made, survived, units lost (0 expected), missed kills, whether every final output was
identical, temp files left behind by interrupted writes (0 expected) and in how many folders the logs differ;
writes every trial as JSON (default docs/bench_faults_interruption.json); exits 1 if anything expected to be 0 or
identical was not. The CI slice of this harness is tests/faults/test_interruption.py (3 kills and a disk full
injected in the CLI process, under a minute).
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from tiny_settings import TINY  # noqa: E402  (tests/ is not a package: the tiny-model settings every training test uses)
from corpus_fixtures import make_iemocap  # noqa: E402

COMMANDS = ("extract", "pretrain", "finetune", "cv")
FOLD = 1            # finetune and pretrain: this fold (pretrain on its training speakers)
CV_FOLDS = (1, 2)
# the tiny settings, with enough epochs that a kill has several checkpoints to land between (CI); the long version
# trains longer, so that more of its random kills land inside the training loops rather than in set-up and saving
SETTINGS = [*TINY, "pretrain.epochs=4", "stage2.epochs=6"]
LONG_SETTINGS = [*TINY, "pretrain.epochs=8", "stage2.epochs=12"]
VOLATILE = {"seconds", "committed_ns", "git"}   # timings, commit times, the checkout's git state
# in a training checkpoint: the best-checkpoint callback's last saved score, which Lightning's
# ModelCheckpoint.load_state_dict does not restore (None after a resume until the next best; nothing reads it)
CHECKPOINT_VOLATILE = {"current_score"}
EPOCH_LINE = re.compile(r"^\s*epoch (\d+)/(\d+):")
FOLD_LINE = re.compile(r"^fold (\d+): (already done|stage 1|stage 2)")
POLL = 0.002   # seconds between two looks at a running process (kill triggers)
WALK = 0.02    # ... and between two walks of its output folder for its first write


# ------------------------------------------------------------------------------------------------------------
# The fixture and the commands
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Fixture:
    root: Path
    corpus: Path
    store: Path = None       # the reference extract's store: what the training commands read
    cv_recipe: str = "full"  # full: stage 1 then stage 2 in every fold (pretrain and finetune inside cv)
    source: Path | None = None  # a copy of src/ that every run imports emoadapt from (None: the installed one)
    settings: list = field(default_factory=lambda: list(SETTINGS))  # --set items of the training commands

    @property
    def env(self) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.source), *filter(None, [env.get("PYTHONPATH")])])
        return env


def make_fixture(root: Path, *, cv_recipe: str = "full", freeze_source: bool = False,
                 settings: list | None = None) -> Fixture:
    """The tiny corpus (fold k = session k) in ``root/iemocap``. ``freeze_source``: the runs import emoadapt from a
    copy of src/ taken now, so that edits to the checkout while the harness runs (minutes) cannot make the
    reference and the interrupted runs run different code."""
    root = Path(root)
    corpus = make_iemocap(root / "iemocap", utts_per_session=8, seconds=(0.4, 0.8))
    source = None
    if freeze_source:
        import emoadapt
        source = root / "src"
        shutil.copytree(Path(emoadapt.__file__).parent, source / "emoadapt",
                        ignore=shutil.ignore_patterns("__pycache__"))
    return Fixture(root, corpus, cv_recipe=cv_recipe, source=source, settings=list(settings or SETTINGS))


def argv(fx: Fixture, command: str, out: Path) -> list[str]:
    """The command line, as a user types it (progress on: stderr is a file, so training prints one line per epoch,
    which is how units lost are counted)."""
    sets = [a for s in fx.settings for a in ("--set", s)]
    corpus = ["--corpus", str(fx.corpus)]
    if command == "extract":  # batches of 2: 20 shard parts to kill between
        args = ["extract", str(fx.corpus), "--encoder", "whisper-tiny.en", "--layers", "2,4", "--batch-size", "2",
                "--store", str(out)]
    elif command == "pretrain":
        args = ["pretrain", "--store", str(fx.store), *corpus, "--fold", str(FOLD), "--out", str(out), *sets]
    elif command == "finetune":
        args = ["finetune", *corpus, "--store", str(fx.store), "--fold", str(FOLD), "--out", str(out), *sets]
    elif command == "cv":
        args = ["cv", *corpus, "--store", str(fx.store), "--recipe", fx.cv_recipe,
                "--folds", ",".join(map(str, CV_FOLDS)), "--out", str(out), *sets]
    else:
        raise ValueError(command)
    return [sys.executable, "-m", "emoadapt.cli", *args]


# ------------------------------------------------------------------------------------------------------------
# Running, killing
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    returncode: int
    killed: bool                 # SIGKILLed by us while it ran
    seconds: float               # from start to exit (or kill)
    first_write: float | None    # seconds from start until the first file appeared in the output folder
    output: str                  # stdout and stderr, interleaved
    last_write: float | None = None  # seconds from start until the last file was written (its mtime)
    pid: int | None = None

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.output


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:  # a file, never a pipe: a chatty child cannot block on a full pipe
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def run(cmd: list[str], env: dict, log: Path, *, out: Path | None = None, kill_when=None, on_event=None,
        timeout: float = 600) -> Attempt:
    """Run ``cmd`` to its end, or SIGKILL it (its whole process group) as soon as ``kill_when(elapsed,
    first_write)`` is true. ``on_event(elapsed)`` is polled too (e.g. to fill the disk). ``out``: watched for the
    first file written or rewritten (``first_write``: seconds from the start, None until then)."""
    existing = _files(out) if out is not None else {}
    t0, wall = time.perf_counter(), time.time()
    proc = start(cmd, env, log)
    first_write, killed, looked = None, False, -1.0
    while proc.poll() is None:
        elapsed = time.perf_counter() - t0
        if first_write is None and out is not None and elapsed - looked >= WALK:  # a walk costs the child CPU
            looked = elapsed
            if _files(out).items() - existing.items():
                first_write = elapsed
        if on_event is not None:
            on_event(elapsed)
        if kill_when is not None and kill_when(elapsed, first_write):
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group we started: the CLI and any worker it forked
                killed = True
            except ProcessLookupError:
                pass
            proc.wait()
            break
        if elapsed > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimeoutError(f"{' '.join(cmd)} ran longer than {timeout} s")
        time.sleep(POLL)
    seconds = time.perf_counter() - t0
    killed = killed and proc.returncode == -signal.SIGKILL
    written = [m for p, m in _files(out).items() if existing.get(p) != m] if out is not None else []
    last_write = max(written) / 1e9 - wall if written else None
    return Attempt(proc.returncode, killed, seconds, first_write, log.read_text(errors="replace"), last_write,
                   proc.pid)


def _files(folder: Path) -> dict[str, int]:
    """{path: mtime_ns} of every file under ``folder``."""
    if not folder.is_dir():
        return {}
    out = {}
    for d, _, names in os.walk(folder):
        for f in names:
            try:
                out[os.path.join(d, f)] = os.stat(os.path.join(d, f)).st_mtime_ns
            except FileNotFoundError:  # a temp file renamed away meanwhile
                pass
    return out


def after_first_write(seconds: float):
    """Kill ``seconds`` after the run first wrote into its output folder (start-up time varies with the load of
    the machine; the work after it much less)."""
    return lambda elapsed, first_write: first_write is not None and elapsed >= first_write + seconds


def when(condition, delay: float = 0.0):
    """Kill ``delay`` seconds after ``condition()`` first held (polled: a file appearing, a count reached)."""
    seen = []

    def check(elapsed, first_write=None):
        if not seen and condition():
            seen.append(elapsed)
        return bool(seen) and elapsed >= seen[0] + delay
    return check


def parts(store: Path) -> list[Path]:
    """Committed index parts of a feature store (a part is the commit of one batch)."""
    return sorted((Path(store) / "shards").glob("r*-*.json"))


# ------------------------------------------------------------------------------------------------------------
# Finished units: what a kill or a full disk leaves, and whether it is intact
# ------------------------------------------------------------------------------------------------------------
def finished_units(fx: Fixture, command: str, out: Path, reference: Path | None = None) -> tuple[dict, list[str]]:
    """(units, problems). Units: extract {"parts": {name: sha256}}; training {unit: "done" | last finished epoch
    (0-based, from last.ckpt) | None}, unit = "train" or (cv) "<fold>/stage1", "<fold>/stage2", "<fold>/fold".
    Every unit is loaded: problems lists those that are not intact (unreadable, or features that differ from the
    ``reference`` store's)."""
    out = Path(out)
    problems: list[str] = []
    if command == "extract":
        from emoadapt.store.features import FeatureStore
        units = {"parts": {p.name: _sha256(p) for p in parts(out)}}
        if not (out / "meta.json").is_file():
            return units, problems
        store = None
        try:
            store = FeatureStore(out)
            ref = FeatureStore(reference) if reference is not None else None
            for i in store.ids():
                x = store.get(i)
                if ref is not None and not (i in ref and x.shape == ref.get(i).shape
                                            and x.tobytes() == ref.get(i).tobytes()):
                    problems.append(f"utterance {i}: stored features differ from the uninterrupted run's")
        except Exception as error:  # noqa: BLE001 - any failure to read a finished unit is the finding
            problems.append(f"store: {type(error).__name__}: {error}")
        units["utterances"] = len(store) if store is not None else None
        return units, problems

    def stage(folder: Path, final: Path, name: str) -> None:
        state = None
        if (final / "model.json").is_file():
            state = "done"
            problems.extend(_load_model(final))
        for ckpt in ("last.ckpt", "best.ckpt"):
            path = folder / "checkpoints" / ckpt
            if path.is_file():
                epoch, problem = _checkpoint_epoch(path)
                problems.extend(problem)
                if ckpt == "last.ckpt" and state is None:
                    state = epoch
        units[name] = state

    units: dict = {}
    if command == "pretrain":
        stage(out, out / "adapter", "train")
    elif command == "finetune":
        stage(out, out / "model", "train")
        if (out / "results.json").is_file():
            units["train"] = "done"
            problems.extend(_load_json(out / "results.json"))
    else:
        for k in CV_FOLDS:
            fold = out / f"fold_{k}"
            if fx.cv_recipe == "full":
                stage(fold / "stage1", fold / "stage1" / "adapter", f"{k}/stage1")
            stage(fold, fold / "model", f"{k}/stage2")
            units[f"{k}/fold"] = None
            if (fold / "results.json").is_file():
                units[f"{k}/fold"] = "done"
                problems.extend(_load_json(fold / "results.json"))
    return units, problems


def _checkpoint_epoch(path: Path) -> tuple[int | None, list[str]]:
    from emoadapt.training.checkpoint_io import load_checkpoint_file
    try:
        return int(load_checkpoint_file(path)["epoch"]), []
    except Exception as error:  # noqa: BLE001
        return None, [f"{path}: {type(error).__name__}: {error}"]


def _load_model(folder: Path) -> list[str]:
    from emoadapt.modelfolder import load_model
    try:
        load_model(folder)
        return []
    except Exception as error:  # noqa: BLE001
        return [f"{folder}: {type(error).__name__}: {error}"]


def _load_json(path: Path) -> list[str]:
    try:
        json.loads(path.read_text())
        return []
    except Exception as error:  # noqa: BLE001
        return [f"{path}: {type(error).__name__}: {error}"]


def units_lost(command: str, units: dict, next_run: Attempt, out: Path) -> dict:
    """What the run after a kill did again although the kill had left it finished: {"parts", "epochs", "folds"}.
    ``units``: finished_units at the kill; ``next_run``: the following attempt (finished or killed itself)."""
    lost = {"parts": 0, "epochs": 0, "folds": 0}
    if command == "extract":
        now = {p.name: _sha256(p) for p in parts(out)}
        lost["parts"] = sum(now.get(name) != digest for name, digest in units["parts"].items())
        return lost
    trained = _epochs_by_unit(command, next_run.output)
    for unit, state in units.items():
        epochs = trained.get(unit, [])
        if unit.endswith("/fold"):
            lost["folds"] += state == "done" and unit in trained  # a finished fold was entered again
            continue
        if state == "done":
            lost["epochs"] += len(epochs)
        elif isinstance(state, int) and epochs:
            lost["epochs"] += max(0, state + 2 - epochs[0])  # the next epoch to train is state + 2 (1-based)
    return lost


def _epochs_by_unit(command: str, output: str) -> dict[str, list[int]]:
    """Epoch numbers (1-based) printed per unit; cv: also "<fold>/fold" for every fold it started training."""
    unit = "train" if command != "cv" else None
    seen: dict[str, list[int]] = {}
    for line in output.splitlines():
        m = FOLD_LINE.match(line)
        if m:
            k, what = m.groups()
            if what == "already done":
                unit = None
                continue
            seen.setdefault(f"{k}/fold", [])
            unit = f"{k}/stage1" if what == "stage 1" else f"{k}/stage2"
            seen.setdefault(unit, [])
            continue
        m = EPOCH_LINE.match(line)
        if m and unit is not None:
            seen.setdefault(unit, []).append(int(m.group(1)))
    return seen


# ------------------------------------------------------------------------------------------------------------
# Comparing final outputs
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    differences: list[str] = field(default_factory=list)       # final outputs that differ (expected: none)
    log_differences: list[str] = field(default_factory=list)   # logs/ (appended by every attempt: may differ)
    leftovers: list[str] = field(default_factory=list)         # temp files of interrupted writes left behind

    @property
    def identical(self) -> bool:
        return not self.differences and not self.leftovers


def compare(reference: Path, out: Path) -> Comparison:
    """Every file of ``out`` against the same file of ``reference`` (see canonical())."""
    reference, out = Path(reference), Path(out)
    result = Comparison()
    a, b = _tree(reference), _tree(out)
    result.leftovers = sorted(n for n in b if _is_temp(n))
    for name in sorted((set(a) | set(b)) - set(result.leftovers)):
        if _is_temp(name):
            continue
        bucket = result.log_differences if name.split("/")[0] == "logs" or "/logs/" in name else result.differences
        if name not in a or name not in b:
            bucket.append(f"{name}: only in the {'reference' if name in a else 'resumed'} run")
        elif canonical(reference / name, reference) != canonical(out / name, out):
            bucket.append(f"{name}: differs")
    return result


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not re.fullmatch(r"\.r\d+\.lock", p.name)}  # extraction's per-rank lock files


def _is_temp(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and ".tmp" in base


def canonical(path: Path, root: Path):
    """A file's content with what legitimately differs between two runs taken out: JSON without VOLATILE keys,
    safetensors (weights, checkpoints) as {key: dtype, shape, sha256 of the bytes} plus their header, the run
    folder's own path replaced by <out> everywhere."""
    here = str(root)
    if path.suffix in (".safetensors", ".ckpt"):
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = {k: v.replace(here, "<out>") for k, v in (f.metadata() or {}).items()}
            tensors = {k.replace(here, "<out>"): _tensor_digest(f.get_tensor(k)) for k in f.keys()
                       if k.rsplit("/", 1)[-1] not in CHECKPOINT_VOLATILE}
        if "emoadapt.checkpoint" in meta:
            meta["emoadapt.checkpoint"] = _drop_volatile(json.loads(meta["emoadapt.checkpoint"]),
                                                         VOLATILE | CHECKPOINT_VOLATILE)
        return {"meta": meta, "tensors": tensors}
    data = path.read_bytes()
    if path.suffix in (".json", ".jsonl"):
        text = data.decode().replace(here, "<out>")
        try:
            if path.suffix == ".jsonl":
                return [_drop_volatile(json.loads(line)) for line in text.splitlines()]
            return _drop_volatile(json.loads(text))
        except ValueError:
            return text
    return data.replace(here.encode(), b"<out>")


def _tensor_digest(t) -> tuple:
    import torch
    flat = t.detach().contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return str(t.dtype), tuple(t.shape), hashlib.sha256(raw).hexdigest()


def _drop_volatile(x, keys=VOLATILE):
    if isinstance(x, dict):
        return {k: _drop_volatile(v, keys) for k, v in x.items() if k not in keys}
    if isinstance(x, list):
        return [_drop_volatile(v, keys) for v in x]
    return x


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------------------
# Disk full: a tmpfs (root only) that another file fills once the run has finished a unit
# ------------------------------------------------------------------------------------------------------------
def mount_tmpfs(folder: Path, size: str = "64m") -> str | None:
    """Mount a tmpfs at ``folder``; None when done, else why it cannot be (not root, no mount)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root: a tmpfs cannot be mounted"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    return None if result.returncode == 0 else f"mount failed: {result.stderr.strip()}"


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def fill(folder: Path) -> int:
    """Write a filler file in ``folder`` until its file system has no space left; returns its size."""
    block, size = b"\0" * (1 << 16), 0
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                size += f.write(block)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    for n in (4096, 512, 1):  # the last partial blocks, so that nothing fits any more
        try:
            with open(folder / "filler", "ab", buffering=0) as f:
                while True:
                    size += f.write(b"\0" * n)
        except OSError:
            pass
    return size


# Without root: the disk is made "full" inside the CLI process. Once the file named by $EMOADAPT_FAULT_ENOSPC exists,
# every write through emoadapt.atomic (stores, checkpoints, model folders, results) fails with ENOSPC where a file
# system with delayed allocation reports it: at fsync, after the bytes were written to the temp file.
ENOSPC_ENV = "EMOADAPT_FAULT_ENOSPC"
_ENOSPC_WRAPPER = f"""
import errno, os, sys
import emoadapt.atomic as atomic
when, fsync = os.environ[{ENOSPC_ENV!r}], atomic.fsync_file
def fsync_file(path):
    if os.path.exists(when):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    fsync(path)
atomic.fsync_file = fsync_file
from emoadapt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def with_enospc(cmd: list[str]) -> list[str]:
    """``cmd`` (from argv()) run through the ENOSPC wrapper; set $EMOADAPT_FAULT_ENOSPC to the trigger file."""
    assert cmd[1:3] == ["-m", "emoadapt.cli"], cmd
    return [cmd[0], "-c", _ENOSPC_WRAPPER, *cmd[3:]]


def disk_full_trigger(fx: Fixture, command: str, out: Path):
    """The moment the disk fills: once the run has finished a unit (3 shard parts; a checkpoint; fold 1)."""
    if command == "extract":
        return lambda: len(parts(out)) >= 3
    if command == "cv":
        return lambda: (out / f"fold_{CV_FOLDS[0]}" / "results.json").is_file()
    return lambda: (out / "checkpoints" / "last.ckpt").is_file()


def first_error_line(output: str) -> str:
    """What the user reads first about the failure: the line after a traceback, or the last line."""
    lines = [l for l in output.splitlines() if l.strip()]
    if "Traceback (most recent call last)" in output:
        tail = [l for l in lines if not l.startswith((" ", "\t"))]
        return tail[-1] if tail else lines[-1]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------------------------
# The long version
# ------------------------------------------------------------------------------------------------------------
def reference_runs(fx: Fixture, commands=COMMANDS, log=print) -> dict[str, dict]:
    """Each command uninterrupted into ref/<command>: {"out", "first_write", "seconds"}."""
    refs = {}
    for command in ("extract", *[c for c in commands if c != "extract"]):
        out = fx.root / "ref" / command
        attempt = run(argv(fx, command, out), fx.env, fx.root / "logs" / f"ref-{command}.log", out=out)
        if attempt.returncode != 0:
            raise RuntimeError(f"reference {command} failed:\n{attempt.output[-3000:]}")
        if command == "extract":
            fx.store = out
        refs[command] = {"out": out, "first_write": attempt.first_write or 0.0, "seconds": attempt.seconds,
                         "last_write": attempt.last_write or attempt.seconds}
        log(f"reference {command}: {attempt.seconds:.1f} s (writes from {attempt.first_write or 0:.1f} s to "
            f"{attempt.last_write or 0:.1f} s)")
    return refs


def kill_trial(fx: Fixture, command: str, ref: dict, out: Path, rng: random.Random, kills: int,
               again: float = 1 / 3, logs: Path | None = None) -> dict:
    """One folder: killed runs (at most ``kills``), each followed by another run, the last one to the end."""
    logs = logs or fx.root / "logs"
    cmd = argv(fx, command, out)
    work = ref["last_write"] - ref["first_write"]  # the reference's working time: from its first write to its last
    record = {"command": command, "out": str(out), "kills": [], "missed": 0}
    n, units = 0, None
    delay = rng.uniform(0, work)
    while True:
        attempt = run(cmd, fx.env, logs / f"{out.name}-{n}.log", out=out,
                      kill_when=after_first_write(delay) if delay is not None else None)
        if units is not None:  # what the run after the previous kill did again
            record["kills"][-1]["lost"] = units_lost(command, units, attempt, out)
        if delay is not None and not attempt.killed:
            record["missed"] += attempt.returncode == 0
        if not attempt.killed:
            record["returncode"] = attempt.returncode
            if attempt.returncode != 0:
                record["error"] = attempt.output[-2000:]
            break
        n += 1
        units, problems = finished_units(fx, command, out, fx.store if command == "extract" else None)
        record["kills"].append({"after_first_write_seconds": round(delay, 3), "units": _shown(units),
                                "problems": problems})
        # a resumed run has less left to do: its kill is drawn from the first half of the reference's working time
        delay = rng.uniform(0, 0.5 * work) if n < kills and rng.random() < again else None
    comparison = compare(ref["out"], out) if record.get("returncode") == 0 else Comparison(["the run failed"])
    record.update(asdict(comparison), identical=comparison.identical)
    return record


def _shown(units: dict) -> dict:
    """Units as recorded in the JSON: a store's parts counted rather than listed with their digests."""
    return {**units, "parts": len(units["parts"])} if "parts" in units else units


def disk_full_trial(fx: Fixture, command: str, ref: dict, mount: Path) -> dict:
    """Fill the disk under a run once it finished a unit; record what the user sees; free it; re-run; compare."""
    out = mount / command
    record: dict = {"command": command}
    state = {"filled": None}
    trigger = disk_full_trigger(fx, command, out)

    def maybe_fill(elapsed):
        if state["filled"] is None and trigger():
            state["filled"] = fill(mount)

    attempt = run(argv(fx, command, out), fx.env, fx.root / "logs" / f"diskfull-{command}.log", out=out,
                  on_event=maybe_fill)
    units, problems = finished_units(fx, command, out, fx.store if command == "extract" else None)
    record.update(filled=state["filled"] is not None, returncode=attempt.returncode, traceback=attempt.traceback,
                  says=first_error_line(attempt.output), units=_shown(units), problems=problems,
                  output_tail=attempt.output.splitlines()[-12:])
    (mount / "filler").unlink(missing_ok=True)
    again = run(argv(fx, command, out), fx.env, fx.root / "logs" / f"diskfull-{command}-rerun.log", out=out)
    record["rerun_returncode"] = again.returncode
    record["lost"] = units_lost(command, units, again, out)
    comparison = compare(ref["out"], out) if again.returncode == 0 else Comparison(["the re-run failed"])
    record.update(asdict(comparison), identical=comparison.identical)
    return record


def summarize(trials: list[dict], disk: list[dict]) -> dict:
    per = {}
    for c in COMMANDS:
        ts = [t for t in trials if t["command"] == c]
        kills = [k for t in ts for k in t["kills"]]
        per[c] = {
            "kills": len(kills),
            "survived": sum(len(t["kills"]) for t in ts
                            if t.get("returncode") == 0 and all(not k["problems"] for k in t["kills"])),
            "units_lost": sum(sum(k.get("lost", {}).values()) for k in kills),
            "units_not_intact": sum(len(k["problems"]) for k in kills),
            "folders": len(ts), "missed_kills": sum(t["missed"] for t in ts),
            "identical": all(not t["differences"] for t in ts) if ts else None,  # every final output
            "leftover_temp_files": sum(len(t["leftovers"]) for t in ts),
            "log_differences": sum(bool(t["log_differences"]) for t in ts),
        }
    for d in disk:
        per[d["command"]]["disk_full"] = {k: d.get(k) for k in ("filled", "returncode", "traceback", "says",
                                                                 "problems", "lost", "identical")}
    return per


def main(argv_: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to send in all (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="draws the commands and the kill moments (default 0)")
    parser.add_argument("--out", default="docs/bench_faults_interruption.json")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temp folder, deleted)")
    parser.add_argument("--no-disk-full", action="store_true", help="skip the disk-full part")
    args = parser.parse_args(argv_)
    from emoadapt.atomic import atomic_write_json as write_json
    from emoadapt.provenance import git_commit, versions

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="emoadapt-faults-"))
    t0 = time.perf_counter()
    try:
        fx = make_fixture(work, freeze_source=True, settings=LONG_SETTINGS)
        refs = reference_runs(fx)
        rng = random.Random(args.seed)
        trials, made, order = [], 0, []
        while made < args.kills:
            if not order:  # the commands take turns, in a seeded order each round
                order = rng.sample(COMMANDS, len(COMMANDS))
            command = order.pop()
            out = work / "runs" / f"{command}-{len(trials):02d}"
            trial = kill_trial(fx, command, refs[command], out, rng, kills=args.kills - made)
            made += len(trial["kills"])
            trials.append(trial)
            lost = sum(sum(k.get("lost", {}).values()) for k in trial["kills"])
            moments = ", ".join(f"+{k['after_first_write_seconds']:.2f} s" for k in trial["kills"]) or "-"
            missed = f" ({trial['missed']} missed)" if trial["missed"] else ""
            print(f"{out.name}: {len(trial['kills'])} kill(s) at {moments}{missed}; re-run exit "
                  f"{trial.get('returncode')}; units lost {lost}; identical {trial['identical']}"
                  + (f"; differs: {trial['differences'][:3]}" if trial["differences"] else "")
                  + (f"; leftovers: {trial['leftovers'][:3]}" if trial["leftovers"] else "")
                  + (f"; logs differ ({len(trial['log_differences'])} files)" if trial["log_differences"] else ""),
                  flush=True)
        disk, disk_skipped = [], None
        if not args.no_disk_full:
            mount = work / "tmpfs"
            disk_skipped = mount_tmpfs(mount)
            if disk_skipped is None:
                try:
                    for command in COMMANDS:
                        d = disk_full_trial(fx, command, refs[command], mount)
                        disk.append(d)
                        print(f"disk full during {command}: exit {d['returncode']}, traceback {d['traceback']}, "
                              f"says {d['says']!r}; finished units intact: {not d['problems']}; after freeing "
                              f"space the re-run exits {d['rerun_returncode']}, units lost "
                              f"{sum(d['lost'].values())}, identical {d['identical']}", flush=True)
                finally:
                    unmount(mount)
            else:
                print(f"disk full: skipped ({disk_skipped})")
        summary = summarize(trials, disk)
        print(f"\n{'command':<9} {'kills':>5} {'survived':>8} {'lost':>5} {'missed':>6}  identical  temp left  "
              f"logs differ  disk full")
        for c, s in summary.items():
            d = s.get("disk_full")
            shown = (f"exit {d['returncode']}, {'traceback' if d['traceback'] else 'one line'}, units intact "
                     f"{not d['problems']}, re-run identical {d['identical']}") if d else "-"
            print(f"{c:<9} {s['kills']:>5} {s['survived']:>8} {s['units_lost']:>5} {s['missed_kills']:>6}  "
                  f"{str(s['identical']):<9}  {s['leftover_temp_files']:>9}  {s['log_differences']:>2} of "
                  f"{s['folders']:<5}  {shown}")
        result = {"what": "SIGKILL of emoadapt extract / pretrain / finetune / cv at random points, re-run to the "
                          "end, compared with an uninterrupted run (same seed); disk full mid-run (tmpfs)",
                  "kills": made, "seed": args.seed, "settings": fx.settings, "cv_recipe": fx.cv_recipe,
                  "cv_folds": list(CV_FOLDS), "volatile_keys": sorted(VOLATILE),
                  "reference_seconds": {c: {"exit": round(r["seconds"], 2), "first_write": round(r["first_write"], 2),
                                            "last_write": round(r["last_write"], 2)} for c, r in refs.items()},
                  "summary": summary, "trials": trials, "disk_full": disk, "disk_full_skipped": disk_skipped,
                  "seconds": round(time.perf_counter() - t0, 1), "git": git_commit(), "versions": versions()}
        write_json(json.loads(json.dumps(result, default=str)), args.out)
        print(f"written: {args.out}")
        ok = all(s["identical"] is not False and s["units_lost"] == 0 and s["units_not_intact"] == 0
                 and s["leftover_temp_files"] == 0 for s in summary.values())
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
