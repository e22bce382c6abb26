/* The job page's series view: one row per DICOM series (GET /v1/jobs/<id>/series) with its
   P(COVID), and a strip chart of its slices' probabilities along the patient axis
   (feet on the left, head on the right), so a reader sees where in the lungs the model fired. */
"use strict";

(function () {
  const { contract, element, replaceChildren } = window.covidscan;
  const { ScanStatus } = contract;
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 600, HEIGHT = 64, POLL_MS = 3000;
  const root = document.getElementById("job");
  const panel = document.getElementById("series-panel");
  if (!root || !panel) return;
  const url = "/v1/jobs/" + encodeURIComponent(root.dataset.jobId) + "/series?slices=1";

  const percent = (p) => (p === null || p === undefined ? "–" : (100 * p).toFixed(1) + "%");

  function svg(name, attributes) {
    const node = document.createElementNS(SVG, name);
    Object.entries(attributes).forEach(([key, value]) => node.setAttribute(key, String(value)));
    return node;
  }

  /* One bar per slice in patient-axis order: height = P(COVID); a failed slice is a grey
     tick, a slice still waiting a faint one. */
  function stripChart(series) {
    const slices = series.slices;
    const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "strip-chart",
                               role: "img", preserveAspectRatio: "none" });
    const fired = slices.filter((s) => s.probability_covid !== null && s.probability_covid >= 0.5);
    const title = svg("title", {});
    title.textContent = `${slices.length} slices from feet to head; ${fired.length} at ` +
      "P(COVID) ≥ 50%";
    chart.appendChild(title);
    const step = WIDTH / Math.max(slices.length, 1);
    slices.forEach((s, index) => {
      const p = s.probability_covid;
      const failed = s.status === ScanStatus.FAILED;
      const waiting = !failed && (p === null || p === undefined);
      const height = failed ? 6 : waiting ? 3 : Math.max(1, p * HEIGHT);
      const bar = svg("rect", {
        x: (index * step).toFixed(2), width: Math.max(step - 0.5, 0.5).toFixed(2),
        y: (HEIGHT - height).toFixed(2), height: height.toFixed(2),
        class: failed ? "strip-failed" : waiting ? "strip-waiting" :
          p >= 0.5 ? "strip-positive" : "strip-negative",
      });
      const tip = svg("title", {});
      const where = s.slice_position !== null ? `position ${s.slice_position} mm` :
        `instance ${s.instance_number ?? "?"}`;
      tip.textContent = `slice ${index + 1} (${where}): ` +
        (failed || waiting ? s.status : percent(p));
      bar.appendChild(tip);
      chart.appendChild(bar);
    });
    chart.appendChild(svg("line", { x1: 0, x2: WIDTH, y1: HEIGHT / 2, y2: HEIGHT / 2,
                                    class: "strip-threshold" }));  // over the bars
    return chart;
  }

  function row(series) {
    const tr = element("tr");
    const uid = element("td", series.series_uid);
    uid.className = "uid";
    tr.appendChild(uid);
    tr.appendChild(element("td", series.modality || "–"));
    // expected_slices: the instances the sender said the series holds (C-FIND).
    const of = series.expected_slices ? ` of ${series.expected_slices}` : "";
    tr.appendChild(element("td", `${series.slice_count}${of}` + (series.failed ? ` (${series.failed} failed)` : "")));
    tr.appendChild(element("td", percent(series.probability_covid)));
    const label = series.label || (series.pending ? "pending" : "–");
    // A series of too few slices (MIN_SERIES_SLICES) has no result: the reason shows instead;
    // one still receiving instances (its job is open) says so: its result may change.
    const soFar = series.label && (series.pending || series.receiving) ? label + " (so far)" : label;
    const shown = series.receiving ? `receiving… ${soFar === "–" ? "" : soFar}`.trim() :
      series.skipped || soFar;
    const cell = element("td", shown);
    if (series.receiving) cell.className = "receiving";
    tr.appendChild(cell);
    const chart = element("td");
    chart.appendChild(stripChart(series));
    tr.appendChild(chart);
    return tr;
  }

  function show(body) {
    if (!body.series.length) return false;
    panel.hidden = false;
    document.getElementById("series-rule").textContent = body.rule || "";
    replaceChildren(panel.querySelector("tbody"), body.series, row);
    return body.series.some((s) => s.pending > 0 || s.receiving);
  }

  function poll() {
    fetch(url, { cache: "no-store", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : null))
      .then((body) => { if (body && show(body)) window.setTimeout(poll, POLL_MS); })
      .catch(() => window.setTimeout(poll, POLL_MS * 3));
  }

  poll();
})();
