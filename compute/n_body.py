"""Gravitational N-body simulation: the Benchmarks Game solar system and random clusters.

Units are those of the Computer Language Benchmarks Game n-body program: astronomical
units, years, and masses stored as gravitational parameters ``mu = G m`` with
``G = 4 pi**2`` and ``m`` in solar masses (the Sun has ``mu = 4 pi**2``), so ``G`` never
appears below. Energies come out in those units (the game's -0.169075164 for the solar
system)::

    E = sum_i mu_i |v_i|**2 / 2  -  sum_{i<j} mu_i mu_j / sqrt(|x_i - x_j|**2 + eps**2)
    a_i = sum_{j != i} mu_j (x_j - x_i) / (|x_j - x_i|**2 + eps**2)**(3/2)

Two presets:

* ``SOLAR_SYSTEM``: the game's Sun, Jupiter, Saturn, Uranus and Neptune, momentum
  offset on the Sun, no softening, advanced by the game's own integrator: symplectic
  (semi-implicit) Euler, i.e. velocities from all pair forces with ``dt``, then
  positions ``+= dt v``, with the game's pair loop and operation order, so its printed
  figures reproduce: -0.169075164 at the start, -0.169087605 after 1000 steps of 0.01.
* ``RANDOM_CLUSTER``: ``bodies`` equal masses totalling one solar mass, uniform in the
  unit ball, velocities uniform in a ball, shifted to the centre-of-mass frame and
  scaled to virial equilibrium (2 K = |W|). Plummer softening ``eps = SOFTENING`` AU.
  Kick-drift-kick leapfrog (velocity Verlet; second order, symplectic, time reversible).
  Each body's acceleration is summed on its own in a fixed order, so the result is
  bitwise the same for any number of threads or chunking.

Random numbers come from :mod:`compute.random`: body ``b`` uses doubles ``6 b .. 6 b + 5``
of stream ``(seed, 0)``, three for its position and three for its velocity.

Entry points: :data:`KIND` (validate/start/warm_up for the runner), :func:`run_preset`,
the building blocks :func:`solar_system`, :func:`random_cluster`, :func:`energy`,
:func:`advance_symplectic_euler`, :func:`simulate` (parallel or serial numba), and for
benchmarks :func:`simulate_numpy` and :func:`simulate_python`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from crunchql.compute import config
from crunchql.compute.base import JSONDict
from crunchql.compute.params.n_body import NBodyParams
from crunchql.compute.random import stream_key_py, uniforms_np

SOFTENING = config.SOFTENING
"""Plummer softening length eps of RANDOM_CLUSTER in AU (defined in :mod:`compute.config`)."""


# ---- the Benchmarks Game's solar system --------------------------------------------------

SOLAR_MASS = 4.0 * math.pi * math.pi
DAYS_PER_YEAR = 365.24
_PLANETS = (  # position (AU), velocity (AU/day), mass (solar masses)
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0),  # Sun
    (
        (4.84143144246472090e00, -1.16032004402742839e00, -1.03622044471123109e-01),
        (1.66007664274403694e-03, 7.69901118419740425e-03, -6.90460016972063023e-05),
        9.54791938424326609e-04,
    ),  # Jupiter
    (
        (8.34336671824457987e00, 4.12479856412430479e00, -4.03523417114321381e-01),
        (-2.76742510726862411e-03, 4.99852801234917238e-03, 2.30417297573763929e-05),
        2.85885980666130812e-04,
    ),  # Saturn
    (
        (1.28943695621391310e01, -1.51111514016986312e01, -2.23307578892655734e-01),
        (2.96460137564761618e-03, 2.37847173959480950e-03, -2.96589568540237556e-05),
        4.36624404335156298e-05,
    ),  # Uranus
    (
        (1.53796971148509165e01, -2.59193146099879641e01, 1.79258772950371181e-01),
        (2.68067772490389322e-03, 1.62824170038242295e-03, -9.51592254519715870e-05),
        5.15138902046611451e-05,
    ),  # Neptune
)


def solar_system() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Benchmarks Game's initial state, momentum offset on the Sun.

    Returns
    -------
    positions : np.ndarray
        float64, shape ``(5, 3)``, AU.
    velocities : np.ndarray
        float64, shape ``(5, 3)``, AU/year (the game's AU/day values times 365.24); the
        Sun's is ``-sum_{i>0} mu_i v_i / mu_sun`` so the total momentum is zero.
    masses : np.ndarray
        float64, shape ``(5,)``, ``mu = 4 pi**2 m / M_sun``.
    """
    positions = np.array([p for p, _, _ in _PLANETS], dtype=np.float64)
    velocities = np.array([[c * DAYS_PER_YEAR for c in v] for _, v, _ in _PLANETS])
    masses = np.array([m * SOLAR_MASS for _, _, m in _PLANETS])
    momentum = np.zeros(3)
    for i in range(len(masses)):  # the game's order of summation
        momentum += velocities[i] * masses[i]
    velocities[0] = -momentum / SOLAR_MASS
    return positions, velocities, masses


# ---- kernels -------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _advance_symplectic_euler(pos, vel, mu, dt, steps):  # type: ignore[no-untyped-def]
    """The Benchmarks Game's ``advance``, ``steps`` times, in place (see the module doc).

    ``pos`` and ``vel`` are C-contiguous ``(n, 3)`` arrays, worked on through flat views
    with unsigned indices: body ``i``'s coordinates are ``3 i .. 3 i + 2``, a compile-time
    stride (the 2-D form multiplies by the run-time row stride on every access), and
    numba emits no negative-index wraparound code for unsigned indices. The floating-point
    operations and their order are those of the game's loop, so the results are bitwise
    those of the 2-D form.
    """
    x = pos.reshape(pos.size)  # views: the updates land in pos and vel
    v = vel.reshape(vel.size)
    one = np.uint64(1)
    two = np.uint64(2)
    three = np.uint64(3)
    n = np.uint64(mu.size)
    for _ in range(steps):
        for i in range(n):
            a = i * three
            mu_i = mu[i]
            for j in range(i + one, n):
                b = j * three
                dx = x[a] - x[b]
                dy = x[a + one] - x[b + one]
                dz = x[a + two] - x[b + two]
                d2 = dx * dx + dy * dy + dz * dz
                mag = dt / (d2 * math.sqrt(d2))
                mj = mu[j] * mag
                v[a] -= dx * mj
                v[a + one] -= dy * mj
                v[a + two] -= dz * mj
                mi = mu_i * mag
                v[b] += dx * mi
                v[b + one] += dy * mi
                v[b + two] += dz * mi
        for k in range(n * three):
            x[k] += dt * v[k]


@njit(inline="always")
def _acceleration_of(pos, mu, eps2, acc, i):  # type: ignore[no-untyped-def]
    """``acc[i] = sum_{j != i} mu_j (x_j - x_i) / (r**2 + eps2)**1.5``, j ascending."""
    xi = pos[i, 0]
    yi = pos[i, 1]
    zi = pos[i, 2]
    ax = 0.0
    ay = 0.0
    az = 0.0
    for j in range(mu.size):
        if j != i:
            dx = pos[j, 0] - xi
            dy = pos[j, 1] - yi
            dz = pos[j, 2] - zi
            r2 = dx * dx + dy * dy + dz * dz + eps2
            s = mu[j] / (r2 * math.sqrt(r2))
            ax += dx * s
            ay += dy * s
            az += dz * s
    acc[i, 0] = ax
    acc[i, 1] = ay
    acc[i, 2] = az


@njit(inline="always")
def _potential_of(pos, mu, eps2, i):  # type: ignore[no-untyped-def]
    """``-mu_i sum_{j > i} mu_j / sqrt(r**2 + eps2)``, j ascending."""
    total = 0.0
    for j in range(i + 1, mu.size):
        dx = pos[j, 0] - pos[i, 0]
        dy = pos[j, 1] - pos[i, 1]
        dz = pos[j, 2] - pos[i, 2]
        total += mu[j] / math.sqrt(dx * dx + dy * dy + dz * dz + eps2)
    return -mu[i] * total


@njit(inline="always")
def _kick_drift(pos, vel, acc, half_dt, dt):  # type: ignore[no-untyped-def]
    """Half kick then drift, in place: ``v += a dt/2; x += v dt`` (arrays ``(n, 3)`` float64)."""
    for i in range(pos.shape[0]):
        for k in range(3):
            vel[i, k] += half_dt * acc[i, k]
            pos[i, k] += dt * vel[i, k]


@njit(inline="always")
def _kick(vel, acc, half_dt):  # type: ignore[no-untyped-def]
    """Half kick in place: ``v += a dt/2`` (arrays ``(n, 3)`` float64)."""
    for i in range(vel.shape[0]):
        for k in range(3):
            vel[i, k] += half_dt * acc[i, k]


@njit(cache=True, nogil=True, parallel=True)
def _accelerations_parallel(pos, mu, eps2, acc):  # type: ignore[no-untyped-def]
    """Softened accelerations of every body into ``acc``, one body per task.

    Parameters
    ----------
    pos : np.ndarray
        Shape ``(n, 3)``, AU.
    mu : np.ndarray
        Shape ``(n,)``, ``G m`` in AU^3 / yr^2.
    eps2 : float
        Softening length squared, AU^2.
    acc : np.ndarray
        Shape ``(n, 3)``, AU / yr^2, overwritten:
        ``a_i = sum_j mu_j (x_j - x_i) / (|x_j - x_i|^2 + eps2)^(3/2)``.
    """
    for i in prange(mu.size):
        _acceleration_of(pos, mu, eps2, acc, i)


@njit(cache=True, nogil=True)
def _accelerations_serial(pos, mu, eps2, acc):  # type: ignore[no-untyped-def]
    """:func:`_accelerations_parallel` on one thread."""
    for i in range(mu.size):
        _acceleration_of(pos, mu, eps2, acc, i)


@njit(cache=True, nogil=True, parallel=True)
def _leapfrog_parallel(pos, vel, acc, mu, dt, eps2, steps):  # type: ignore[no-untyped-def]
    """``steps`` kick-drift-kick steps in place; ``acc`` holds a(pos) on entry and exit."""
    half_dt = 0.5 * dt
    for _ in range(steps):
        _kick_drift(pos, vel, acc, half_dt, dt)
        for i in prange(mu.size):
            _acceleration_of(pos, mu, eps2, acc, i)
        _kick(vel, acc, half_dt)


@njit(cache=True, nogil=True)
def _leapfrog_serial(pos, vel, acc, mu, dt, eps2, steps):  # type: ignore[no-untyped-def]
    """:func:`_leapfrog_parallel` on one thread."""
    half_dt = 0.5 * dt
    for _ in range(steps):
        _kick_drift(pos, vel, acc, half_dt, dt)
        for i in range(mu.size):
            _acceleration_of(pos, mu, eps2, acc, i)
        _kick(vel, acc, half_dt)


@njit(cache=True, nogil=True, parallel=True)
def _energy_parallel(pos, vel, mu, eps2):  # type: ignore[no-untyped-def]
    """Total energy times G: ``sum_i mu_i |v_i|^2 / 2 - sum_(i<j) mu_i mu_j /
    sqrt(r_ij^2 + eps2)`` (``mu = G m``); per-body terms in parallel, summed in body order.

    Parameters
    ----------
    pos, vel : np.ndarray
        Shape ``(n, 3)``, AU and AU / yr.
    mu : np.ndarray
        Shape ``(n,)``.
    eps2 : float
        Softening length squared (0 for SOLAR_SYSTEM).

    Returns
    -------
    float
    """
    n = mu.size
    terms = np.empty(n)
    for i in prange(n):
        v2 = vel[i, 0] * vel[i, 0] + vel[i, 1] * vel[i, 1] + vel[i, 2] * vel[i, 2]
        terms[i] = 0.5 * mu[i] * v2 + _potential_of(pos, mu, eps2, i)
    total = 0.0
    for i in range(n):  # fixed order: the same sum for any thread count
        total += terms[i]
    return total


# ---- wrappers --------------------------------------------------------------------------------


def random_cluster(bodies: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The RANDOM_CLUSTER initial state: a virialised uniform ball of equal masses.

    Body ``b`` takes doubles ``u = 6 b .. 6 b + 5`` of stream ``(seed, 0)``: position
    ``u0**(1/3)`` times the direction with ``cos(theta) = 1 - 2 u1``, ``phi = 2 pi u2``
    (uniform in the unit ball), velocity likewise from ``u3, u4, u5``. Positions and
    velocities are then moved to the centre-of-mass frame and the velocities scaled so
    that ``2 K = |W|`` (``W`` the softened potential energy).

    Parameters
    ----------
    bodies : int
        2 .. 5000.
    seed : int
        0 .. 2**31 - 1.

    Returns
    -------
    positions, velocities : np.ndarray
        float64, shape ``(bodies, 3)``, AU and AU/year.
    masses : np.ndarray
        float64, shape ``(bodies,)``, all ``4 pi**2 / bodies`` (one solar mass in total).
    """
    u = uniforms_np(stream_key_py(seed, 0), 0, 6 * bodies).reshape(bodies, 6)

    def ball(r3: np.ndarray, c: np.ndarray, f: np.ndarray) -> np.ndarray:
        r = np.cbrt(r3)
        cos_t = 1.0 - 2.0 * c
        sin_t = np.sqrt(np.maximum(0.0, 1.0 - cos_t * cos_t))
        phi = 2.0 * math.pi * f
        return np.stack([r * sin_t * np.cos(phi), r * sin_t * np.sin(phi), r * cos_t], axis=1)

    positions = ball(u[:, 0], u[:, 1], u[:, 2])
    velocities = ball(u[:, 3], u[:, 4], u[:, 5])
    masses = np.full(bodies, SOLAR_MASS / bodies)
    positions -= positions.mean(axis=0)  # equal masses: centre of mass = mean
    velocities -= velocities.mean(axis=0)
    kinetic = 0.5 * float(np.sum(masses * np.einsum("ij,ij->i", velocities, velocities)))
    potential = energy(positions, np.zeros_like(velocities), masses, config.SOFTENING)
    velocities *= math.sqrt(-0.5 * potential / kinetic)
    return positions, velocities, masses


def energy(
    positions: np.ndarray, velocities: np.ndarray, masses: np.ndarray, softening: float = 0.0
) -> float:
    """Total (kinetic + softened potential) energy.

    Parameters
    ----------
    positions, velocities : np.ndarray
        float64, shape ``(n, 3)``, AU and AU/year.
    masses : np.ndarray
        float64, shape ``(n,)``, gravitational parameters ``mu = 4 pi**2 m / M_sun``.
    softening : float
        Plummer ``eps`` in AU (0 for the solar system).

    Returns
    -------
    float
        ``sum_i mu_i |v_i|**2 / 2 - sum_{i<j} mu_i mu_j / sqrt(r_ij**2 + eps**2)``, summed
        per body in parallel, then over bodies in index order.
    """
    return float(
        _energy_parallel(
            np.ascontiguousarray(positions, dtype=np.float64),
            np.ascontiguousarray(velocities, dtype=np.float64),
            np.ascontiguousarray(masses, dtype=np.float64),
            float(softening) ** 2,
        )
    )


def _state_copies(
    positions: np.ndarray, velocities: np.ndarray, masses: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array(positions, dtype=np.float64, order="C"),
        np.array(velocities, dtype=np.float64, order="C"),
        np.ascontiguousarray(masses, dtype=np.float64),
    )


def advance_symplectic_euler(
    positions: np.ndarray, velocities: np.ndarray, masses: np.ndarray, steps: int, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """The Benchmarks Game integrator (symplectic Euler, unsoftened), serial.

    Each step: for every pair ``i < j`` (``i`` ascending, then ``j``), with
    ``d = x_i - x_j`` and ``mag = dt / |d|**3``: ``v_i -= d mu_j mag``,
    ``v_j += d mu_i mag``; then ``x += dt v`` for every body.

    Parameters
    ----------
    positions, velocities : np.ndarray
        float64, shape ``(n, 3)``, AU and AU/year; not modified.
    masses : np.ndarray
        float64, shape ``(n,)``, ``mu``.
    steps : int
    dt : float
        Years.

    Returns
    -------
    positions, velocities : np.ndarray
        The state after ``steps`` steps, new arrays.
    """
    pos, vel, mu = _state_copies(positions, velocities, masses)
    _advance_symplectic_euler(pos, vel, mu, float(dt), int(steps))
    return pos, vel


def simulate(
    positions: np.ndarray,
    velocities: np.ndarray,
    masses: np.ndarray,
    steps: int,
    dt: float,
    softening: float = SOFTENING,
    parallel: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Kick-drift-kick leapfrog with Plummer softening, all pairs, in numba.

    Each step: ``v += a dt/2``; ``x += v dt``; ``a = a(x)``; ``v += a dt/2``, with ``a`` as
    in the module docstring (each body's sum over ``j`` ascending, bodies over threads).

    Parameters
    ----------
    positions, velocities : np.ndarray
        float64, shape ``(n, 3)``, AU and AU/year; not modified.
    masses : np.ndarray
        float64, shape ``(n,)``, ``mu = 4 pi**2 m / M_sun``.
    steps : int
    dt : float
        Years.
    softening : float
        ``eps`` in AU; must be > 0 if two bodies may meet.
    parallel : bool
        Bodies over numba's threads (default) or on the calling thread; bitwise the same.

    Returns
    -------
    positions, velocities : np.ndarray
        The state after ``steps`` steps, new arrays.
    """
    pos, vel, mu = _state_copies(positions, velocities, masses)
    eps2 = float(softening) ** 2
    acc = np.empty_like(pos)
    if parallel:
        _accelerations_parallel(pos, mu, eps2, acc)
        _leapfrog_parallel(pos, vel, acc, mu, float(dt), eps2, int(steps))
    else:
        _accelerations_serial(pos, mu, eps2, acc)
        _leapfrog_serial(pos, vel, acc, mu, float(dt), eps2, int(steps))
    return pos, vel


def _accelerations_numpy(pos: np.ndarray, mu: np.ndarray, eps2: float) -> np.ndarray:
    d = pos[None, :, :] - pos[:, None, :]  # d[i, j] = x_j - x_i
    r2 = np.einsum("ijk,ijk->ij", d, d) + eps2
    np.fill_diagonal(r2, np.inf)  # no self-force
    s = mu[None, :] / (r2 * np.sqrt(r2))
    acc: np.ndarray = np.einsum("ijk,ij->ik", d, s)
    return acc


def simulate_numpy(
    positions: np.ndarray,
    velocities: np.ndarray,
    masses: np.ndarray,
    steps: int,
    dt: float,
    softening: float = SOFTENING,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`simulate` vectorised with NumPy over all pairs (``n x n x 3`` temporaries).

    Same scheme; the sums run in NumPy's order, so results agree with the kernel to
    rounding (~1e-13 relative over short runs), not bitwise.
    """
    pos, vel, mu = _state_copies(positions, velocities, masses)
    eps2 = float(softening) ** 2
    acc = _accelerations_numpy(pos, mu, eps2)
    half_dt = 0.5 * dt
    for _ in range(steps):
        vel += half_dt * acc
        pos += dt * vel
        acc = _accelerations_numpy(pos, mu, eps2)
        vel += half_dt * acc
    return pos, vel


def simulate_python(
    positions: np.ndarray,
    velocities: np.ndarray,
    masses: np.ndarray,
    steps: int,
    dt: float,
    softening: float = SOFTENING,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`simulate` in pure Python on lists (~0.5 microseconds per pair: keep it small).

    The same operations in the same order as the serial kernel, so the same bits.
    """
    pos = [list(map(float, p)) for p in positions]
    vel = [list(map(float, v)) for v in velocities]
    mu = [float(m) for m in masses]
    n = len(mu)
    eps2 = float(softening) ** 2
    half_dt = 0.5 * dt

    def accelerations() -> list[list[float]]:
        out = []
        for i in range(n):
            xi, yi, zi = pos[i]
            ax = ay = az = 0.0
            for j in range(n):
                if j != i:
                    dx = pos[j][0] - xi
                    dy = pos[j][1] - yi
                    dz = pos[j][2] - zi
                    r2 = dx * dx + dy * dy + dz * dz + eps2
                    s = mu[j] / (r2 * math.sqrt(r2))
                    ax += dx * s
                    ay += dy * s
                    az += dz * s
            out.append([ax, ay, az])
        return out

    acc = accelerations()
    for _ in range(steps):
        for i in range(n):
            for k in range(3):
                vel[i][k] += half_dt * acc[i][k]
                pos[i][k] += dt * vel[i][k]
        acc = accelerations()
        for i in range(n):
            for k in range(3):
                vel[i][k] += half_dt * acc[i][k]
    return np.array(pos), np.array(vel)


def _result(bodies: int, steps: int, e0: float, e1: float) -> JSONDict:
    return {
        "bodies": bodies,
        "steps": steps,
        "initialEnergy": e0,
        "finalEnergy": e1,
        "relativeEnergyError": abs(e1 - e0) / abs(e0),
    }


def run_preset(
    preset: str, steps: int, dt: float, bodies: int = config.DEFAULT_BODIES, seed: int = 0
) -> JSONDict:
    """A whole run in one call, as the job does it (parallel kernels).

    Parameters
    ----------
    preset : {"SOLAR_SYSTEM", "RANDOM_CLUSTER"}
    steps : int
    dt : float
        Years.
    bodies : int
        RANDOM_CLUSTER only.
    seed : int
        RANDOM_CLUSTER only.

    Returns
    -------
    dict
        ``bodies``, ``steps``, ``initialEnergy``, ``finalEnergy`` and
        ``relativeEnergyError = |E_final - E_initial| / |E_initial|``.
    """
    job = NBodyJob({"preset": preset, "bodies": bodies, "steps": steps, "dt": dt, "seed": seed})
    while not job.done:
        job.step()
    return job.result()


# ---- the kind ----------------------------------------------------------------------------------


class NBodyJob:
    """A run chunk by chunk; a chunk is ``max(1, config.NBODY_CHUNK_PAIRS // bodies**2)`` steps.

    The leapfrog carries the accelerations from one chunk to the next, so a chunked run
    performs exactly the operations of a one-shot run.
    """

    def __init__(self, params: JSONDict) -> None:
        self.preset = params["preset"]
        self.steps = int(params["steps"])
        self.dt = float(params["dt"])
        if self.preset == "SOLAR_SYSTEM":
            self.pos, self.vel, self.mu = solar_system()
            self.eps2 = 0.0
        else:
            self.pos, self.vel, self.mu = random_cluster(int(params["bodies"]), int(params["seed"]))
            self.eps2 = config.SOFTENING**2
            self.acc = np.empty_like(self.pos)
            _accelerations_parallel(self.pos, self.mu, self.eps2, self.acc)
        self.bodies = self.mu.size
        self.initial_energy = float(_energy_parallel(self.pos, self.vel, self.mu, self.eps2))
        self.chunk = max(1, config.NBODY_CHUNK_PAIRS // (self.bodies * self.bodies))
        self.steps_done = 0

    @property
    def done(self) -> bool:
        return self.steps_done >= self.steps

    @property
    def progress(self) -> float:
        return 1.0 if self.done else self.steps_done / self.steps

    def step(self) -> None:
        if self.done:
            return
        n = min(self.chunk, self.steps - self.steps_done)
        if self.preset == "SOLAR_SYSTEM":
            _advance_symplectic_euler(self.pos, self.vel, self.mu, self.dt, n)
        else:
            _leapfrog_parallel(self.pos, self.vel, self.acc, self.mu, self.dt, self.eps2, n)
        self.steps_done += n

    def partial_result(self) -> JSONDict | None:
        return None

    def result(self) -> JSONDict:
        if not self.done:
            raise RuntimeError("the job is not done")
        final = float(_energy_parallel(self.pos, self.vel, self.mu, self.eps2))
        return _result(self.bodies, self.steps, self.initial_energy, final)


def start(params: NBodyParams) -> NBodyJob:
    """An :class:`NBodyJob` for validated ``params``."""
    return NBodyJob(params.to_json())


def warm_up() -> None:
    """Compile or load from cache every kernel."""
    pos, vel, mu = solar_system()
    advance_symplectic_euler(pos, vel, mu, 1, 0.01)
    simulate(pos, vel, mu, 1, 0.01, parallel=True)
    simulate(pos, vel, mu, 1, 0.01, parallel=False)
    energy(pos, vel, mu)
