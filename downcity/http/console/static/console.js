// Downcity console: times in the browser's zone, copy buttons, and the Overview charts (uPlot).
// PALETTE matches the .swatch colours in console.css, so each table row names its line.
"use strict";

function localTimes(root) {
  const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  for (const el of root.querySelectorAll("time[data-ms]")) {
    el.textContent = format.format(new Date(Number(el.dataset.ms)));
    el.title = el.getAttribute("datetime");
  }
}

function copyButtons(root) {
  for (const button of root.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      source.select();
      try {
        await navigator.clipboard.writeText(source.value);
      } catch (_) {
        document.execCommand("copy");
      }
      button.textContent = "Copied";
    });
  }
}

const PALETTE = ["#1f5fbf", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c", "#8c564b", "#e377c2"];
window.dcCharts = [];

function drawCharts() {
  const holder = document.getElementById("chart-data");
  if (!holder || typeof uPlot === "undefined") return;
  const data = JSON.parse(holder.textContent);
  for (const metric of data.metrics) {
    const el = document.getElementById("chart-" + metric.id);
    if (!el) continue;
    const width = Math.max(240, el.clientWidth);
    const options = {
      width: width,
      height: 220,
      series: [{}].concat(metric.series.map((s, i) => ({ label: s.key, stroke: PALETTE[i % PALETTE.length], width: 2 }))),
      axes: [{}, { size: 70 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    };
    const chart = new uPlot(options, [data.x].concat(metric.series.map((s) => s.values)), el);
    window.dcCharts.push({ metric: metric.id, chart: chart });
  }
  window.addEventListener("resize", () => {
    for (const { chart } of window.dcCharts) {
      chart.setSize({ width: Math.max(240, chart.root.parentElement.clientWidth), height: 220 });
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  copyButtons(document);
  drawCharts();
});
document.addEventListener("htmx:afterSwap", (event) => localTimes(event.target));
