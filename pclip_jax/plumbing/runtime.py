"""The JAX runtime in one place: devices, data parallelism (pmap or its shard_map form, replicate, shard,
unreplicate), the persistent compilation cache, FLOPs and parameter counts, and the few JAX calls whose API drifted
across versions.

Everything else in the project calls these helpers instead of the drifting API, so a JAX upgrade touches this
file only (tested versions: see setup.cfg).

Data parallelism, as pre-training, embedding and the GNN use it: each process feeds its local devices; a global
batch is cut into `process_count` slices, each process takes its own and reshapes it to
[local_devices, per_device, ...] for the mapped step (`pmap`).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import jax
import numpy as np


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """`jax.tree.map` (jax.tree_map was removed in 0.6)."""
    return jax.tree.map(fn, tree, *rest)


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs (works on `jax.eval_shape` output)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        size = 1
        for dim in leaf.shape:
            size *= int(dim)
        total += size
    return total


def compiled_flops(fn: Callable, *args: Any, on_cpu: bool = False, **kwargs: Any) -> float:
    """FLOPs of `fn(*args)` from XLA's cost analysis of the compiled program.

    Convention: XLA counts a multiply-add as 2 FLOPs. `cost_analysis()` returned a list of dicts (one per program)
    before JAX 0.4.30 and a dict after; both are handled. Returns 0.0 when the backend reports nothing.
    `on_cpu`: compile for the CPU whatever the default backend. XLA:GPU's count leaves out the matrix products it
    hands to cuBLAS (an H200 reported 0.66 GFLOPs a flow for ET-BERT-base against the CPU program's 22.7, and
    per-flow counts that changed with the batch), so FLOPs for MFU are counted on the CPU program.
    """
    if on_cpu:
        args, kwargs = jax.device_put((args, kwargs), jax.devices("cpu")[0])
    compiled = jax.jit(fn).lower(*args, **kwargs).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


DATA_PARALLEL_ENV = "PCLIP_DATA_PARALLEL"
DATA_PARALLEL = ("pmap", "shard_map")


def data_parallel_implementation() -> str:
    """How `pmap` maps steps over devices in this process: $PCLIP_DATA_PARALLEL ('pmap' or 'shard_map'); unset,
    'pmap' while JAX still has it."""
    import os

    chosen = os.environ.get(DATA_PARALLEL_ENV, "").strip()
    if not chosen:
        return "pmap" if hasattr(jax, "pmap") else "shard_map"
    if chosen not in DATA_PARALLEL:
        raise ValueError(f"{DATA_PARALLEL_ENV}={chosen!r}: expected one of {', '.join(DATA_PARALLEL)}")
    return chosen


def pmap(fn: Callable, axis_name: str, donate_argnums: tuple = (), implementation: str | None = None) -> Callable:
    """`fn` mapped over the local devices as `jax.pmap(fn, axis_name)` maps it: every argument and result has a
    leading axis of one slice per local device, and `fn` sees one slice, with collectives over `axis_name` across
    all devices of all processes.

    pmap is in maintenance mode (implemented on `shard_map` since JAX 0.8) and every data-parallel step of the
    project goes through here, so `implementation` ('pmap', 'shard_map'; default `data_parallel_implementation()`)
    is the one place that moves it: 'shard_map' runs the same `fn` as one jitted `jax.shard_map` program over a
    mesh of all devices (tests/test_multihost.py: the same losses and parameters both ways, in one process and two).
    """
    implementation = implementation or data_parallel_implementation()
    if implementation == "pmap":
        return jax.pmap(fn, axis_name=axis_name, donate_argnums=donate_argnums)
    if implementation == "shard_map":
        return _pmap_on_shard_map(fn, axis_name, donate_argnums)
    raise ValueError(f"data-parallel implementation {implementation!r}: expected one of {', '.join(DATA_PARALLEL)}")


def _pmap_on_shard_map(fn: Callable, axis_name: str, donate_argnums: tuple) -> Callable:
    """pmap's contract written with `jax.shard_map`: a 1-D mesh of all devices (process by process, as pmap orders
    its global axis), each device's block of the leading axis (size 1) squeezed off before `fn` and put back
    after. Arguments and results are this process's [local_devices, ...] slices, as with pmap; in a multi-process
    run they are joined into global arrays for the program and cut back after it, both without copying device
    buffers where a leaf already holds one slice per local device."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    spec = PartitionSpec(axis_name)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), (axis_name,)), spec)
    local = jax.local_devices()
    local_sharding = NamedSharding(Mesh(np.array(local), (axis_name,)), spec)
    multi_process = jax.process_count() > 1

    @functools.wraps(fn)  # the program keeps `fn`'s name (profiles, XLA dumps), as pmap's does
    def per_device(*args):
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    def to_global(x):
        if isinstance(x, jax.Array):
            if x.sharding == sharding:
                return x
            # One slice per local device, under any axis name (a step's results, `replicate_local`'s copies).
            if x.is_fully_addressable and x.sharding.is_equivalent_to(local_sharding, x.ndim):
                return jax.make_array_from_single_device_arrays((jax.device_count(),) + x.shape[1:], sharding,
                                                                [s.data for s in x.addressable_shards])
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    def to_local(x):
        return jax.make_array_from_single_device_arrays((len(local),) + x.shape[1:], local_sharding,
                                                        [s.data for s in x.addressable_shards])

    programs: dict[int, Callable] = {}

    def mapped(*args):
        if len(args) not in programs:
            # check_vma=False: every result is per-device (out_specs = the mapped axis), as pmap's are.
            body = jax.shard_map(per_device, mesh=sharding.mesh, in_specs=(spec,) * len(args), out_specs=spec,
                                 check_vma=False)
            programs[len(args)] = jax.jit(body, donate_argnums=donate_argnums)
        if not multi_process:
            return programs[len(args)](*args)  # one process: jit lays the [devices, ...] arguments out itself
        out = programs[len(args)](*jax.tree.map(to_global, args))
        return jax.tree.map(to_local, out)

    return mapped


def replicate_local(tree: Any) -> Any:
    """One copy of every leaf per local device, as `jax.pmap` expects (leading axis = local devices).

    Replaces `jax.device_put_replicated` (deprecated in JAX 0.8, removed later): the stacked copies are placed with
    a sharding over the local devices, so pmap consumes them without another transfer.
    """
    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("local_devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("local_devices"))
    n = len(devices)
    return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
                        tree)


def shard_local(tree: Any) -> Any:
    """Leaves [local_devices, ...] placed one slice per local device, as `jax.pmap` expects (replaces the
    deprecated `jax.device_put_sharded`)."""
    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("local_devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("local_devices"))
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)


# Big enough for every program of a workdir's inference (a few MB) many times over; over it, the least recently used
# programs are dropped. A size also turns on JAX's file lock, so processes sharing the cache take turns (without it
# a reader could meet a half-written entry: JAX would warn and compile).
COMPILATION_CACHE_BYTES = 512 << 20


def use_compilation_cache(directory: Any) -> bool:
    """Keeps this process's compiled XLA programs in `directory` and reuses the ones an earlier run put there.

    JAX keys an entry on the program, the JAX/XLA versions, the backend and the compile flags, so a stale entry is
    never used. Every program is kept, however quick its compilation (the default keeps only those over a second).
    Must run before the process compiles anything: JAX fixes its cache at the first compilation. Returns False and
    changes nothing when the directory cannot be created or written (a read-only workdir).
    """
    import os
    import pathlib

    path = pathlib.Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    if not os.access(path, os.W_OK | os.X_OK):
        return False
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # -1, not 0: JAX replaces 0 with a backend default (which may skip small programs) when the cache starts.
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    try:  # JAX needs `filelock` (a dependency of this package) for a bounded, locked cache
        import filelock  # noqa: F401
        jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
    except ImportError:
        pass
    return True


_CACHE_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                   "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")


@contextlib.contextmanager
def restored_compilation_cache() -> Iterator[None]:
    """JAX's persistent-cache settings as they are when the block starts, put back when it ends (and the cache JAX
    opened from them dropped), so an entry point called in-process (tests, notebooks: `classify.main([...])`) leaves
    no process-wide cache behind for whatever compiles next. Drift wrapped here: `jax._src.compilation_cache`'s
    `reset_cache` (jax 0.4.2x-0.10)."""
    before = {name: getattr(jax.config, name) for name in _CACHE_SETTINGS if hasattr(jax.config, name)}
    try:
        yield
    finally:
        changed = any(getattr(jax.config, name) != value for name, value in before.items())
        for name, value in before.items():
            jax.config.update(name, value)
        if changed:
            try:
                from jax._src import compilation_cache  # private: reopened from the settings on next use
                compilation_cache.reset_cache()
            except (ImportError, AttributeError):
                pass


class CompilationCounter:
    """Counts the programs this process compiled and how many of them came from the persistent cache, while in a
    `with` block (JAX's monitoring events). `directory`: the cache directory set when the block began, or None."""

    REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
    HITS = "/jax/compilation_cache/cache_hits"

    def __init__(self):
        self.requests = 0
        self.hits = 0
        self.directory = None

    def _on_event(self, event: str, **kwargs) -> None:
        if event == self.REQUESTS:
            self.requests += 1
        elif event == self.HITS:
            self.hits += 1

    def __enter__(self) -> "CompilationCounter":
        self.directory = jax.config.jax_compilation_cache_dir
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        # Public in recent JAX (0.10 has it); 0.7 has only the private `_unregister_event_listener_by_callback`.
        unregister = getattr(jax.monitoring, "unregister_event_listener", None)
        if unregister is None:
            from jax._src import monitoring as private_monitoring
            unregister = private_monitoring._unregister_event_listener_by_callback
        unregister(self._on_event)


def maybe_initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` only when the environment asks for a multi-process run.

    Explicit: JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (launch/multihost.sh). Auto-detected
    (Cloud TPU pods, SLURM, Open MPI): PCLIP_DISTRIBUTED=1. A plain single-host run sets neither and is left alone
    (initialize() would otherwise wait for a coordinator).
    """
    import os

    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if (address or os.environ.get("PCLIP_DISTRIBUTED") == "1") and jax.config.jax_platforms == "cpu":
        # CPU devices of several processes talk through gloo (the default CPU collectives are single-process).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address:
        jax.distributed.initialize(coordinator_address=address,
                                   num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
        return True
    if os.environ.get("PCLIP_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False


# Data-parallel helpers (were pclip_jax/plumbing/runtime.py).
def replicate(tree: Any) -> Any:
    return replicate_local(tree)


def _first_replica(x):
    # Copy device 0's shard to the host instead of indexing the device-sharded array: indexing dispatches an XLA
    # gather across all local devices for every leaf, which is slow and was seen to abort the CPU runtime under
    # load with 8 host devices.
    shards = getattr(x, "addressable_shards", None)
    if shards:
        return np.asarray(shards[0].data)[0, ...]
    return np.asarray(x)[0, ...]


def unreplicate(tree: Any) -> Any:
    """Host (numpy) copy of the first replica of a replicated tree."""
    return tree_map(_first_replica, tree)


def process_slice(global_size: int) -> slice:
    """This process's rows of a global batch of `global_size` rows."""
    n = jax.process_count()
    if global_size % n:
        raise ValueError(f"global batch {global_size} is not divisible by the {n} processes")
    per = global_size // n
    start = jax.process_index() * per
    return slice(start, start + per)


def shard(batch: Any) -> Any:
    """[local_batch, ...] numpy → [local_devices, local_batch / local_devices, ...]."""
    d = jax.local_device_count()

    def _reshape(x):
        x = np.asarray(x)
        if x.shape[0] % d:
            raise ValueError(f"local batch {x.shape[0]} is not divisible by the {d} local devices")
        return x.reshape((d, x.shape[0] // d) + x.shape[1:])

    return tree_map(_reshape, batch)


def global_batch_size(requested: int) -> int:
    """Rounds a requested global batch up to a multiple of the total device count."""
    n = jax.device_count()
    return max(n, ((requested + n - 1) // n) * n)


def grain_process_prefetch(make: Callable[[int], Any], start: int, stop: int, workers: int, buffer: int):
    """An iterator over `make(step)` for step in [start, stop), made by `workers` Grain worker processes, each
    `buffer` elements ahead, returned in step order; `.close()` stops the workers.

    Drift wrapped here: Grain's dataset API (`grain.MapDataset` / `IterDataset.mp_prefetch`; tested with
    grain 0.2.18, setup.cfg) and its absl flags, which Grain reads when it starts workers and which raise
    `UnparsedFlagAccessError` in a program that never parsed absl flags (a library caller, a benchmark, pytest):
    they are marked parsed with their defaults then. Workers are spawned (not forked) and get `make` by
    cloudpickle once; elements come back through shared memory."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    dataset = grain.MapDataset.range(start, stop).map(make)
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))
    return iter(iterable)
