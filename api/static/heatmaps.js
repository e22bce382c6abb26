/* Grad-CAM heatmaps on the job page: a toggle per row (asks for one when the scan has none,
   waits for the worker), and a large viewer with the heatmap's opacity adjustable that
   steps through the shown rows in order. */
"use strict";

window.covidscan.heatmaps = (function () {
  const { contract, element, problemDetail, unsafeHeaders } = window.covidscan;
  const { ScanStatus } = contract;
  const waiting = (state) => state.status === ScanStatus.QUEUED || state.status === ScanStatus.RUNNING;
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 1500;
  const shown = new Set();      // scan ids whose heatmap is toggled on
  const states = new Map();     // scan id -> the explanation's JSON, once fetched
  let order = [];               // scan ids of the rows on the page, in display order
  let current = null;           // scan id in the viewer
  let onChange = () => {};

  const scanUrl = (id, path) => "/v1/scans/" + encodeURIComponent(id) + path;

  function fetchExplanation(id, method) {
    return fetch(scanUrl(id, "/explanation"),
                 method === "POST" ? { method: "POST", headers: unsafeHeaders() }
                                   : { cache: "no-store", headers: { Accept: "application/json" } })
      .then((response) => response.text().then((text) => {
        if (response.ok) return JSON.parse(text);
        if (response.status === 404 && method !== "POST") return null;
        throw new Error(problemDetail(response.status, text).detail);
      }));
  }

  /* Follow an explanation until the worker has finished it, re-rendering on each change. */
  function follow(id) {
    fetchExplanation(id).then((body) => {
      if (body === null) return fetchExplanation(id, "POST");
      return body;
    }).then((body) => {
      states.set(id, body);
      onChange();
      if (shown.has(id) && waiting(body)) {
        window.setTimeout(() => follow(id), POLL_MS);
      }
    }).catch((error) => {
      states.set(id, { status: ScanStatus.FAILED, error: error.message });
      onChange();
    });
  }

  function toggle(row) {
    const id = row.scan_id;
    if (shown.has(id)) shown.delete(id);
    else {
      shown.add(id);
      if (!states.has(id) || states.get(id).status !== ScanStatus.SUCCEEDED) follow(id);
    }
    onChange();
  }

  /* The row's Heatmap cell: the toggle, and the overlay (or where it stands) when on. */
  function cell(row) {
    const id = row.scan_id;
    const wrap = element("div", null, "heatmap-cell");
    const on = shown.has(id);
    const button = element("button", on ? "Hide" : "Show", "button secondary small heatmap-toggle");
    button.type = "button";
    button.setAttribute("aria-pressed", on ? "true" : "false");
    button.setAttribute("aria-label", (on ? "Hide" : "Show") + " the heatmap of " + row.filename);
    button.disabled = row.status !== ScanStatus.SUCCEEDED;
    button.addEventListener("click", () => toggle(row));
    wrap.appendChild(button);
    if (!on) return wrap;
    const state = states.get(id);
    if (!state || waiting(state)) {
      wrap.appendChild(element("span", "computing…", "hint"));
    } else if (state.status !== ScanStatus.SUCCEEDED) {
      wrap.appendChild(element("span", state.error || state.status, "error-text"));
    } else {
      const img = element("img", null, "heatmap-thumb");
      img.src = scanUrl(id, "/heatmap");
      img.alt = "Grad-CAM overlay of " + row.filename + " (select to enlarge)";
      img.tabIndex = 0;
      img.addEventListener("click", () => open(id));
      img.addEventListener("keydown", (e) => { if (e.key === "Enter") open(id); });
      wrap.appendChild(img);
      if (state.model && state.model.trained === false) {
        wrap.appendChild(element("span", "untrained model: means nothing", "untrained-note"));
      }
    }
    return wrap;
  }

  /* The viewer: the slice as the model saw it under the coloured map, opacity adjustable. */
  function open(id) {
    const state = states.get(id);
    if (!state || state.status !== ScanStatus.SUCCEEDED) return;
    current = id;
    $("viewer-slice").src = scanUrl(id, "/heatmap?view=slice");
    $("viewer-heatmap").src = scanUrl(id, "/heatmap?view=heatmap");
    $("viewer-png").href = scanUrl(id, "/heatmap");
    $("viewer-npy").href = scanUrl(id, "/heatmap?format=npy");
    const model = state.model || {};
    $("viewer-untrained").hidden = model.trained !== false;
    $("viewer-meta").textContent = "P(COVID) " + state.probability_covid.toFixed(3) +
      " · class " + state.class_name + " (" + state.score + ") · layer " + state.layer +
      " · " + model.name + " " + model.version + " (" + model.engine + ", " + model.precision + ")";
    const ready = order.filter((s) => states.has(s) && states.get(s).status === ScanStatus.SUCCEEDED);
    const at = ready.indexOf(id);
    $("viewer-prev").disabled = at <= 0;
    $("viewer-next").disabled = at < 0 || at >= ready.length - 1;
    const dialog = $("heatmap-viewer");
    if (!dialog.open) dialog.showModal();
  }

  function step(delta) {
    const ready = order.filter((s) => states.has(s) && states.get(s).status === ScanStatus.SUCCEEDED);
    const next = ready[ready.indexOf(current) + delta];
    if (next) open(next);
  }

  function setOpacity() {
    $("viewer-heatmap").style.opacity = String($("viewer-opacity").value / 100);
  }

  function init(rerender) {
    onChange = rerender;
    $("viewer-opacity").addEventListener("input", setOpacity);
    $("viewer-prev").addEventListener("click", () => step(-1));
    $("viewer-next").addEventListener("click", () => step(1));
    $("viewer-close").addEventListener("click", () => $("heatmap-viewer").close());
    setOpacity();
  }

  /* The rows on the page, in the order shown: what the viewer steps through. */
  function setOrder(ids) {
    order = ids;
  }

  return { cell, init, setOrder };
})();
