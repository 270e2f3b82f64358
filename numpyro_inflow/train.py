r"""Training learned denoisers: `init_flow`, `train_flow` (a compiled optax loop) and `fit`.

The loop minimises the denoising score-matching loss and returns an exponential moving
average (EMA) of the weights, its half-life ramped up from zero (de Albuquerque & Pearson
2024). Batches come from a key folded with the step, so a run is a pure function of its
key and settings: a resumed run ends the same, and so (to rounding) does a sharded one.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._checks import as_float_array, check_positive
from .checkpoint import Checkpoints, fingerprint
from .denoiser import LearnedDenoiser, denoising_loss, denoising_loss_terms
from .flow import InflationaryFlow
from .schedule import InflationSchedule
from .scores import AbstractScore

__all__ = ["TrainingHistory", "adam_warmup_cosine", "fit", "fit_with_history", "init_flow"]
__all__ += ["train_flow"]

_CHUNK = 100  # steps per compiled call
_ARRAYS = lambda _, leaf: isinstance(leaf, jax.Array)  # noqa: E731


@dataclasses.dataclass
class TrainingHistory:
    """What happened during `train_flow` (or `fit_with_history`).

    Attributes:
        loss: ``(steps_done,)`` training loss of every step (raw weights, its batch).
        val_step: steps at which the validation loss was measured.
        val_loss: held-out loss of the EMA weights there (fixed draws of ``t`` and noise).
        steps: steps completed (including those of a resumed run).
        batch_size: global batch size.
        wall_time: seconds spent in this call (not counting earlier, resumed parts).
        stopped: ``None`` when all steps ran; otherwise why training stopped early.
        config: the training settings.
        raw_score: the score with the last raw (not averaged) weights.
    """

    loss: np.ndarray
    val_step: list[int]
    val_loss: list[float]
    steps: int
    batch_size: int
    wall_time: float
    stopped: str | None
    config: dict
    raw_score: AbstractScore | None = None

    @property
    def samples_seen(self) -> int:
        """Training examples drawn (``steps * batch_size``)."""
        return self.steps * self.batch_size

    def to_dict(self) -> dict:
        """A JSON-serialisable dictionary."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[:-1]}  # no raw_score
        return d | {"loss": [float(v) for v in self.loss], "samples_seen": self.samples_seen}


class _State(eqx.Module):
    params: Any
    ema: Any
    opt_state: Any
    step: jax.Array
    failed: jax.Array


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}; got {value!r}")
    return int(value)


def _prepare_data(x, name: str = "x", dim: int | None = None, held_out: int = 0) -> jax.Array:
    x = as_float_array(x, name)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = "(N, D) of N samples" if dim is None else f"(N, {dim})"
        raise ValueError(f"{name}: expected a 2-D array {want}; got shape {tuple(x.shape)}")
    bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(x)), axis=1))
    if bad.size:
        raise ValueError(
            f"{name}: expected finite values; got {bad.size} row(s) with NaN/inf (first: row "
            f"{bad[0]}). Drop them, e.g. x[np.isfinite(x).all(axis=1)]"
        )
    (n, d), n_train = x.shape, x.shape[0] - held_out
    if dim is None and n_train < d + 1:
        raise ValueError(
            f"{name}: expected at least D + 1 = {d + 1} training samples to estimate the "
            f"{d}-dimensional eigenbasis; got {n_train} of {n}"
            + (f" after holding out {held_out} for validation" if held_out else "")
        )
    return x


def init_flow(x, keep=None, *, seed=0, network: dict | None = None, **schedule) -> InflationaryFlow:
    r"""The untrained flow of data ``x``: its schedule and a fresh `LearnedDenoiser`.

    The output layer starts at zero (unless ``output_scale`` says otherwise): the
    untrained denoiser is the Wiener filter, exact for Gaussian data.

    Args:
        x: data ``(N, D)`` with ``N > D``, floating point and finite.
        keep: ``None`` for a PR-preserving flow, ``k`` to keep ``k`` principal directions.
        seed: the weights use the first key of ``jax.random.split(jax.random.key(seed), 3)``.
        network: ``architecture`` (``"mlp"`` or ``"unet"`` for square images), ``space``
            (``"eigen"``/``"data"``) and hyperparameters (see `numpyro_inflow.nets`).
        **schedule: keyword arguments of `InflationSchedule.from_data`; PR-reducing
            flows default to ``inflation_gap=1``, which trains better than ``None``.

    Returns:
        The `InflationaryFlow` (default solver settings; change them with ``replace``).

    Raises:
        ValueError: for bad data, too few samples, or a bad schedule or network option.

    Examples:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 3)).astype("float32")
        >>> init_flow(x, keep=1, network=dict(width=8, depth=1)).latent_dim
        1
    """
    x = _prepare_data(x)
    gap = {"inflation_gap": 1.0} if keep is not None else {}
    sch = InflationSchedule.from_data(np.asarray(x), keep=keep, **{**gap, **schedule})
    net = dict(network or {})
    arch, space = net.pop("architecture", "mlp"), net.pop("space", None)
    key = jax.random.split(jax.random.key(_check_int(seed, "seed", 0)), 3)[0]
    den = LearnedDenoiser.init(key, x.shape[1], sch.t_end, arch, space, str(x.dtype), **net)
    return InflationaryFlow(sch, den)


def _clipped_adam(learning_rate, grad_clip):
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(learning_rate))


def adam_warmup_cosine(
    steps: int,
    learning_rate: float = 2e-3,
    *,
    warmup_steps=None,
    final_lr_fraction=0.01,
    grad_clip=1.0,
) -> optax.GradientTransformation:
    """Adam with linear warm-up, cosine decay and gradient clipping (`fit`'s optimiser).

    Args:
        steps: length of the run (the decay ends there).
        learning_rate: peak learning rate.
        warmup_steps: linear warm-up length (default 5 % of ``steps``).
        final_lr_fraction: the cosine decay ends at this fraction of the peak.
        grad_clip: clip gradients to this global norm.

    Returns:
        The optimiser; its state holds the current learning rate (``inject_hyperparams``).

    Raises:
        ValueError: for settings out of range.

    Examples:
        >>> opt = adam_warmup_cosine(1000, 1e-3)
        >>> float(opt.init({"w": jax.numpy.zeros(2)}).hyperparams["learning_rate"])
        0.0
    """
    steps, peak = _check_int(steps, "steps"), check_positive(learning_rate, "learning_rate")
    if not 0 <= float(final_lr_fraction) <= 1:
        raise ValueError(
            f"final_lr_fraction: expected a number in [0, 1]; got {final_lr_fraction!r}"
        )
    warmup = max(1, steps // 20) if warmup_steps is None else warmup_steps
    warmup = min(_check_int(warmup, "warmup_steps", 0), steps - 1)
    lr = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, peak * final_lr_fraction)
    clip = check_positive(grad_clip, "grad_clip")
    return optax.inject_hyperparams(_clipped_adam, static_args="grad_clip")(lr, clip)


@dataclasses.dataclass(frozen=True)
class _Loop:
    """The training loop: compiled chunks of steps, validation, checkpoints, progress."""

    optimiser: optax.GradientTransformation
    static: Any  # the score without its trained arrays
    cfg: dict  # the settings the fingerprint covers
    chunk: int
    sharding: NamedSharding  # of a batch
    eval_every: int
    checkpoints: Checkpoints | None

    def score(self, params) -> AbstractScore:
        return eqx.combine(params, self.static)

    def _step(self, st: _State, sch, data, key):
        cfg = self.cfg
        kb, kl = jax.random.split(jax.random.fold_in(key, st.step))
        idx = jax.random.randint(kb, (cfg["batch_size"],), 0, data.shape[0])
        u0 = jax.lax.with_sharding_constraint(data[idx], self.sharding)
        loss_fn = lambda p: denoising_loss(self.score(p), sch, u0, kl, cfg["t_min"])  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(st.params)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        updates, opt_state = self.optimiser.update(grads, st.opt_state, st.params)
        params = optax.apply_updates(st.params, updates)
        # EMA with half-life min(half_life, rampup * step): beta = 0.5 ** (1 / half-life)
        ramp = cfg["ema_rampup"] * (st.step + 1).astype(loss.dtype)
        beta = 0.5 ** (1.0 / jnp.minimum(cfg["ema_half_life"], ramp))
        ema = jax.tree.map(lambda e, p: beta * e + (1 - beta) * p, st.ema, params)
        active = (st.step < cfg["steps"]) & ~st.failed
        ok = active & finite
        new = _State(params, ema, opt_state, st.step + 1, st.failed)
        st = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, st)
        return eqx.tree_at(lambda s: s.failed, st, st.failed | (active & ~finite)), (loss, ok)

    def run_chunk(self, state: _State, sch, data, key):
        step = lambda st, _: self._step(st, sch, data, key)  # noqa: E731
        return jax.lax.scan(step, state, None, length=self.chunk)

    def validation_loss(self, params, sch, u0, t, eps):
        return jnp.mean(denoising_loss_terms(self.score(params), sch, u0, t, eps))

    def save(self, state: _State, h: TrainingHistory, fp: str) -> None:
        meta = dict(step=h.steps, fingerprint=fp, settings=h.config, loss=h.loss)
        if self.checkpoints is not None:
            self.checkpoints.save(state, {**meta, "val_step": h.val_step, "val_loss": h.val_loss})

    def run(self, state, args, val, h: TrainingHistory, fp: str, progress, callback):
        """Compiled chunks until done or stopped; ``h`` is updated as they run."""
        from tqdm.auto import tqdm

        chunk_jit, val_jit = jax.jit(self.run_chunk), jax.jit(self.validation_loss)
        steps, every, done = self.cfg["steps"], getattr(self.checkpoints, "every", 0) or 0, h.steps
        last_val = (h.val_loss or [None])[-1]
        crossed = lambda n: n and h.steps // n > done // n  # noqa: E731 (a multiple of n passed)
        bar = tqdm(total=steps, initial=done, disable=not progress, unit="step", desc="train")
        with bar:
            while done < steps:
                t0 = time.perf_counter()
                state, (loss, ok) = chunk_jit(state, *args)
                loss, ok, h.steps = np.asarray(loss), np.asarray(ok), int(state.step)
                h.loss += loss[ok].tolist()
                rate = (h.steps - done) * h.batch_size / (time.perf_counter() - t0)
                if bool(state.failed):
                    h.stopped = (
                        f"non-finite loss or gradient at step {h.steps + 1} (loss "
                        f"{loss[np.argmin(ok)]}); kept the last good state (step {h.steps}). "
                        "Lower the learning rate or the gradient clipping, or check the data."
                    )
                    warnings.warn(f"train: {h.stopped}", RuntimeWarning, stacklevel=3)
                    break
                if val is not None and (crossed(self.eval_every) or h.steps >= steps):
                    last_val = float(val_jit(state.ema, args[0], *val))
                    h.val_step.append(h.steps)
                    h.val_loss.append(last_val)
                if h.steps >= steps or crossed(every):
                    self.save(state, h, fp)
                bar.update(h.steps - done)
                post = {"loss": f"{np.mean(loss[ok]):.4g}", "samples/s": f"{rate:.3g}"}
                val_post = {} if last_val is None else {"val": f"{last_val:.4g}"}
                bar.set_postfix(post | val_post, False)
                done = h.steps
                lr = optax.tree_utils.tree_get(state.opt_state, "learning_rate", None, _ARRAYS)
                metrics = dict(step=done, loss=float(np.mean(loss[ok])), val_loss=last_val)
                metrics["samples_seen"] = h.samples_seen
                metrics["learning_rate"] = lr if lr is None else float(lr)
                if callback is not None and callback(done, metrics) is False:
                    h.stopped = f"stopped by the callback at step {done}"
                    break
        if h.stopped is not None and h.steps > 0:
            self.save(state, h, fp)
        return state


def _validation_draws(sch, x_val, key, t_min, n_dev, sharding):
    """Fixed inputs: at least 8 noise draws per point, up to 4096 in all."""
    n_val, d = x_val.shape
    n_eval = n_dev * math.ceil(max(n_val, min(4096, 8 * n_val)) / n_dev)
    kv1, kv2 = jax.random.split(key)
    u0 = sch.to_eigen(jnp.asarray(x_val))[jnp.arange(n_eval) % n_val]
    t = jax.random.uniform(kv1, (n_eval,), x_val.dtype, t_min, sch.t_end)
    eps = jax.random.normal(kv2, (n_eval, d), x_val.dtype)
    return jax.device_put((u0, t, eps), sharding)


def _shardings(devices, batch_size):
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices: expected at least one device; got an empty list")
    if batch_size % len(devices):
        raise ValueError(
            f"batch_size: expected a multiple of the number of devices ({len(devices)}); "
            f"got {batch_size}"
        )
    mesh = Mesh(np.array(devices), ("batch",))
    return len(devices), NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))


def train_flow(
    flow: InflationaryFlow,
    x,
    optimiser: optax.GradientTransformation,
    *,
    steps: int,
    batch_size: int,
    key: jax.Array,
    validation=None,
    t_min=1e-7,
    ema_half_life=None,
    ema_rampup=0.1,
    eval_every=None,
    devices=None,
    checkpoints: Checkpoints | None = None,
    progress=True,
    callback=None,
    settings: dict | None = None,
) -> tuple[InflationaryFlow, TrainingHistory]:
    r"""Train the score of ``flow`` on data ``x`` by denoising score matching.

    Every floating-point array of ``flow.score`` is trained; the schedule stays fixed.
    Each step draws a batch with replacement, times $t \sim U[t_{min}, T]$ and noise, and
    applies ``optimiser`` to the gradient of `denoising_loss`.

    Args:
        flow: the flow to train, e.g. from `init_flow`.
        x: training data ``(N, D)``, floating point and finite.
        optimiser: an ``optax.GradientTransformation`` (e.g. `adam_warmup_cosine`).
        steps: optimisation steps.
        batch_size: examples per step, all devices together (a multiple of their number).
        key: PRNG key; batches use the second and validation draws the third key of
            ``jax.random.split(key, 3)`` (the first is `init_flow`'s).
        validation: held-out data ``(M, D)`` for the validation loss, or ``None``.
        t_min: smallest training time.
        ema_half_life: half-life of the weight average in steps (default ``steps / 20``).
        ema_rampup: the half-life used at a step is ``min(ema_half_life, ema_rampup * step)``.
        eval_every: steps between validation losses (default about ``steps / 20``).
        devices: devices to shard the batch over (default: all visible devices).
        checkpoints: where to write checkpoints and whether to resume.
        progress: show a progress bar.
        callback: ``callback(step, metrics)`` after every compiled chunk (``step``, ``loss``,
            ``val_loss``, ``samples_seen``, ``learning_rate``); ``False`` stops training.
        settings: JSON-serialisable description of anything else that determines the run
            (e.g. the optimiser's hyperparameters); a resumed run must match.

    Returns:
        ``(flow, history)``: the flow with the EMA weights, and the `TrainingHistory`.

    Raises:
        ValueError: for bad data or settings, or a checkpoint of another run.

    Warns:
        RuntimeWarning: when a non-finite loss or gradient stops training.

    Examples:
        >>> import jax, numpy as np
        >>> x = np.random.default_rng(0).normal(size=(500, 2)).astype("float32")
        >>> flow0 = init_flow(x, network=dict(width=16, depth=1))
        >>> flow, history = train_flow(flow0, x, adam_warmup_cosine(20), steps=20,
        ...                            batch_size=64, key=jax.random.key(0), progress=False)
        >>> history.steps, flow.encode(x[:3]).shape
        (20, (3, 2))
    """
    if not isinstance(flow, InflationaryFlow):
        raise ValueError(f"flow: expected an InflationaryFlow; got {type(flow).__name__}")
    if not isinstance(checkpoints, Checkpoints | None):
        raise ValueError(f"checkpoints: expected a Checkpoints or None; got {checkpoints!r}")
    x = _prepare_data(x, dim=flow.dim)
    if validation is not None:
        validation = _prepare_data(validation, "validation", dim=flow.dim)
    steps, batch_size = _check_int(steps, "steps"), _check_int(batch_size, "batch_size")
    half_life = max(1, steps // 20) if ema_half_life is None else ema_half_life
    cfg = dict(steps=steps, batch_size=batch_size, t_min=check_positive(t_min, "t_min"))
    cfg.update(ema_half_life=_check_int(half_life, "ema_half_life"))
    cfg.update(ema_rampup=check_positive(ema_rampup, "ema_rampup"))
    cfg.update(key=np.asarray(jax.random.key_data(key)).tolist(), **(settings or {}))
    base = min(_CHUNK, steps)  # checkpoints and evaluations fall on chunk boundaries
    if eval_every is None:  # about 20 evaluations, on whole chunks
        eval_every = base * max(1, round(steps / 20 / base))
    eval_every = _check_int(eval_every, "eval_every")
    chunk = math.gcd(base, eval_every, getattr(checkpoints, "every", 0) or 0)
    n_dev, replicated, batched = _shardings(devices, batch_size)
    params, static = eqx.partition(flow.score, eqx.is_inexact_array)
    loop = _Loop(optimiser, static, cfg, chunk, batched, eval_every, checkpoints)
    fp = fingerprint((x, validation, flow.schedule, params), cfg)
    zero = jnp.zeros((), jnp.int32)
    state = _State(params, params, optimiser.init(params), zero, zero.astype(bool))
    meta = dict(loss=[], val_step=[], val_loss=[], step=0)
    if checkpoints and (restored := checkpoints.restore(state, fp)):
        state, meta = restored
    h = [meta[k] for k in ("loss", "val_step", "val_loss", "step")]
    history = TrainingHistory(*h, batch_size, 0.0, None, cfg)
    sch, (_, k_train, k_val) = flow.schedule, jax.random.split(key, 3)
    if validation is not None:
        validation = _validation_draws(sch, validation, k_val, cfg["t_min"], n_dev, batched)
    state, args = jax.device_put((state, (sch, sch.to_eigen(x).astype(x.dtype))), replicated)
    args, t0 = (*args, k_train), time.perf_counter()
    state = jax.device_get(loop.run(state, args, validation, history, fp, progress, callback))
    history.loss, history.raw_score = np.asarray(history.loss, x.dtype), loop.score(state.params)
    history.wall_time = time.perf_counter() - t0
    return eqx.tree_at(lambda f: f.score, flow, loop.score(state.ema)), history


def fit(
    x,
    keep: int | None = None,
    steps: int = 20_000,
    batch_size: int = 512,
    seed: int = 0,
    *,
    schedule: dict | None = None,
    network: dict | None = None,
    optimiser: dict | optax.GradientTransformation | None = None,
    validation_fraction: float = 0.1,
    **train_options,
) -> InflationaryFlow:
    r"""Train a denoiser on data ``x`` and return the inflationary flow it defines.

    Holds out ``validation_fraction`` of ``x`` (permuted by ``seed``), then runs
    `init_flow` and `train_flow` on the rest. The defaults train the paper's 2-3
    dimensional toy sets in a few minutes on two CPU cores.

    Args:
        x: data ``(N, D)``, floating point and finite.
        keep: ``None`` for a PR-preserving flow, ``k`` to keep ``k`` principal directions.
        steps: optimisation steps.
        batch_size: examples per step (all devices together).
        seed: seed of everything random (initialisation, split, batches, noise).
        schedule: keyword arguments of `InflationSchedule.from_data` (see `init_flow`).
        network: architecture and hyperparameters, e.g. ``dict(width=64)`` (see `init_flow`).
        optimiser: keyword arguments of `adam_warmup_cosine`, or an optax optimiser (not
            part of the fingerprint that a resumed run must match).
        validation_fraction: share of ``x`` held out for the validation loss (0: none).
        **train_options: keyword arguments of `train_flow` (``progress``, ``checkpoints``, ...).

    Returns:
        The `InflationaryFlow` with the EMA denoiser (default solver settings).

    Raises:
        ValueError: for bad data, a setting out of range, or a checkpoint of another run.

    Warns:
        RuntimeWarning: when a non-finite loss stops training.

    Examples:
        >>> import numpy as np, numpyro_inflow as nif
        >>> x = np.random.default_rng(0).normal(size=(500, 2)).astype("float32")
        >>> flow = nif.fit(x, steps=20, batch_size=64, progress=False,
        ...                network=dict(width=16, depth=1))
        >>> flow.encode(x[:3]).shape
        (3, 2)
    """
    args = schedule, network, optimiser, validation_fraction, train_options
    return _fit(x, keep, steps, batch_size, seed, *args)[0]


def fit_with_history(*args, **kwargs) -> tuple[InflationaryFlow, TrainingHistory]:
    """`fit` (with the same arguments), also returning the `TrainingHistory`.

    Returns:
        ``(flow, history)``.

    Examples:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(500, 2)).astype("float32")
        >>> flow, history = fit_with_history(x, steps=20, batch_size=64, progress=False,
        ...                                  network=dict(width=16, depth=1))
        >>> history.steps, len(history.loss)
        (20, 20)
    """
    bound = inspect.signature(fit).bind(*args, **kwargs)
    bound.apply_defaults()
    return _fit(*bound.arguments.values())


def _fit(x, keep, steps, batch_size, seed, schedule, network, optimiser, val_fraction, options):
    steps, seed = _check_int(steps, "steps"), _check_int(seed, "seed", 0)
    if not 0 <= float(val_fraction) < 1:
        raise ValueError(f"validation_fraction: expected a number in [0, 1); got {val_fraction!r}")
    n = np.shape(x)[0] if np.ndim(x) == 2 else 0
    n_val = max(1, round(float(val_fraction) * n)) if val_fraction else 0
    xn = np.asarray(_prepare_data(x, held_out=n_val))
    recipe = "an optax optimiser"
    if optimiser is None or isinstance(optimiser, dict):
        recipe = dict(optimiser or {})
        optimiser = adam_warmup_cosine(steps, **recipe)
    elif not isinstance(optimiser, optax.GradientTransformation):
        raise ValueError(
            f"optimiser: expected a dict of adam_warmup_cosine options or an optax "
            f"optimiser; got {type(optimiser).__name__}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    x_train, x_val = xn[perm[: n - n_val]], (xn[perm[n - n_val :]] if n_val else None)
    flow = init_flow(x_train, keep, seed=seed, network=network, **(schedule or {}))
    settings = dict(keep=keep, seed=seed, schedule=schedule or {}, network=flow.score.config())
    settings.update(optimiser=recipe, validation_fraction=val_fraction)
    return train_flow(
        flow,
        x_train,
        optimiser,
        steps=steps,
        batch_size=batch_size,
        key=jax.random.key(seed),
        validation=x_val,
        settings=settings,
        **options,
    )
