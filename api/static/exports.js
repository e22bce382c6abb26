/* The job page's deliveries to PACS destinations (GET /v1/jobs/<id>/exports): one row per
   series result and destination, with its state, attempts and the destination's reason.
   Polled while the job runs or a delivery is pending, then while one waits for its Storage
   Commitment report (a while). */
"use strict";

(function () {
  const { contract, element, replaceChildren } = window.covidscan;
  const { ExportState } = contract;
  const POLL_MS = 3000, COMMITMENT_POLLS = 40;
  const root = document.getElementById("job");
  const panel = document.getElementById("exports-panel");
  if (!root || !panel) return;
  const job = JSON.parse(root.dataset.job);
  if (!job.export_to || !job.export_to.length) return;
  const url = "/v1/jobs/" + encodeURIComponent(root.dataset.jobId) + "/exports";
  let waitedForCommitment = 0;

  const when = (e) => e.committed_at || e.stored_at || e.finished_at || e.next_attempt_at || e.created_at;

  function row(e) {
    const tr = element("tr");
    tr.appendChild(element("td", e.destination));
    const uid = element("td", e.series_uid);
    uid.className = "uid";
    tr.appendChild(uid);
    const state = element("td", e.state);
    state.className = "status status-" + e.state;
    tr.appendChild(state);
    tr.appendChild(element("td", String(e.attempts)));
    const at = when(e);
    const label = e.state === ExportState.PENDING && e.next_attempt_at ? "next try " : "";
    tr.appendChild(element("td", at ? label + new Date(at).toLocaleString() : "–"));
    tr.appendChild(element("td", e.error || ""));
    return tr;
  }

  /* Whether to look again: the job may still end and make deliveries, one may be pending,
     or a stored one may still get its commitment report. */
  function show(body) {
    panel.hidden = false;
    replaceChildren(panel.querySelector("tbody"), body.exports, row);
    if (!body.exports.length || body.exports.some((e) => e.state === ExportState.PENDING)) {
      return true;
    }
    return body.exports.some((e) => e.state === ExportState.STORED) &&
      waitedForCommitment++ < COMMITMENT_POLLS;
  }

  function poll() {
    fetch(url, { cache: "no-store", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : null))
      .then((body) => { if (body && show(body)) window.setTimeout(poll, POLL_MS); })
      .catch(() => window.setTimeout(poll, POLL_MS * 3));
  }

  poll();
})();
