"""The JIT's own specialisation of a launch, with no GPU: what ``JITFunction.run`` would compile.

``capture(arch)`` runs launcher code with triton's real ``JITFunction.run`` against a stand-in driver
for ``sm_<arch>`` (device, stream, target) and triton's ``knobs.runtime.jit_cache_hook``, which the JIT
calls with exactly the (signature, constants, attributes, options) it is about to compile; the hook
records them and declines the compile, so nothing compiles or runs. Under ``TRITON_INTERPRET=1`` the
kernels are ``InterpretedFunction``s: each launch is forwarded to a ``JITFunction`` twin built from the
same Python function, so the specialisation is the same with and without the interpreter.

``spec_from_launch`` turns one recorded launch into an ``AotSpec`` (name-keyed: readable);
``kernels._aot.ast_source`` turns it back into the JIT's path-keyed form, and
``tests/test_aot_compile.py`` checks that the round trip reproduces the JIT's values exactly.
"""
import contextlib
import dataclasses
import json

from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

_TWINS = {}  # id(InterpretedFunction) -> (InterpretedFunction, JITFunction twin)


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One binary of one kernel.

    ``signature`` maps every runtime argument to a Triton type string ("*fp32", "*fp16", "*bf16", "i32",
    "i64", "fp32"); ``constexprs`` maps every ``tl.constexpr`` argument, and every int the JIT turned into
    a constant (value 1), to its value. ``aligned``: the arguments the JIT marks divisible by 16
    (16-byte aligned pointers, ints ≡ 0 mod 16). Made by ``spec_from_launch`` from what the JIT computes.
    """

    kernel: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    label: str
    aligned: tuple

    def aligned_names(self):
        return tuple(self.aligned)

    def key(self):
        """What makes two specs the same binary."""
        return (self.kernel.__name__, tuple(sorted(self.signature.items())),
                tuple(sorted((k, repr(v)) for k, v in self.constexprs.items())),
                tuple(sorted(self.aligned_names())), self.num_warps, self.num_stages)


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as the JIT specialises it, in the JIT's own (path-keyed) terms."""

    kernel: object  # the module's kernel object (JITFunction; InterpretedFunction under the interpreter)
    signature: dict  # argument name -> type, "constexpr" for constants
    constants: dict  # (index,) -> value
    attrs: dict  # (index,) -> [["tt.divisibility", 16]] or []
    options: dict  # the JIT's backend options for the target (CUDAOptions fields, JSON-normalised)
    explicit: frozenset  # the keyword options the launch passed (num_warps, num_stages, ...)


def jit_twin(kernel):
    """``kernel`` itself if it is a ``JITFunction``; under the interpreter, a ``JITFunction`` of the same
    Python function and specialisation settings (never compiled: used for its binder)."""
    if isinstance(kernel, JITFunction):
        return kernel
    hit = _TWINS.get(id(kernel))
    if hit is None:
        opts = getattr(kernel, "kwargs", {})
        twin = JITFunction(kernel.fn, do_not_specialize=opts.get("do_not_specialize"),
                           do_not_specialize_on_alignment=opts.get("do_not_specialize_on_alignment"))
        hit = _TWINS[id(kernel)] = (kernel, twin)
    return hit[1]


def kernel_params(kernel):
    """Triton's ``KernelParam`` list of ``kernel`` (a JIT or an interpreted function)."""
    return jit_twin(kernel).params


class _StandInDriver:
    """What ``JITFunction.run`` asks the active driver before compiling: device, stream, target."""

    def __init__(self, arch):
        self.arch = arch

    def get_current_device(self):
        return f"aot-capture-sm_{self.arch}"  # its own entry in the kernels' per-device caches

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)


@contextlib.contextmanager
def capture(arch=90):
    """``with capture() as launches: launcher(...)``: record, as ``Launch``es, what each kernel launch
    made by the launcher would compile on ``sm_<arch>``; no kernel is compiled or run. Not thread-safe
    (it swaps triton's active driver, cache hook and ``run`` methods for its duration)."""
    from triton import knobs
    from triton.runtime.driver import driver
    from triton.runtime.interpreter import InterpretedFunction

    launches, explicit = [], []
    originals = {id(twin): kernel for kernel, twin in _TWINS.values()}
    real_run = JITFunction.__dict__["run"]
    interpreted_run = InterpretedFunction.__dict__["run"]

    def run(self, *args, grid, warmup, **kwargs):
        explicit.append(frozenset(kwargs))
        try:
            return real_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            explicit.pop()

    def run_twin(self, *args, grid, warmup, **kwargs):
        twin = jit_twin(self)
        originals[id(twin)] = self
        return twin.run(*args, grid=grid, warmup=warmup, **kwargs)

    def hook(*, fn, compile, **_):
        jit = fn.jit_function
        data = json.loads(compile["specialization_data"])
        launches.append(Launch(originals.get(id(jit), jit), dict(compile["signature"]), dict(compile["constants"]),
                               dict(compile["configs"][0]), data["options"], explicit[-1]))
        return True  # handled: the JIT compiles nothing and launches nothing

    saved_driver, saved_hook = driver._active, knobs.runtime.jit_cache_hook  # _active: no public getter
    driver.set_active(_StandInDriver(arch))
    knobs.runtime.jit_cache_hook = hook
    JITFunction.run, InterpretedFunction.run = run, run_twin
    try:
        yield launches
    finally:
        JITFunction.run, InterpretedFunction.run = real_run, interpreted_run
        knobs.runtime.jit_cache_hook = saved_hook
        driver._active = saved_driver


def spec_from_launch(launch, label):
    """The ``AotSpec`` of the binary the JIT builds for ``launch``, which must pass num_warps and
    num_stages explicitly (the launch and the AOT compile then read them from the same table)."""
    name = launch.kernel.__name__
    missing = [k for k in ("num_warps", "num_stages") if k not in launch.explicit]
    if missing:
        raise ValueError(f"{name} [{label}]: launched without explicit {', '.join(missing)}")
    names = list(launch.signature)
    if any(len(path) != 1 for path in (*launch.constants, *launch.attrs)):
        raise ValueError(f"{name}: tuple arguments are not supported by AotSpec")
    constexprs = {names[path[0]]: value for path, value in launch.constants.items()}
    aligned = tuple(names[path[0]] for path, value in launch.attrs.items() if ["tt.divisibility", 16] in value)
    signature = {k: ty for k, ty in launch.signature.items() if ty != "constexpr"}
    return AotSpec(launch.kernel, signature, constexprs, launch.options["num_warps"], launch.options["num_stages"],
                   label, aligned)


def specs_from_launches(calls, arch=90):
    """Distinct ``AotSpec``s of every kernel launch made by ``calls`` ((label, launcher, args, kwargs)
    tuples) on ``sm_<arch>``, or on each arch of a tuple ``arch`` (the union: for launchers whose tables
    depend on the arch), in first-seen order, each labelled by the first call that made it."""
    calls = list(calls)
    specs = {}
    for target in (arch,) if isinstance(arch, int) else arch:
        for label, fn, args, kwargs in calls:
            with capture(target) as launches:
                fn(*args, **kwargs)
            if not launches:
                raise ValueError(f"{label}: {getattr(fn, '__name__', fn)} launched no kernel")
            for launch in launches:
                spec = spec_from_launch(launch, label)
                specs.setdefault(spec.key(), spec)
    return list(specs.values())
