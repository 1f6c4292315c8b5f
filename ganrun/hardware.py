"""Device, precision, memory-format, thread and compile decisions: pure functions, testable on CPU."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ganrun.errors import GanrunError

# helpers


def cpu_supports_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True on CPUs with native bf16 math (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_device(requested: str, *, cuda_available: bool, local_rank: int = 0, key: str = "trainer.device") -> torch.device:
    """`key` is the option as the command spells it (trainer.device for train, device for sample/eval)."""
    if requested == "cuda" and not cuda_available:
        raise GanrunError(f"{key}=cuda but no CUDA GPU is visible; use {key}=auto or cpu")
    if requested == "cuda" or (requested == "auto" and cuda_available):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass(frozen=True)
class PrecisionPolicy:
    name: str  # fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None
    grad_scaler: bool


FP32 = PrecisionPolicy("fp32", None, False)
BF16 = PrecisionPolicy("bf16", torch.bfloat16, False)
FP16 = PrecisionPolicy("fp16", torch.float16, True)


def choose_precision(
    requested: str,
    *,
    device_type: str,
    cuda_capability: tuple[int, int] | None = None,
    cpu_bf16: bool = False,
) -> PrecisionPolicy:
    """auto: bf16 autocast where the hardware computes in bf16 (Ampere+ GPUs, CPUs with
    AVX512-BF16/AMX), fp16 with a GradScaler on older GPUs, fp32 otherwise."""
    if requested == "fp32":
        return FP32
    if requested == "fp16":
        if device_type != "cuda":
            raise GanrunError("trainer.precision=fp16 needs a CUDA GPU; use trainer.precision=bf16 or fp32 on CPU")
        return FP16
    if requested == "bf16":
        if device_type == "cuda" and cuda_capability is not None and cuda_capability < (8, 0):
            raise GanrunError(
                f"trainer.precision=bf16 needs an Ampere or newer GPU (compute capability 8.0+), "
                f"this one is {cuda_capability[0]}.{cuda_capability[1]}; use trainer.precision=fp16"
            )
        return BF16
    if device_type == "cuda":
        return BF16 if cuda_capability is not None and cuda_capability >= (8, 0) else FP16
    return BF16 if cpu_bf16 else FP32


def use_channels_last(enabled: bool, *networks: nn.Module) -> bool:
    """channels_last (NHWC) only helps convolutions; MLP families are left alone."""
    return enabled and any(
        isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) for network in networks for layer in network.modules()
    )


# threads

BUSY_CORES_WORTH_SAYING = 0.5  # other processes' load from which the start line mentions it
# torch's own choice before we change it: the physical cores, or OMP_NUM_THREADS when set. Auto
# never goes above it (hyperthreads slow GEMMs down; an OMP_NUM_THREADS is the user's ceiling).
TORCH_DEFAULT_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class ThreadChoice:
    """How many CPU threads torch computes with, and why (for the start line)."""

    threads: int
    cpus: int  # CPUs this process may run on
    busy: float  # cores busy with other processes (busy_cores_now, else the 1-min load average less our share), >= 0
    requested: Optional[int] = None  # trainer.num_threads, None = auto


def choose_threads(requested: Optional[int], *, cpus: int, load: float, own_load: float = 0.0,
                   ranks: int = 1) -> ThreadChoice:
    """`requested` threads if set; auto (None): the cores not busy with other processes, shared
    among the `ranks` processes of this machine, at least 1.

    `load` is how many cores other processes keep busy: measured just now (`busy_cores_now`), or
    where that cannot be read the 1-minute load average (runnable threads, os.getloadavg), with
    `own_load` the part of it that is this process's own (a sweep's earlier job;
    `own_recent_load`). Under contention
    fewer threads win: OpenMP threads that outnumber the free cores wait on each other at every
    parallel region (DCGAN on MNIST on a 2-core machine at load 4-8: 2 threads 29-127 img/s
    spinning and 158-443 with OMP_WAIT_POLICY=PASSIVE; 1 thread 85-476; beside one busy 2-thread
    job, 2 threads 46-491 img/s whatever the wait policy, 1 thread 860-1,360; ganrun/cli.py).
    """
    busy = max(0.0, load - own_load)
    if requested is not None:
        return ThreadChoice(threads=requested, cpus=cpus, busy=busy, requested=requested)
    free = math.floor(cpus - busy + 0.5)  # 2 cores with 1.9 busy: 0 free -> 1; with 0.4 busy: 2
    return ThreadChoice(threads=max(1, free // max(1, ranks)), cpus=cpus, busy=busy)


def affinity() -> set[int]:
    """The CPU numbers this process may run on (containers and taskset limit them)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def available_cpus() -> int:
    """How many CPUs this process may run on (`affinity`)."""
    return len(affinity())


def load_average() -> float:
    """The 1-minute load average, 0.0 where the system has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


CPU_STAT_WINDOW_S = 0.3  # how long busy_cores_now watches: 30 scheduler ticks per core at 100 Hz


def cpu_ticks(wanted: set[str], stat: Path = Path("/proc/stat")) -> Optional[tuple[int, int]]:
    """(busy, total) scheduler ticks so far of the CPUs named in `wanted` ("cpu0", ...), from
    /proc/stat (busy = user, nice, system, irq, softirq, steal; idle = idle, iowait); None when
    it cannot be read or lacks one of them."""
    busy = total = 0
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    seen = 0
    for line in lines:
        fields = line.split()
        if not fields or fields[0] not in wanted:
            continue
        try:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
        except ValueError:
            return None
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + irq + softirq + steal + idle + iowait
        seen += 1
    return (busy, total) if seen == len(wanted) else None


class OtherLoad:
    """Cores of `cpus` that other processes kept busy between two looks: /proc/stat's tick counters
    (`cpu_ticks`) less this process's own CPU time. Each `since_last()` measures since the previous
    look (or construction) and starts the next span; `ticks` is None where /proc/stat can't be read."""

    def __init__(self, *, cpus: Iterable[int], stat: Path = Path("/proc/stat")):
        self.wanted, self.stat = {f"cpu{number}" for number in cpus}, stat
        self._mark()

    def _mark(self) -> None:
        self.ticks, self.own, self.clock = cpu_ticks(self.wanted, self.stat), time.process_time(), time.monotonic()

    def since_last(self, *, min_span: float = 1e-3) -> Optional[float]:
        """A number in [0, len(cpus)], or None when the counters cannot be read or did not move.
        `min_span` (s) floors the span this process's CPU time is divided by."""
        before, own_before, clock_before = self.ticks, self.own, self.clock
        self._mark()
        after = self.ticks
        if before is None or after is None or after[1] <= before[1]:
            return None
        share = (after[0] - before[0]) / (after[1] - before[1])  # of all ticks the cores had in the span
        others = share * len(self.wanted) - (self.own - own_before) / max(self.clock - clock_before, min_span)
        return min(float(len(self.wanted)), max(0.0, others))


def busy_cores_now(*, cpus: Iterable[int], window: float = CPU_STAT_WINDOW_S, stat: Path = Path("/proc/stat"),
                   sleep: Callable[[float], None] = time.sleep) -> Optional[float]:
    """Cores of `cpus` (CPU numbers, e.g. this process's affinity mask) that other processes kept
    busy over the last `window` seconds, from /proc/stat's per-CPU tick counters (busy = user,
    nice, system, irq, softirq, steal; idle = idle, iowait), less this process's own CPU time in
    the window. A number in [0, len(cpus)]; None off Linux or when /proc/stat cannot be read.

    Why not the 1-minute load average alone: it is an exponential average, so right after a heavy
    job ends it still reads busy for a minute or more (`make test` then `make train` got 1 thread of
    2 on an idle machine), and a job that just started has barely moved it yet.
    """
    cpus = set(cpus)
    if not cpus:
        return None
    load = OtherLoad(cpus=cpus, stat=stat)
    if load.ticks is None:
        return None
    sleep(window)
    return load.since_last(min_span=window)


def own_recent_load(stat: Path = Path("/proc/self/stat"), uptime: Path = Path("/proc/uptime")) -> float:
    """This process's share of the 1-minute load average, roughly: its mean CPU use since it
    started, weighted as the kernel's exponential average weights that span. Matters in sweeps
    (`-m`), where the previous job of this same process kept the cores busy. 0.0 off Linux."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime, seconds after boot
        alive = float(uptime.read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return 0.0
    if alive <= 0:
        return 0.0
    usage = time.process_time() / alive  # cores used on average since the start
    return usage * (1.0 - math.exp(-alive / 60.0))


def set_threads(requested: Optional[int], *, device: torch.device, ranks: int = 1) -> ThreadChoice:
    """Apply trainer.num_threads: on CPU the requested count or the auto choice; on GPU only a
    requested count (torch's default otherwise)."""
    if device.type != "cpu" and requested is None:
        threads = torch.get_num_threads()
        return ThreadChoice(threads=threads, cpus=available_cpus(), busy=0.0, requested=threads)
    cpus = min(available_cpus(), TORCH_DEFAULT_THREADS)
    busy = busy_cores_now(cpus=affinity())
    if busy is not None:
        choice = choose_threads(requested, cpus=cpus, load=busy, ranks=ranks)
    else:
        choice = choose_threads(requested, cpus=cpus, load=load_average(), own_load=own_recent_load(), ranks=ranks)
    torch.set_num_threads(choice.threads)
    return choice


class ThreadWatch:
    """Auto threads that follow the load during a CPU run (trainer.num_threads=null).

    `set_threads` chooses at the start; a job that starts later on the same cores (a test run, a
    second training) made a 2-thread ganrun crawl: `make train` beside a starting CI ran 3,200
    img/s, then 400-800 once the tests began, where 1 thread keeps 860-1,360 (ganrun/cli.py).
    `poll()`, called at each log window, measures other processes' busy cores since the last
    measurement (`OtherLoad`, as `busy_cores_now` does, but without sleeping) at most every
    `interval` seconds, and applies `choose_threads` again.
    Returns the new ThreadChoice when the thread count changed, else None. Off Linux (no
    /proc/stat) it never changes anything.
    """

    def __init__(self, *, choice: ThreadChoice, ranks: int = 1, interval: float = 10.0, stat: Path = Path("/proc/stat")):
        self.choice, self.ranks, self.interval = choice, ranks, interval
        self.load = OtherLoad(cpus=affinity(), stat=stat)

    def poll(self) -> Optional[ThreadChoice]:
        if self.load.ticks is None or time.monotonic() - self.load.clock < self.interval:
            return None
        busy = self.load.since_last()
        if busy is None:
            return None
        new = choose_threads(None, cpus=self.choice.cpus, load=busy, ranks=self.ranks)
        if new.threads == self.choice.threads:
            return None
        torch.set_num_threads(new.threads)
        self.choice = new
        return new


def describe(device: torch.device, threads: Optional[ThreadChoice] = None) -> str:
    """The device for the start line: `cpu (2 threads)`, or when other processes keep cores busy
    `cpu (1 of 2 threads: 1.9 cores busy with other processes)`."""
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    if threads is None:
        return f"cpu ({torch.get_num_threads()} threads)"
    count = "1 thread" if threads.threads == 1 else f"{threads.threads} threads"
    if threads.requested is not None:
        count += " (trainer.num_threads)"
    if threads.busy < BUSY_CORES_WORTH_SAYING:
        return f"cpu ({count})"
    busy = f"{threads.busy:.1f} cores busy with other processes"
    if threads.requested is None and threads.threads < threads.cpus:
        return f"cpu ({threads.threads} of {threads.cpus} threads: {busy})"
    return f"cpu ({count}; {busy}: trainer.num_threads=null picks fewer)" if threads.requested else f"cpu ({count}; {busy})"
