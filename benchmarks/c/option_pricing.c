/* C reference for compute/option_pricing.py (_simulate_block / _sums_parallel): the same
 * random streams, Box-Muller normals, antithetic pairs and per-block sums, so the block
 * sums agree with the numba kernel's (to the last bit when both call the same libm).
 *
 * Build: gcc -O3 -march=native -fopenmp -ffp-contract=off option_pricing.c -o option_pricing -lm
 * Usage: option_pricing SEED PATHS STEPS ASIAN PHI STRIKE X0 A B C_Y E_X BLOCK_PAIRS
 *        (the fields of option_pricing.make_setup, floats as Python repr)
 * Prints "result=<blocks*5 comma-separated block sums> seconds=<kernel time> cpu=<CPU time>
 * threads=<n>";
 * the caller adds the rows with math.fsum (option_pricing.summarize), as the kernel does.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define GAMMA 0x9E3779B97F4A7C15ULL
#define TWO_PI 6.283185307179586

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline double uniform_at(uint64_t key, int64_t i) {
    return (double)(int64_t)(mix64(key + (uint64_t)i * GAMMA) >> 11) * 0x1.0p-53;
}

typedef struct {
    int64_t seed, paths, steps, asian, block_pairs;
    double phi, strike, x0, a, b, c_y, e_x;
} setup_t;

static void simulate_block(const setup_t *s, int64_t block, int64_t n_pairs, double *out) {
    const uint64_t key = mix64((uint64_t)s->seed * GAMMA + (uint64_t)block + 1);
    const int64_t steps = s->steps;
    double s_y = 0.0, s_yy = 0.0, s_x = 0.0, s_xx = 0.0, s_xy = 0.0, spare = 0.0;
    int64_t q = 0;
    for (int64_t j = 0; j < n_pairs; j++) {
        double x_up = s->x0, x_dn = s->x0, sum_up = 0.0, sum_dn = 0.0, log_up = 0.0,
               log_dn = 0.0;
        for (int64_t k = 0; k < steps; k++) {
            double z;
            if ((q & 1) == 0) {
                int64_t m = q >> 1;
                double u1 = uniform_at(key, 2 * m), u2 = uniform_at(key, 2 * m + 1);
                double r = sqrt(-2.0 * log(1.0 - u1));
                double theta = TWO_PI * u2;
                z = r * cos(theta);
                spare = r * sin(theta);
            } else {
                z = spare;
            }
            q++;
            x_up += s->a + s->b * z;
            x_dn += s->a - s->b * z;
            sum_up += exp(x_up);
            sum_dn += exp(x_dn);
            log_up += x_up;
            log_dn += x_dn;
        }
        double p_up = s->phi * (sum_up / steps - s->strike);
        double p_dn = s->phi * (sum_dn / steps - s->strike);
        double y = 0.5 * ((p_up > 0.0 ? p_up : 0.0) + (p_dn > 0.0 ? p_dn : 0.0));
        double x;
        if (s->asian) {
            double g_up = s->phi * (exp(log_up / steps) - s->strike);
            double g_dn = s->phi * (exp(log_dn / steps) - s->strike);
            x = 0.5 * ((g_up > 0.0 ? g_up : 0.0) + (g_dn > 0.0 ? g_dn : 0.0));
        } else {
            x = s->e_x;
        }
        double dy = y - s->c_y, dx = x - s->e_x;
        s_y += dy;
        s_yy += dy * dy;
        s_x += dx;
        s_xx += dx * dx;
        s_xy += dx * dy;
    }
    out[0] = s_y;
    out[1] = s_yy;
    out[2] = s_x;
    out[3] = s_xx;
    out[4] = s_xy;
}

static void sums(const setup_t *s, int64_t blocks, double *out) {
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < blocks; j++) {
        int64_t left = s->paths - j * s->block_pairs;
        simulate_block(s, j, left < s->block_pairs ? left : s->block_pairs, out + 5 * j);
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
    if (argc != 13) {
        fprintf(stderr, "usage: %s SEED PATHS STEPS ASIAN PHI STRIKE X0 A B C_Y E_X BLOCK_PAIRS\n",
                argv[0]);
        return 2;
    }
    setup_t s = {atoll(argv[1]), atoll(argv[2]), atoll(argv[3]), atoll(argv[4]), atoll(argv[12]),
                 strtod(argv[5], NULL), strtod(argv[6], NULL), strtod(argv[7], NULL),
                 strtod(argv[8], NULL), strtod(argv[9], NULL), strtod(argv[10], NULL),
                 strtod(argv[11], NULL)};
    int64_t blocks = (s.paths + s.block_pairs - 1) / s.block_pairs;
    double *out = malloc(sizeof(double) * 5 * (size_t)(blocks > 0 ? blocks : 1));
    setup_t warm = s; /* start the thread pool */
    warm.paths = warm.block_pairs < 2 ? warm.block_pairs : 2;
    warm.steps = 1;
    sums(&warm, 1, out);
    double c0 = cpu_now();
    double t0 = now();
    sums(&s, blocks, out);
    double t1 = now();
    double c1 = cpu_now();
    printf("result=");
    for (int64_t i = 0; i < 5 * blocks; i++) printf(i ? ",%.17g" : "%.17g", out[i]);
    printf(" seconds=%.6f cpu=%.6f threads=%d\n", t1 - t0, c1 - c0, omp_get_max_threads());
    free(out);
    return 0;
}
