/* The job page: poll GET /v1/jobs/<id> for progress, page through its results,
   filter, sort and download them. */
"use strict";

(function () {
  const { contract, formatDuration, problemDetail, replaceChildren, element, unsafeHeaders } =
    window.covidscan;
  const { JobStatus, ScanStatus } = contract;
  const $ = (id) => document.getElementById(id);
  const root = $("job");
  const jobId = root.dataset.jobId;
  const base = "/v1/jobs/" + encodeURIComponent(jobId);
  const TERMINAL = contract.finishedJobStatuses;
  const POLL_MS = 1000;
  const PAGE_SIZE = 1000;
  const RENDER_STEP = 200;

  let job = JSON.parse(root.dataset.job);
  let results = [];
  let resultsDone = -1;     // finished scans when the results were last fetched
  let resultsFetchedAt = 0;
  let shownLimit = RENDER_STEP;
  let clockOffset = null;   // server clock minus this browser's, in ms
  let failures = 0;

  const finished = () => TERMINAL.includes(job.status);
  const doneCount = () => job.counts.succeeded + job.counts.failed + (job.counts.cancelled || 0);
  const serverNow = () => Date.now() + (clockOffset || 0);

  function fetchJSON(url) {
    return fetch(url, { cache: "no-store", headers: { Accept: "application/json" } })
      .then((response) => {
        const date = Date.parse(response.headers.get("Date") || "");
        // Date has whole seconds, so it lags the server clock: keep the largest offset seen.
        if (!Number.isNaN(date)) clockOffset = Math.max(clockOffset ?? -Infinity, date - Date.now());
        if (response.ok) return response.json();
        if (response.status === 401) window.covidscan.signInAgain();
        return response.text().then((text) => {
          const error = new Error(problemDetail(response.status, text).detail);
          error.status = response.status;
          throw error;
        });
      });
  }

  function fetchAllResults() {
    const rows = [];
    const page = (cursor) => fetchJSON(base + "/results?limit=" + PAGE_SIZE +
                                       (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""))
      .then((body) => {
        rows.push(...body.results);
        return body.next_cursor ? page(body.next_cursor) : rows;
      });
    return page(null);
  }

  /* Progress: counts, bar, status, model and the untrained warning. */
  function showJob() {
    const counts = job.counts;
    const done = doneCount();
    $("job-progress").max = Math.max(counts.total, 1);
    $("job-progress").value = done;
    const percent = counts.total ? Math.floor((100 * done) / counts.total) : 0;
    $("job-percent").textContent = percent + "% (" + done + " of " + counts.total + " scans finished)";
    $("cancel-job").hidden = finished() || job.status === JobStatus.CANCELLING;
    ["total", ...Object.values(ScanStatus)].forEach((key) => {  // the counts' keys
      $("count-" + key).textContent = counts[key];
    });
    const status = $("job-status");
    const statusText = job.status.replace(/_/g, " ");
    if (status.textContent !== statusText) {  // a live region: announce changes only
      status.textContent = statusText;
      status.className = "status status-" + job.status;
    }
    const model = job.model;
    $("job-model").textContent = model ? "model " + model.name + " " + (model.version || "") : "";
    $("untrained-banner").hidden = !(model && model.trained === false);
    $("untrained-model").textContent = model ? "(" + model.name + " has random weights.)" : "";
    showTimes();
  }

  function showTimes() {
    const created = Date.parse(job.created_at);
    const started = job.started_at ? Date.parse(job.started_at) : null;
    const end = job.finished_at ? Date.parse(job.finished_at) : serverNow();
    $("elapsed").textContent = formatDuration((end - created) / 1000);
    const done = doneCount();
    let left;
    if (finished()) left = "none: finished";
    else if (!started) left = "waiting for a worker";
    else if (done === 0) left = "estimating…";
    else {
      const rate = done / Math.max((serverNow() - started) / 1000, 0.001);
      left = "about " + formatDuration((job.counts.total - done) / rate);
    }
    $("time-left").textContent = left;
  }

  /* Results: filter, sort, render a growing slice of the rows. */
  function threshold() {
    const input = $("filter-threshold");
    const raw = input.value.trim();
    const value = Number(raw);
    const bad = input.validity.badInput || (raw !== "" && (Number.isNaN(value) || value < 0 || value > 1));
    $("threshold-error").hidden = !bad;
    input.setAttribute("aria-invalid", bad ? "true" : "false");
    return bad || raw === "" ? null : value;
  }

  function visibleRows() {
    let rows = results.slice();
    if ($("filter-failed").checked) rows = rows.filter((r) => r.status === ScanStatus.FAILED);
    if ($("filter-covid").checked) rows = rows.filter((r) => r.label === "COVID");
    const above = threshold();
    if (above !== null) {
      rows = rows.filter((r) => r.probability_covid !== null && r.probability_covid > above);
    }
    const order = $("sort").value;
    $("p-header").setAttribute("aria-sort", { desc: "descending", asc: "ascending" }[order] || "none");
    if (order !== "upload") {
      const sign = order === "desc" ? -1 : 1;
      rows.sort((a, b) => {
        if (a.probability_covid === null || b.probability_covid === null) {
          return (a.probability_covid === null) - (b.probability_covid === null);  // none last
        }
        return sign * (a.probability_covid - b.probability_covid);
      });
    }
    return rows;
  }

  function cell(label, content, className) {
    const td = element("td", typeof content === "string" ? content : null, className);
    td.dataset.label = label;
    if (content instanceof Node) td.appendChild(content);
    return td;
  }

  function probabilityCell(p) {
    if (p === null) return cell("P(COVID)", "–", "num");
    const wrap = element("span", null, "p");
    wrap.appendChild(element("span", p.toFixed(3), "p-value"));
    const bar = element("span", null, "p-bar");
    bar.setAttribute("aria-hidden", "true");
    const fill = element("span", null, "p-fill" + (p >= 0.5 ? " high" : ""));
    fill.style.width = (100 * p).toFixed(1) + "%";
    bar.appendChild(fill);
    wrap.appendChild(bar);
    return cell("P(COVID)", wrap, "num");
  }

  function makeRow(r) {
    const row = element("tr", null, "row-" + r.status);
    const img = element("img", null, "thumb");
    img.src = "/v1/scans/" + encodeURIComponent(r.scan_id) + "/thumbnail";
    img.alt = "preview of " + r.filename;
    img.loading = "lazy";
    img.width = 64;
    img.height = 64;
    row.appendChild(cell("Preview", img));
    row.appendChild(cell("File", r.filename, "filename"));
    row.appendChild(probabilityCell(r.probability_covid));
    row.appendChild(cell("Label", r.label || "–"));
    row.appendChild(cell("Status", r.status, "status status-" + r.status));
    row.appendChild(cell("Error", r.error || "", "error-text"));
    row.appendChild(cell("Heatmap", window.covidscan.heatmaps.cell(r)));
    return row;
  }

  function renderResults() {
    const rows = visibleRows();
    const shown = rows.slice(0, shownLimit);
    window.covidscan.heatmaps.setOrder(shown.map((r) => r.scan_id));
    replaceChildren(document.querySelector("#results tbody"), shown, makeRow);
    $("shown-count").textContent = "Showing " + shown.length + " of " + rows.length +
      " matching scans (" + results.length + " in the job).";
    const more = $("show-more");
    more.hidden = rows.length <= shown.length;
    more.textContent = "Show " + Math.min(RENDER_STEP, rows.length - shown.length) + " more";
  }

  function refreshResults() {
    const done = doneCount();
    return fetchAllResults().then((rows) => {
      results = rows;
      resultsDone = done;
      resultsFetchedAt = Date.now();
      renderResults();
    });
  }

  /* Large jobs refetch their results less often while they run. */
  function resultsDue() {
    if (doneCount() === resultsDone) return false;
    const interval = Math.min(10000, 1000 + 2 * job.counts.total);
    return finished() || Date.now() - resultsFetchedAt >= interval;
  }

  function poll() {
    fetchJSON(base)
      .then((body) => {
        job = body;
        failures = 0;
        $("poll-error").hidden = true;
        showJob();
        return resultsDue() ? refreshResults() : null;
      })
      .then(() => {
        if (!finished() || resultsDone !== doneCount()) window.setTimeout(poll, POLL_MS);
      })
      .catch((error) => {
        const note = $("poll-error");
        note.hidden = false;
        if (error.status === 404) {
          note.textContent = "This job no longer exists.";
          return;
        }
        failures += 1;
        note.textContent = "Lost contact with the server (" + error.message + "); retrying…";
        window.setTimeout(poll, Math.min(30000, POLL_MS * 2 ** failures));
      });
  }

  /* Cancel: waiting scans never run; the page keeps polling until running ones end. */
  function cancelJob() {
    const button = $("cancel-job");
    button.disabled = true;
    fetch(base + "/cancel", { method: "POST", headers: unsafeHeaders() })
      .then((response) => response.ok ? response.json() : response.text().then((text) => {
        throw new Error(problemDetail(response.status, text).detail);
      }))
      .then((body) => { job = body; showJob(); })
      .catch((error) => {
        $("poll-error").hidden = false;
        $("poll-error").textContent = "Could not cancel the job: " + error.message;
      })
      .finally(() => { button.disabled = false; });
  }

  function downloadJSON() {
    fetchAllResults().then((rows) => {
      const blob = new Blob([JSON.stringify({ job: job, results: rows }, null, 2)],
                            { type: "application/json" });
      const link = element("a");
      link.href = URL.createObjectURL(blob);
      link.download = "covidscan-" + jobId + ".json";
      document.body.appendChild(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    }).catch((error) => {
      $("poll-error").hidden = false;
      $("poll-error").textContent = "Could not download the results: " + error.message;
    });
  }

  function showSkipped() {
    let skipped = [];
    try {
      skipped = JSON.parse(sessionStorage.getItem("covidscan-skipped-" + jobId) || "[]");
    } catch (ignored) {
      return;
    }
    if (!skipped.length) return;
    replaceChildren($("skipped-list"), skipped, (s) => {
      const item = element("li");
      item.appendChild(element("strong", s.filename));
      item.appendChild(document.createTextNode(": " + s.reason));
      return item;
    });
    $("skipped-panel").hidden = false;
  }

  const rerender = () => { shownLimit = RENDER_STEP; renderResults(); };
  ["filter-failed", "filter-covid", "sort"].forEach((id) => $(id).addEventListener("change", rerender));
  ["input", "change"].forEach((type) => $("filter-threshold").addEventListener(type, rerender));
  $("show-more").addEventListener("click", () => { shownLimit += RENDER_STEP; renderResults(); });
  $("download-json").addEventListener("click", downloadJSON);
  $("cancel-job").addEventListener("click", cancelJob);
  window.covidscan.heatmaps.init(renderResults);
  window.setInterval(() => { if (!finished()) showTimes(); }, 1000);
  showSkipped();
  showJob();
  poll();
})();
