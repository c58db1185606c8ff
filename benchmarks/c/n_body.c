/* C reference for compute/n_body.py: the same two integrators, operation for operation.
 *
 *   mode 0: _advance_symplectic_euler (the Benchmarks Game's advance, SOLAR_SYSTEM):
 *           pair loop i < j, v_i -= d mu_j mag, v_j += d mu_i mag, mag = dt / (d2 sqrt d2),
 *           then x += dt v. Serial, like the numba kernel (5 bodies: nothing to share out).
 *   mode 1: _leapfrog_parallel (RANDOM_CLUSTER): kick-drift-kick with Plummer softening;
 *           each body's acceleration summed over j ascending; bodies over OpenMP threads.
 *
 * Build: gcc -O3 -march=native -fopenmp -ffp-contract=off n_body.c -o n_body -lm
 * Usage: n_body MODE N STEPS DT EPS2 STATE_FILE
 *        STATE_FILE: N*3 positions, N*3 velocities, N masses, float64 native byte order.
 * Prints "result=<final positions then velocities, comma-separated> seconds=<kernel time>
 * cpu=<CPU time of all threads> threads=<n>".
 * (For mode 1 the timed part includes the initial accelerations, as simulate() does.)
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void advance_symplectic_euler(int64_t n, double *restrict pos, double *restrict vel,
                                     const double *restrict mu, double dt, int64_t steps) {
    for (int64_t s = 0; s < steps; s++) {
        for (int64_t i = 0; i < n; i++) {
            for (int64_t j = i + 1; j < n; j++) {
                double dx = pos[3 * i] - pos[3 * j];
                double dy = pos[3 * i + 1] - pos[3 * j + 1];
                double dz = pos[3 * i + 2] - pos[3 * j + 2];
                double d2 = dx * dx + dy * dy + dz * dz;
                double mag = dt / (d2 * sqrt(d2));
                double mj = mu[j] * mag;
                vel[3 * i] -= dx * mj;
                vel[3 * i + 1] -= dy * mj;
                vel[3 * i + 2] -= dz * mj;
                double mi = mu[i] * mag;
                vel[3 * j] += dx * mi;
                vel[3 * j + 1] += dy * mi;
                vel[3 * j + 2] += dz * mi;
            }
        }
        for (int64_t i = 0; i < n; i++) {
            pos[3 * i] += dt * vel[3 * i];
            pos[3 * i + 1] += dt * vel[3 * i + 1];
            pos[3 * i + 2] += dt * vel[3 * i + 2];
        }
    }
}

static void accelerations(int64_t n, const double *restrict pos, const double *restrict mu,
                          double eps2, double *restrict acc) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        double xi = pos[3 * i], yi = pos[3 * i + 1], zi = pos[3 * i + 2];
        double ax = 0.0, ay = 0.0, az = 0.0;
        for (int64_t j = 0; j < n; j++) {
            if (j != i) {
                double dx = pos[3 * j] - xi;
                double dy = pos[3 * j + 1] - yi;
                double dz = pos[3 * j + 2] - zi;
                double r2 = dx * dx + dy * dy + dz * dz + eps2;
                double s = mu[j] / (r2 * sqrt(r2));
                ax += dx * s;
                ay += dy * s;
                az += dz * s;
            }
        }
        acc[3 * i] = ax;
        acc[3 * i + 1] = ay;
        acc[3 * i + 2] = az;
    }
}

static void leapfrog(int64_t n, double *pos, double *vel, double *acc, const double *mu,
                     double dt, double eps2, int64_t steps) {
    double half_dt = 0.5 * dt;
    accelerations(n, pos, mu, eps2, acc);
    for (int64_t s = 0; s < steps; s++) {
        for (int64_t k = 0; k < 3 * n; k++) {
            vel[k] += half_dt * acc[k];
            pos[k] += dt * vel[k];
        }
        accelerations(n, pos, mu, eps2, acc);
        for (int64_t k = 0; k < 3 * n; k++) vel[k] += half_dt * acc[k];
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void) { /* CPU time of all threads of the process */
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODE N STEPS DT EPS2 STATE_FILE\n", argv[0]);
        return 2;
    }
    int mode = atoi(argv[1]);
    int64_t n = atoll(argv[2]), steps = atoll(argv[3]);
    double dt = strtod(argv[4], NULL), eps2 = strtod(argv[5], NULL);
    double *pos = malloc(sizeof(double) * 3 * (size_t)n);
    double *vel = malloc(sizeof(double) * 3 * (size_t)n);
    double *acc = malloc(sizeof(double) * 3 * (size_t)n);
    double *mu = malloc(sizeof(double) * (size_t)n);
    FILE *f = fopen(argv[6], "rb");
    if (!f || fread(pos, sizeof(double), 3 * (size_t)n, f) != 3 * (size_t)n ||
        fread(vel, sizeof(double), 3 * (size_t)n, f) != 3 * (size_t)n ||
        fread(mu, sizeof(double), (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read %s\n", argv[6]);
        return 1;
    }
    fclose(f);
    accelerations(n < 2 ? n : 2, pos, mu, 1.0, acc); /* start the thread pool */
    double c0 = cpu_now();
    double t0 = now();
    if (mode == 0)
        advance_symplectic_euler(n, pos, vel, mu, dt, steps);
    else
        leapfrog(n, pos, vel, acc, mu, dt, eps2, steps);
    double t1 = now();
    double c1 = cpu_now();
    printf("result=");
    for (int64_t k = 0; k < 3 * n; k++) printf(k ? ",%.17g" : "%.17g", pos[k]);
    for (int64_t k = 0; k < 3 * n; k++) printf(",%.17g", vel[k]);
    printf(" seconds=%.6f cpu=%.6f threads=%d\n", t1 - t0, c1 - c0, omp_get_max_threads());
    return 0;
}
