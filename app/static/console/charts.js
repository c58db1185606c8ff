// The convergence chart (uPlot, a canvas): the running estimate over time with its
// ±2 standard-error band, and the final value once there is one. The centroid scatter
// of kMeans is a small SVG.
import { h } from './vendor/preact.module.js';
import { useEffect, useRef } from './vendor/hooks.module.js';
import htm from './vendor/htm.module.js';
import uPlot from './vendor/uPlot.esm.js';

const html = htm.bind(h);

// [seconds, estimate, estimate - 2 SE, estimate + 2 SE, final] columns from the points.
function columns(points, final) {
  const t0 = points.length ? points[0].t : 0;
  const data = [[], [], [], [], []];
  for (const point of points) {
    data[0].push(point.t - t0);
    data[1].push(point.value);
    data[2].push(point.value - 2 * point.se);
    data[3].push(point.value + 2 * point.se);
    data[4].push(final);
  }
  return data;
}

export function ConvergenceChart({ points, final, label }) {
  const box = useRef(null);
  const plot = useRef(null);

  useEffect(() => {
    const options = {
      width: Math.max(320, Math.min(720, box.current.clientWidth || 640)),
      height: 260,
      scales: { x: { time: false } },
      axes: [
        { label: 'seconds' },
        { label, size: 80, values: (_u, splits) => splits.map((v) => v.toPrecision(6)) },
      ],
      series: [
        {},
        { label, stroke: '#1f5fbf', width: 2 },
        { label: '−2 SE', stroke: '#8fb3e8', dash: [4, 4] },
        { label: '+2 SE', stroke: '#8fb3e8', dash: [4, 4] },
        { label: 'final', stroke: '#2e7d32', width: 1.5 },
      ],
      bands: [{ series: [3, 2], fill: 'rgba(31, 95, 191, 0.15)' }],
    };
    plot.current = new uPlot(options, columns([], null), box.current);
    const canvas = plot.current.root.querySelector('canvas');
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', 'Convergence');
    return () => {
      plot.current.destroy();
      plot.current = null;
    };
  }, []);

  useEffect(() => {
    if (!plot.current) return;
    plot.current.setData(columns(points, final == null ? null : final));
    // The number of points drawn, for people and tests reading the page.
    plot.current.root.querySelector('canvas').dataset.points = String(points.length);
  }, [points, points.length, final]);

  return html`<div class="chart" ref=${box}></div>`;
}

export function CentroidScatter({ centroids }) {
  const points = centroids.filter((row) => row.length >= 1).map((row) => [row[0], row[1] ?? 0]);
  if (!points.length) return null;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const size = 260;
  const pad = 16;
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (size - 2 * pad);
  const sy = (y) => size - pad - ((y - y0) / (y1 - y0 || 1)) * (size - 2 * pad);
  return html`<svg class="scatter" role="img" aria-label="Centroids" viewBox="0 0 ${size} ${size}"
      width=${size} height=${size}>
    <rect x="0.5" y="0.5" width=${size - 1} height=${size - 1} class="frame" />
    ${points.map(
      ([x, y], index) =>
        html`<circle cx=${sx(x)} cy=${sy(y)} r="4" class="centroid"><title>
          centroid ${index + 1}: (${x.toPrecision(4)}, ${y.toPrecision(4)})</title></circle>`,
    )}
  </svg>`;
}
