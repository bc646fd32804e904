// A live line chart in inline SVG: losses on the left axis (from zero to their largest),
// metrics between 0 and 1 on the right, x the training step. Redrawn as events arrive.
//
// Key rule: it draws what it is given and nothing else: an empty series draws no line, and
// the number of points drawn is on the SVG (data-points) for anyone checking it grows.

const W = 600;
const H = 220;
const PAD = { left: 44, right: 40, top: 12, bottom: 26 };
const COLORS = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2"];
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const isLoss = (name) => name.includes("loss");

export function drawChart(root, legend, series) {
  const names = Object.keys(series).filter((n) => series[n].length);
  const points = names.reduce((n, name) => n + series[name].length, 0);
  root.dataset.points = String(points);
  root.replaceChildren();
  legend.replaceChildren();
  const all = names.flatMap((n) => series[n]);
  const xMax = Math.max(1, ...all.map(([x]) => x));
  const lossMax = Math.max(1e-9, ...names.filter(isLoss).flatMap((n) => series[n].map(([, y]) => y)));
  const x = (v) => PAD.left + (v / xMax) * (W - PAD.left - PAD.right);
  const y = (v, max) => H - PAD.bottom - (Math.min(Math.max(v / max, 0), 1) * (H - PAD.top - PAD.bottom));
  // Axes and their labels.
  root.append(
    svg("line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, class: "axis" }),
    svg("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom, class: "axis" }),
    svg("text", { x: PAD.left - 4, y: PAD.top + 8, "text-anchor": "end", class: "tick" }, lossMax.toPrecision(2)),
    svg("text", { x: PAD.left - 4, y: H - PAD.bottom, "text-anchor": "end", class: "tick" }, "0"),
    svg("text", { x: W - PAD.right + 4, y: PAD.top + 8, class: "tick" }, "1"),
    svg("text", { x: W - PAD.right, y: H - 6, "text-anchor": "end", class: "tick" }, `step ${xMax}`),
  );
  if (!points) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "tick" }, "Waiting for the first training step..."));
    return;
  }
  names.forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    const max = isLoss(name) ? lossMax : 1;
    const coords = series[name].map(([px, py]) => `${x(px).toFixed(1)},${y(py, max).toFixed(1)}`);
    root.append(
      svg("polyline", {
        points: coords.join(" "),
        fill: "none",
        stroke: color,
        "stroke-width": 2,
        "stroke-dasharray": isLoss(name) ? "" : "5 3",
        "data-series": name,
      }),
    );
    if (series[name].length === 1) {
      const [cx, cy] = coords[0].split(",");
      root.append(svg("circle", { cx, cy, r: 3, fill: color }));
    }
    const last = series[name][series[name].length - 1][1];
    const item = document.createElement("span");
    item.className = "key";
    item.style.setProperty("--c", color);
    item.textContent = `${name} ${last.toFixed(4)}${isLoss(name) ? "" : " (right axis)"}`;
    legend.append(item);
  });
}
