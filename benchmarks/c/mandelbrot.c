/* C reference for compute/mandelbrot.py (_escape_rows_parallel): the same pixel centres,
 * the same cardioid/period-2 bulb test and the same escape-time loop, so the counts are
 * identical.
 *
 * Build: gcc -O3 -march=native -fopenmp -ffp-contract=off mandelbrot.c -o mandelbrot
 * Usage: mandelbrot WIDTH HEIGHT MAX_ITER X_C Y_C DX DY   (window centre and pixel size,
 *        floats as Python repr, from mandelbrot._geometry)
 * Prints "result=<sum of counts>,<checksum> seconds=<kernel time> cpu=<CPU time> threads=<n>",
 * where checksum = sum over pixels k (row-major) of count_k * (k % 1000003 + 1), mod 2^64.
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline uint32_t escape_count(double cx, double cy, int64_t max_iter) {
    double xq = cx - 0.25;
    double q = xq * xq + cy * cy;
    if (q * (q + xq) <= 0.25 * cy * cy || (cx + 1.0) * (cx + 1.0) + cy * cy <= 0.0625)
        return (uint32_t)max_iter;
    double x = 0.0, y = 0.0;
    for (int64_t n = 0; n < max_iter; n++) {
        double xn = x * x - y * y + cx;
        y = 2.0 * x * y + cy;
        x = xn;
        if (x * x + y * y > 4.0) return (uint32_t)n;
    }
    return (uint32_t)max_iter;
}

static void escape_rows(uint32_t *out, int64_t width, int64_t height, int64_t max_iter,
                        double x_c, double y_c, double dx, double dy) {
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < height; j++) {
        double cy = y_c + (0.5 * (double)height - (double)j - 0.5) * dy;
        for (int64_t i = 0; i < width; i++)
            out[j * width + i] =
                escape_count(x_c + ((double)i + 0.5 - 0.5 * (double)width) * dx, cy, max_iter);
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
    if (argc != 8) {
        fprintf(stderr, "usage: %s WIDTH HEIGHT MAX_ITER X_C Y_C DX DY\n", argv[0]);
        return 2;
    }
    int64_t width = atoll(argv[1]), height = atoll(argv[2]), max_iter = atoll(argv[3]);
    double x_c = strtod(argv[4], NULL), y_c = strtod(argv[5], NULL);
    double dx = strtod(argv[6], NULL), dy = strtod(argv[7], NULL);
    uint32_t *out = malloc(sizeof(uint32_t) * (size_t)(width * height));
    escape_rows(out, 4, 4, 8, x_c, y_c, dx, dy); /* start the thread pool */
    double c0 = cpu_now();
    double t0 = now();
    escape_rows(out, width, height, max_iter, x_c, y_c, dx, dy);
    double t1 = now();
    double c1 = cpu_now();
    uint64_t sum = 0, check = 0;
    for (int64_t k = 0; k < width * height; k++) {
        sum += out[k];
        check += (uint64_t)out[k] * (uint64_t)(k % 1000003 + 1);
    }
    printf("result=%llu,%llu seconds=%.6f cpu=%.6f threads=%d\n", (unsigned long long)sum,
           (unsigned long long)check, t1 - t0, c1 - c0, omp_get_max_threads());
    free(out);
    return 0;
}
