/* C reference for compute/monte_carlo_pi.py: the same counter-based random streams
 * (compute/random.py) and the same block decomposition, so the count is bitwise equal.
 *
 *   mix64(z)     = splitmix64 finaliser
 *   key(seed, b) = mix64(seed * GAMMA + b + 1)
 *   u64(key, i)  = mix64(key + i * GAMMA),  double = (u64 >> 11) * 2^-53
 *   point i of block b = (double(key_b, 2i), double(key_b, 2i + 1)), inside if x^2 + y^2 < 1
 *
 * Build: gcc -O3 -march=native -fopenmp -ffp-contract=off monte_carlo_pi.c -o monte_carlo_pi
 * (-ffp-contract=off: GNU C contracts x*x + y*y into an FMA by default, which changes the
 * rounding and so a few counts; numba's kernel does not contract.)
 * Usage: monte_carlo_pi SAMPLES SEED
 * Prints "result=<count> seconds=<kernel wall time> cpu=<CPU time, all threads> threads=<n>".
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define GAMMA 0x9E3779B97F4A7C15ULL
#define BLOCK (1LL << 20) /* config.PI_BLOCK_SAMPLES */

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline double to_unit(uint64_t u) { return (double)(int64_t)(u >> 11) * 0x1.0p-53; }

static int64_t count_block(uint64_t seed, int64_t block, int64_t n) {
    const uint64_t key = mix64(seed * GAMMA + (uint64_t)block + 1);
    int64_t inside = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = to_unit(mix64(key + (uint64_t)(2 * i) * GAMMA));
        double y = to_unit(mix64(key + (uint64_t)(2 * i + 1) * GAMMA));
        inside += (x * x + y * y < 1.0);
    }
    return inside;
}

static int64_t count_inside(int64_t samples, uint64_t seed) {
    const int64_t n_blocks = (samples + BLOCK - 1) / BLOCK;
    int64_t inside = 0;
#pragma omp parallel for schedule(static) reduction(+ : inside)
    for (int64_t b = 0; b < n_blocks; b++) {
        int64_t n = samples - b * BLOCK < BLOCK ? samples - b * BLOCK : BLOCK;
        inside += count_block(seed, b, n);
    }
    return inside;
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
    if (argc != 3) {
        fprintf(stderr, "usage: %s SAMPLES SEED\n", argv[0]);
        return 2;
    }
    int64_t samples = atoll(argv[1]);
    uint64_t seed = strtoull(argv[2], NULL, 10);
    volatile int64_t warm = count_inside(BLOCK / 16, seed); /* start the thread pool */
    (void)warm;
    double c0 = cpu_now();
    double t0 = now();
    int64_t inside = count_inside(samples, seed);
    double t1 = now();
    double c1 = cpu_now();
    printf("result=%lld seconds=%.6f cpu=%.6f threads=%d\n", (long long)inside, t1 - t0, c1 - c0,
           omp_get_max_threads());
    return 0;
}
